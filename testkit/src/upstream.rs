//! A provider stand-in that serves recorded fixtures and records every request it gets.
//!
//! Which recording it serves: the `x-fixture: <name>` request header when present (the
//! name of a file in the fixtures directory, without extension), otherwise a default per
//! endpoint and streaming mode. Status codes of error recordings come from their names
//! (`openai-error-401-…`). Like the real providers it gzips when the client accepts gzip,
//! and it sends SSE and NDJSON one event per write so streaming is real.
//! `x-fixture-delay-ms: N` waits N ms before each streamed event (and before the headers
//! of a non-streamed answer). `x-fixture-cut-after: N` breaks a stream after N events, the
//! way a provider's connection dies mid-answer.
//!
//! `GET /__fixture/stats` answers `{"requests":N,"marked":M}`: how many requests it has
//! answered (that one excluded), and how many of them carried `x-fixture-mark`, so a benchmark
//! can check that a proxy forwarded each of its requests exactly once, not confused by
//! requests a proxy makes on its own (LiteLLM does, now and then).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct Shared {
    fixtures: HashMap<String, Bytes>,
    /// Keep every request (tests), or only count them (benchmarks, long runs).
    record: bool,
    recorded: Mutex<Vec<Recorded>>,
    served: AtomicU64,
    marked: AtomicU64,
}

/// A running stand-in; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

/// The fixtures directory of this repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Reads one fixture by name (without extension) and returns it with its extension.
pub fn fixture(name: &str) -> (Vec<u8>, &'static str) {
    for ext in ["json", "sse", "ndjson"] {
        if let Ok(b) = std::fs::read(fixtures_dir().join(format!("{name}.{ext}"))) {
            return (b, ext);
        }
    }
    panic!("no fixture named {name} in {}", fixtures_dir().display());
}

fn load_fixtures(dir: &Path) -> std::io::Result<HashMap<String, Bytes>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".request.json") || name.ends_with(".md") {
            continue;
        }
        if let Some((stem, _)) = name.rsplit_once('.') {
            out.insert(name.clone(), Bytes::from(std::fs::read(e.path())?));
            out.entry(stem.to_owned())
                .or_insert_with(|| Bytes::from(name.clone().into_bytes()));
        }
    }
    Ok(out)
}

impl Upstream {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("a socket address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, true).await
    }

    /// Starts on `addr`; with `record` false it only counts requests ([`Self::served`]), so
    /// memory stays flat however long it runs.
    pub async fn start_with(addr: SocketAddr, record: bool) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the fixture upstream");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            fixtures: load_fixtures(&fixtures_dir()).expect("read the fixtures"),
            record,
            recorded: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            marked: AtomicU64::new(0),
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let s = s.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| {
                                let s = s.clone();
                                async move { Ok::<_, Infallible>(answer(&s, req).await) }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    _ = &mut stopped => return,
                }
            }
        });
        Self {
            addr,
            shared,
            _stop: stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().expect("poisoned").clone()
    }

    pub fn clear(&self) {
        self.shared.recorded.lock().expect("poisoned").clear();
    }

    /// How many requests it has answered.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn default_fixture(path: &str, body: &serde_json::Value) -> &'static str {
    let stream = body["stream"].as_bool();
    let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let tools = body.get("tools").is_some();
    match path {
        "/v1/chat/completions" => match (stream == Some(true), usage, tools) {
            (false, _, false) => "openai-chat",
            (false, _, true) => "openai-chat-tool-calls",
            (true, true, false) => "openai-chat-stream-usage",
            (true, true, true) => "openai-chat-stream-tool-calls",
            (true, false, _) => "openai-chat-stream",
        },
        "/v1/responses" => {
            if tools {
                "openai-responses-stream-tool-call"
            } else {
                "openai-responses-stream"
            }
        }
        "/v1/messages" => match (stream == Some(true), tools) {
            (false, false) => "anthropic-messages",
            (false, true) => "anthropic-messages-tool-use",
            (true, false) => "anthropic-messages-stream",
            (true, true) => "anthropic-messages-stream-tool-use",
        },
        "/api/chat" => {
            if stream == Some(false) {
                "ollama-api-chat"
            } else {
                "ollama-api-chat-stream"
            }
        }
        _ => "openai-chat",
    }
}

