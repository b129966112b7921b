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
use crate::usage::{Measured, UsageChunkFilter, UsageMeter};

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
