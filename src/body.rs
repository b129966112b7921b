//! The response body the agent receives: the provider's bytes, chunk by chunk, with a meter
//! watching them go by.
//!
//! When the body ends (complete, broken, or dropped because the client left) the meter's
//! findings go to a completion callback exactly once; that is where the response stamp is made.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::http::BoxError;
use crate::usage::{Measured, UsageMeter};
use crate::usage_filter::UsageChunkFilter;

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The provider's stream broke or went idle too long.
    UpstreamFailed,
    /// The client went away before the end.
    ClientGone,
}

type OnEnd = Box<dyn FnOnce(Measured, Ending) + Send + Sync>;

/// A metered pass-through of the provider's response body.
pub struct MeteredBody {
    inner: Incoming,
    meter: Option<UsageMeter>,
    filter: Option<UsageChunkFilter>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    on_end: Option<OnEnd>,
    flushed: bool,
}

impl MeteredBody {
    /// `filter`: drop the usage-only chunk the gateway asked for on the client's behalf.
    pub fn new(
        inner: Incoming,
        meter: UsageMeter,
        filter: Option<UsageChunkFilter>,
        idle_timeout: Duration,
        on_end: impl FnOnce(Measured, Ending) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            meter: Some(meter),
            filter,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            on_end: Some(Box::new(on_end)),
            flushed: false,
        }
    }

    fn end(&mut self, how: Ending) {
        if let (Some(meter), Some(on_end)) = (self.meter.take(), self.on_end.take()) {
            on_end(meter.finish(), how);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let Ok(data) = frame.into_data() else {
                        // Trailers: nothing to meter, nothing the client needs from us.
                        continue;
                    };
                    if let Some(m) = this.meter.as_mut() {
                        m.feed(&data);
                    }
                    let out = match this.filter.as_mut() {
                        Some(f) => Bytes::from(f.push(&data)),
                        None => data,
                    };
                    if this.inner.is_end_stream() && this.filter.is_none() {
                        this.end(Ending::Complete);
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.end(Ending::UpstreamFailed);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(None) => {
                    if !this.flushed {
                        this.flushed = true;
                        if let Some(rest) = this.filter.as_mut().map(UsageChunkFilter::finish)
                            && !rest.is_empty()
                        {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                        }
                    }
                    this.end(Ending::Complete);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.end(Ending::UpstreamFailed);
                        return Poll::Ready(Some(Err(
                            "the provider's stream went idle too long".into()
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.filter.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.filter.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        let how = if self.inner.is_end_stream() && self.filter.is_none() {
            Ending::Complete
        } else {
            Ending::ClientGone
        };
        self.end(how);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::usage::Framing;

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

    fn chunk(data: &str) -> Vec<u8> {
        format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
    }

    /// A chunked SSE response's head and these events, without the end of the body.
    fn head_and(events: &[&str]) -> Vec<u8> {
        let mut wire = HEAD.to_vec();
        for e in events {
            wire.extend(chunk(e));
        }
        wire
    }

    /// A provider stand-in that writes exactly what the test tells it to, when it is told.
    async fn upstream<F, Fut>(script: F) -> String
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            script(socket).await;
        });
        url
    }

    async fn metered(
        url: &str,
        idle_timeout: Duration,
    ) -> (MeteredBody, mpsc::Receiver<(Measured, Ending)>) {
        let client = crate::http::client(crate::http::ClientOptions::default());
        let req = http::Request::get(url)
            .body(crate::http::full(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let (tx, rx) = mpsc::channel();
        let body = MeteredBody::new(
            resp.into_body(),
            UsageMeter::new(Framing::Sse, false, 1 << 20),
            None,
            idle_timeout,
            move |measured, ending| tx.send((measured, ending)).unwrap(),
        );
        (body, rx)
    }

    #[tokio::test]
    async fn an_event_is_passed_on_without_waiting_for_the_next() {
        let (go_on, told) = tokio::sync::oneshot::channel::<()>();
        let url = upstream(move |mut s: TcpStream| async move {
            s.write_all(&head_and(&["data: 1\n\n"])).await.unwrap();
            told.await.unwrap();
            let mut rest = chunk("data: 2\n\n");
            rest.extend_from_slice(b"0\r\n\r\n");
            s.write_all(&rest).await.unwrap();
        })
        .await;

        let (mut body, ended) = metered(&url, Duration::from_secs(5)).await;
        let wait = Duration::from_secs(5);
        let first = tokio::time::timeout(wait, body.frame())
            .await
            .expect("the first event was held back");
        assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "data: 1\n\n");
        go_on.send(()).unwrap();
        let second = tokio::time::timeout(wait, body.frame()).await.unwrap();
        assert_eq!(second.unwrap().unwrap().into_data().unwrap(), "data: 2\n\n");
        assert!(body.frame().await.is_none());
        assert_eq!(ended.try_recv().unwrap().1, Ending::Complete);
    }

    #[tokio::test]
    async fn a_broken_stream_ends_in_an_error_after_the_bytes_before_the_break() {
        let url = upstream(move |mut s: TcpStream| async move {
            let wire = head_and(&["data: 1\n\n", "data: 2\n\n"]);
            s.write_all(&wire).await.unwrap();
            // Closed without the last chunk: the provider's stream broke.
        })
        .await;

        let (mut body, ended) = metered(&url, Duration::from_secs(5)).await;
        let mut data = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("a broken stream ended cleanly"),
            }
        };
        assert_eq!(data, b"data: 1\n\ndata: 2\n\n");
        assert!(!error.to_string().is_empty());
        let (measured, ending) = ended.try_recv().unwrap();
        assert_eq!(ending, Ending::UpstreamFailed);
        assert_eq!(
            measured.transcript, data,
            "the meter saw what the client got"
        );
    }

    #[tokio::test]
    async fn a_stream_that_goes_quiet_ends_in_an_error_after_the_idle_timeout() {
        let url = upstream(move |mut s: TcpStream| async move {
            s.write_all(&head_and(&["data: 1\n\n"])).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;

        let (mut body, ended) = metered(&url, Duration::from_millis(200)).await;
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 1\n\n");
        let error = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the idle timeout did not fire")
            .unwrap()
            .unwrap_err();
        assert!(error.to_string().contains("idle"), "{error}");
        assert_eq!(ended.try_recv().unwrap().1, Ending::UpstreamFailed);
    }
}
