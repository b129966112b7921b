//! The one outbound HTTP stack: hyper over TCP, with rustls (ring) and the bundled Mozilla
//! roots for `https` URLs, so it works the same on a host and in an empty container root.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Request bodies the outbound client sends: anything that yields bytes.
pub type OutBody = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type HttpClient = Client<HttpsConnector<HttpConnector>, OutBody>;

/// Connection settings for an outbound client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle: Duration::from_secs(60),
            pool_max_idle_per_host: 256,
        }
    }
}

/// Builds a pooled HTTP/1.1 client for `http` and `https` URLs.
pub fn client(options: ClientOptions) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(options.connect_timeout));
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("the ring provider supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(options.pool_idle)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .build(https)
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> OutBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