fn status_of(name: &str) -> StatusCode {
    name.split('-')
        .find_map(|p| p.parse::<u16>().ok().filter(|c| (400..600).contains(c)))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK)
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/__fixture/stats" {
        let served = shared.served.load(Ordering::Relaxed);
        let marked = shared.marked.load(Ordering::Relaxed);
        return plain(
            StatusCode::OK,
            "application/json",
            Bytes::from(format!("{{\"requests\":{served},\"marked\":{marked}}}")),
        );
    }
    shared.served.fetch_add(1, Ordering::Relaxed);
    if req.headers().contains_key("x-fixture-mark") {
        shared.marked.fetch_add(1, Ordering::Relaxed);
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if shared.record {
        shared.recorded.lock().expect("poisoned").push(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }

    if parts.uri.path() == "/v1/models" {
        return plain(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(br#"{"object":"list","data":[]}"#),
        );
    }
    let name = parts
        .headers
        .get("x-fixture")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| default_fixture(parts.uri.path(), &json).to_owned());
    let Some(file) = shared.fixtures.get(&name) else {
        return plain(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from(format!("no fixture {name}")),
        );
    };
    let file = String::from_utf8_lossy(file).into_owned();
    let bytes = shared.fixtures[&file].clone();
    let delay = parts
        .headers
        .get("x-fixture-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    let gzip = parts
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("gzip")));
    let status = status_of(&name);
    let (content_type, streamed) = if file.ends_with(".sse") {
        ("text/event-stream; charset=utf-8", true)
    } else if file.ends_with(".ndjson") {
        ("application/x-ndjson", true)
    } else {
        ("application/json", false)
    };

    if !streamed {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut resp = if gzip {
            let mut r = plain(status, content_type, Bytes::from(gzip_all(&bytes)));
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().expect("header"));
            r
        } else {
            plain(status, content_type, bytes)
        };
        resp.headers_mut()
            .insert("x-request-id", "req_fixture".parse().expect("header"));
        return resp;
    }

    let events = split_events(&bytes, file.ends_with(".ndjson"));
    let cut_after = parts
        .headers
        .get("x-fixture-cut-after")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        let mut enc =
            gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (i, ev) in events.into_iter().enumerate() {
            if cut_after == Some(i) {
                let _ = tx
                    .send(Err("the fixture upstream cut the stream".into()))
                    .await;
                return;
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let chunk = match enc.as_mut() {
                Some(e) => {
                    e.write_all(&ev).expect("in-memory write");
                    e.flush().expect("in-memory flush");
                    Bytes::from(std::mem::take(e.get_mut()))
                }
                None => ev,
            };
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
        if let Some(e) = enc {
            let rest = e.finish().expect("in-memory finish");
            let _ = tx.send(Ok(Frame::data(Bytes::from(rest)))).await;
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("content-type", content_type.parse().expect("header"));
    h.insert("x-request-id", "req_fixture".parse().expect("header"));
    if gzip {
        h.insert("content-encoding", "gzip".parse().expect("header"));
    }
    resp
}

/// Splits a recording into the events a provider writes one at a time.
fn split_events(bytes: &Bytes, ndjson: bool) -> Vec<Bytes> {
    let sep: &[u8] = if ndjson { b"\n" } else { b"\n\n" };
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(pos) = bytes[start..].windows(sep.len()).position(|w| w == sep) {
        let end = start + pos + sep.len();
        out.push(bytes.slice(start..end));
        start = end;
    }
    if start < bytes.len() {
        out.push(bytes.slice(start..));
    }
    out
}

fn gzip_all(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in-memory write");
    e.finish().expect("in-memory finish")
}

fn plain(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("header"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_names() {
        assert_eq!(
            status_of("openai-error-401-invalid-api-key"),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_of("anthropic-messages"), StatusCode::OK);
    }

    /// One HTTP/1.1 request over a fresh connection; the whole answer as text.
    async fn send(addr: SocketAddr, head: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(format!("{head}Host: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn stats_count_every_request_and_the_marked_ones_apart() {
        let up = Upstream::start_with("127.0.0.1:0".parse().unwrap(), false).await;
        send(up.addr, "GET /v1/models HTTP/1.1\r\n").await;
        send(up.addr, "GET /v1/models HTTP/1.1\r\nx-fixture-mark: 1\r\n").await;
        send(up.addr, "GET /v1/models HTTP/1.1\r\n").await;
        let stats = send(up.addr, "GET /__fixture/stats HTTP/1.1\r\n").await;
        assert!(
            stats.ends_with(r#"{"requests":3,"marked":1}"#),
            "stats: {stats}"
        );
        assert_eq!(up.served(), 3);
    }

    #[test]
    fn events_split_and_rejoin_exactly() {
        let (b, _) = fixture("anthropic-messages-stream");
        let b = Bytes::from(b);
        let parts = split_events(&b, false);
        assert!(parts.len() > 5);
        assert_eq!(parts.concat(), b.to_vec());
    }
}
