//! The request path: identify → stamp → verdict → clamp → forward → meter → stamp again.
//!
//! Each phase is a small function over the request; policy lives in the control plane's
//! verdicts and in [`crate::provider`], the forwarding itself stays generic.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use crate::AgentId;
use crate::api::Verdict;
use crate::body::{Ending, MeteredBody};
use crate::chain::{StampKind, flags};
use crate::client::{ControlPlane, InProcess};
use crate::config::{GatewayConfig, Limits, Upstream};
use crate::http::{BoxError, ClientOptions, HttpClient, full};
use crate::metrics::Metrics;
use crate::provider::{Endpoint, Provider, RequestBody, estimate_tokens, normalize_path};
use crate::refusal::Refusal;
use crate::sealer::Uploads;
use crate::secret::ExposeSecret;
use crate::stamper::{Chain, Draft, StampFailure, Stamper, StamperConfig};
use crate::usage::{Framing, Measured, UsageMeter};
use crate::usage_filter::UsageChunkFilter;

/// Response bodies the gateway sends.
pub type ResBody = BoxBody<Bytes, BoxError>;

/// The header that names the agent.
pub const AGENT_HEADER: &str = "x-d3cipher-agent";

/// Bytes of a JSON response kept to read its usage when no transcript is sealed.
const JSON_USAGE_CAPTURE: usize = 1024 * 1024;

/// A running gateway: configuration, connection pools, chain writers and metrics.
pub struct Gateway {
    upstream: Upstream,
    provider: Provider,
    default_agent: Option<AgentId>,
    openai_key: Option<HeaderValue>,
    anthropic_key: Option<HeaderValue>,
    sealing: bool,
    limits: Limits,
    http: HttpClient,
    cp: ControlPlane,
    stamper: Stamper,
    uploads: Option<Uploads>,
    metrics: Metrics,
}

/// Why a gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no agents are registered with this gateway")]
    NoAgents,
    #[error(transparent)]
    ControlPlane(#[from] crate::client::ClientError),
    #[error("{0} contains characters that cannot go in an HTTP header")]
    BadProviderKey(&'static str),
}

fn secret_header(value: String, name: &'static str) -> Result<HeaderValue, GatewayError> {
    let mut v = HeaderValue::try_from(value).map_err(|_| GatewayError::BadProviderKey(name))?;
    v.set_sensitive(true);
    Ok(v)
}

impl Gateway {
    /// Builds the gateway and starts its background tasks (chain writers, uploads).
    /// Must run inside a Tokio runtime.
    pub fn new(config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        Self::build(config, None)
    }

    /// Like [`Gateway::new`], with the control plane running in this process: stamps and
    /// blobs reach it without a socket. `config.control_plane_url` is where it also listens.
    pub fn embedded(
        config: GatewayConfig,
        control_plane: Arc<dyn InProcess>,
    ) -> Result<Arc<Self>, GatewayError> {
        Self::build(config, Some(control_plane))
    }

    fn build(
        config: GatewayConfig,
        embedded: Option<Arc<dyn InProcess>>,
    ) -> Result<Arc<Self>, GatewayError> {
        if config.agents.is_empty() {
            return Err(GatewayError::NoAgents);
        }
        let http = crate::http::client(ClientOptions {
            connect_timeout: config.limits.connect_timeout,
            ..ClientOptions::default()
        });
        let (url, key) = (&config.control_plane_url, &config.gateway_key);
        let cp = match embedded {
            None => ControlPlane::with_http(url, key, http.clone())?,
            Some(server) => ControlPlane::in_process(url, key, server)?,
        }
        .with_timeout(config.limits.verdict_timeout);
        let uploads = config
            .account
            .map(|_| Uploads::start(cp.clone(), config.spool_dir.clone()));
        let metrics = Metrics::new(&config.agents);
        let chains = config.agents.iter().map(|a| {
            let key = crate::agent::signing_key(&config.seed, a);
            (a.clone(), key, metrics.shared(Some(a)).clone())
        });
        let stamper = Stamper::start(
            chains,
            cp.clone(),
            uploads.clone(),
            StamperConfig {
                account: config.account,
                dek_epoch: config.limits.dek_epoch,
                verdict_timeout: config.limits.verdict_timeout,
            },
        );
        let openai_key = config
            .openai_key
            .as_ref()
            .map(|k| {
                secret_header(
                    format!("Bearer {}", k.expose_secret()),
                    crate::env::OPENAI_API_KEY,
                )
            })
            .transpose()?;
        let anthropic_key = config
            .anthropic_key
            .as_ref()
            .map(|k| secret_header(k.expose_secret().to_owned(), crate::env::ANTHROPIC_API_KEY))
            .transpose()?;
        Ok(Arc::new(Self {
            metrics,
            upstream: config.upstream,
            provider: config.provider,
            default_agent: config.default_agent,
            openai_key,
            anthropic_key,
            sealing: config.account.is_some(),
            limits: config.limits,
            http,
            cp,
            stamper,
            uploads,
        }))
    }

    pub fn stamper(&self) -> &Stamper {
        &self.stamper
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Waits, up to `grace`, until every stamp is delivered and every sealed transcript
    /// delivered or spooled to disk; says what is left when time runs out.
    pub async fn drain(&self, grace: std::time::Duration) {
        let deadline = Instant::now() + grace;
        let stamps = self.stamper.outstanding();
        if !stamps.drained(grace).await {
            tracing::warn!(
                pending = stamps.pending(),
                "stamps still undelivered at shutdown"
            );
        }
        if let Some(uploads) = &self.uploads {
            let left = deadline.saturating_duration_since(Instant::now());
            if !uploads.outstanding().drained(left).await {
                tracing::warn!(
                    pending = uploads.outstanding().pending(),
                    "sealed transcripts neither delivered nor spooled at shutdown"
                );
            }
        }
    }

    /// Checks each agent against the control plane: activated, and with the key this
    /// gateway derives. Returns one sentence per problem (empty when all is well).
    pub async fn preflight(&self) -> Result<Vec<String>, crate::client::ClientError> {
        let mut problems = Vec::new();
        for chain in self.stamper.chains() {
            let policy = match self.cp.policy(chain.agent()).await {
                Ok(p) => p,
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                    problems.push(format!("{} is unknown to the control plane", chain.agent()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ours = hex::encode(chain.verifying_key().to_bytes());
            match policy.public_key {
                None => problems.push(format!("{} is not activated yet", chain.agent())),
                Some(k) if k != ours => problems.push(format!(
                    "{} was activated with another key than this gateway's MLS_SEED gives",
                    chain.agent()
                )),
                Some(_) => {}
            }
        }
        Ok(problems)
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ResBody> {
        let started = Instant::now();
        if req.method() == Method::GET {
            match req.uri().path() {
                "/healthz" => return self.healthz().await,
                "/metrics" => return self.metrics_response(),
                _ => {}
            }
        }
        let anthropic =
            Endpoint::of(req.method(), &normalize_path(req.uri().path())).anthropic_errors();
        match self.clone().proxy(req, started).await {
            Ok(resp) => resp,
            Err((agent, refusal)) => {
                let m = self.metrics.agent(agent.as_ref());
                m.rejected(refusal.metric());
                m.request(refusal.status().as_u16(), started.elapsed());
                if refusal.status().is_server_error() {
                    tracing::warn!(agent = ?agent.as_ref().map(AgentId::as_str), status = refusal.status().as_u16(), "{}", refusal.message());
                }
                refusal.into_response(anthropic)
            }
        }
    }

    async fn healthz(&self) -> Response<ResBody> {
        let probe = tokio::time::timeout(std::time::Duration::from_secs(2), self.cp.health()).await;
        let (status, body) = match probe {
            Ok(Ok(_)) => (
                StatusCode::OK,
                serde_json::json!({"status": "ok", "version": crate::VERSION}),
            ),
            Ok(Err(e)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "unavailable", "version": crate::VERSION, "reason": e.to_string()}),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "unavailable", "version": crate::VERSION, "reason": "the control plane did not answer within 2 s"}),
            ),
        };
        json_response(status, body.to_string().into_bytes(), "application/json")
    }

    fn metrics_response(&self) -> Response<ResBody> {
        let up = !self.stamper.chains().any(|c| c.is_down());
        let text = self.metrics.render(
            up,
            self.stamper.outstanding().pending(),
            self.uploads.as_ref().map_or(0, Uploads::queued_bytes),
        );
        json_response(
            StatusCode::OK,
            text.into_bytes(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    }

    fn identify(&self, headers: &HeaderMap) -> Result<AgentId, Refusal> {
        match headers.get(AGENT_HEADER) {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(Refusal::MalformedAgent),
            None => self.default_agent.clone().ok_or(Refusal::MissingAgent),
        }
    }

    async fn proxy(
        self: Arc<Self>,
        req: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<ResBody>, (Option<AgentId>, Refusal)> {
        let (parts, body) = req.into_parts();
        let agent = self.identify(&parts.headers).map_err(|r| (None, r))?;
        let Some(chain) = self.stamper.chain(&agent).cloned() else {
            return Err((None, Refusal::UnknownAgent(agent)));
        };
        let refuse = |r: Refusal| (Some(agent.clone()), r);

        let path = normalize_path(parts.uri.path()).into_owned();
        let endpoint = Endpoint::of(&parts.method, &path);
        let body = read_body(body, self.limits.max_request_bytes)
            .await
            .map_err(refuse)?;
        let parsed = RequestBody::parse(endpoint, &body);
        let ask = parsed.as_ref().map(|p| p.ask.clone()).unwrap_or_default();
        let estimate = estimate_tokens(&body);

        // 1. The request stamp, before the provider sees anything.
        let ack = chain
            .submit(Draft {
                kind: StampKind::Request,
                model: ask.model.clone(),
                tokens_in: estimate,
                tokens_out: ask.cap.unwrap_or(0),
                ref_seq: 0,
                flags: if ask.cap.is_none() {
                    flags::UNCAPPED
                } else {
                    0
                },
                status: 0,
                transcript: self.sealing.then(|| body.clone()),
            })
            .await
            .map_err(|e| {
                refuse(match e {
                    StampFailure::Unavailable | StampFailure::ShuttingDown => {
                        Refusal::ControlPlaneDown
                    }
                })
            })?;
        let m = self.metrics.agent(Some(&agent));
        let grant = match ack.verdict {
            Verdict::Ok { grant, remaining } => {
                m.budget(remaining);
                grant
            }
            Verdict::Locked { reason } => {
                return Err(refuse(Refusal::Locked {
                    agent: agent.clone(),
                    reason,
                }));
            }
            Verdict::Budget => {
                m.budget(Some(0));
                return Err(refuse(Refusal::Budget));
            }
            Verdict::Breaker { reason } => {
                tracing::warn!(agent = %agent, %reason, "breaker open");
                return Err(refuse(Refusal::Breaker));
            }
            Verdict::Fork => return Err(refuse(Refusal::Fork)),
            Verdict::Invalid { message } => {
                tracing::error!(agent = %agent, %message, "the control plane refused the stamp");
                return Err(refuse(Refusal::StampRejected));
            }
        };

        // 2. Clamp the output cap to the grant; ask for usage when the client did not.
        let inject_usage = parsed
            .as_ref()
            .is_some_and(RequestBody::needs_usage_injection);
        let forward_body = parsed
            .as_ref()
            .and_then(|p| p.rewrite(grant, self.provider, inject_usage))
            .map(Bytes::from)
            .unwrap_or_else(|| body.clone());
        drop(parsed);

        // 3. Forward.
        let settle = ResponseStamp {
            chain: chain.clone(),
            gateway: self.clone(),
            agent: agent.clone(),
            request_seq: ack.seq,
            model: ask.model,
            estimate,
        };
        let upstream_req =
            self.upstream_request(&parts, &path, endpoint, forward_body, inject_usage);
        let sent = tokio::time::timeout(
            self.limits.response_timeout,
            self.http.request(upstream_req),
        )
        .await;
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let why = crate::error_chain(&e);
                settle.failed(flags::UPSTREAM_FAILED | flags::NOT_FORWARDED);
                return Err(refuse(Refusal::UpstreamUnreachable(why)));
            }
            Err(_) => {
                settle.failed(flags::UPSTREAM_FAILED);
                return Err(refuse(Refusal::UpstreamTimeout));
            }
        };

        // 4. Stream the answer back, metered; the response stamp follows when it ends.
        let (mut rparts, rbody) = resp.into_parts();
        let framing = Framing::from_content_type(
            rparts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let gzip = rparts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let capture = if self.sealing {
            self.limits.max_transcript_bytes
        } else if framing == Framing::Json {
            JSON_USAGE_CAPTURE
        } else {
            0
        };
        let filter = (inject_usage && framing == Framing::Sse).then(UsageChunkFilter::default);
        strip_hop_by_hop(&mut rparts.headers);
        if filter.is_some() {
            rparts.headers.remove(header::CONTENT_LENGTH);
        }
        let status = rparts.status;
        let body = MeteredBody::new(
            rbody,
            UsageMeter::new(framing, gzip, capture),
            filter,
            self.limits.idle_timeout,
            move |measured, ending| settle.done(status, measured, ending),
        );
        m.request(status.as_u16(), started.elapsed());
        Ok(Response::from_parts(rparts, body.boxed()))
    }

    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        path: &str,
        endpoint: Endpoint,
        body: Bytes,
        inject_usage: bool,
    ) -> Request<crate::http::OutBody> {
        let uri = self.upstream.target(path, parts.uri.query());
        let mut req = Request::new(full(body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri
            .parse()
            .expect("built from a parsed base and a request path");
        let headers = req.headers_mut();
        for (name, value) in &parts.headers {
            if forwardable(name, &parts.headers) {
                headers.append(name.clone(), value.clone());
            }
        }
        // Count what is decoded: only encodings the meter can read, and none at all when the
        // stream must be edited.
        let gzip_ok = !inject_usage
            && parts
                .headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|s| s.to_ascii_lowercase().contains("gzip"))
                });
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(if gzip_ok { "gzip" } else { "identity" }),
        );
        self.add_provider_key(headers, endpoint);
        req
    }

    /// Adds the provider key when the agent brought none (or a placeholder starting with
    /// `lockstock`), so agents need not hold the real key.
    fn add_provider_key(&self, headers: &mut HeaderMap, endpoint: Endpoint) {
        let placeholder = |v: &HeaderValue| {
            let s = v.to_str().unwrap_or("").trim();
            let s = s
                .strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
                .unwrap_or(s)
                .trim();
            s.is_empty() || s.starts_with("lockstock")
        };
        for name in [header::AUTHORIZATION, HeaderName::from_static("x-api-key")] {
            if headers.get(&name).is_some_and(placeholder) {
                headers.remove(&name);
            }
        }
        let has_credential =
            headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key");
        if has_credential {
            return;
        }
        let anthropic = endpoint == Endpoint::Messages || self.provider == Provider::Anthropic;
        match (anthropic, &self.anthropic_key, &self.openai_key) {
            (true, Some(key), _) => {
                headers.insert(HeaderName::from_static("x-api-key"), key.clone());
            }
            (false, _, Some(key)) => {
                headers.insert(header::AUTHORIZATION, key.clone());
            }
            _ => {}
        }
    }
}

/// Everything needed to make the response stamp once the response has ended.
struct ResponseStamp {
    chain: Arc<Chain>,
    gateway: Arc<Gateway>,
    agent: AgentId,
    request_seq: u64,
    model: String,
    estimate: u64,
}

impl ResponseStamp {
    /// The provider gave no response: release the reservation.
    fn failed(self, flag: u8) {
        self.chain.submit_detached(Draft {
            kind: StampKind::Response,
            model: self.model,
            tokens_in: 0,
            tokens_out: 0,
            ref_seq: self.request_seq,
            flags: flag,
            status: 0,
            transcript: None,
        });
    }

    fn done(self, status: StatusCode, measured: Measured, ending: Ending) {
        let ok = status.is_success();
        // Providers do not bill refused requests; a success without usage is estimated.
        let input = measured.input.unwrap_or(if ok { self.estimate } else { 0 });
        let output = measured
            .output
            .unwrap_or(if ok { measured.output_estimate } else { 0 });
        let mut f = 0;
        if ok && (measured.input.is_none() || measured.output.is_none()) {
            f |= flags::ESTIMATED;
        }
        f |= match ending {
            Ending::Complete => 0,
            Ending::UpstreamFailed => flags::UPSTREAM_FAILED,
            Ending::ClientGone => flags::CLIENT_GONE,
        };
        if measured.truncated {
            f |= flags::TRUNCATED;
        }
        self.gateway
            .metrics
            .agent(Some(&self.agent))
            .tokens(input, output);
        let transcript = self
            .gateway
            .sealing
            .then(|| Bytes::from(measured.transcript));
        self.chain.submit_detached(Draft {
            kind: StampKind::Response,
            model: self.model,
            tokens_in: input,
            tokens_out: output,
            ref_seq: self.request_seq,
            flags: f,
            status: status.as_u16(),
            transcript,
        });
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::BodyTooLarge { limit })
        }
        Err(e) => Err(Refusal::BadBody(e.to_string())),
    }
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn listed_in_connection(name: &HeaderName, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
}

fn forwardable(name: &HeaderName, headers: &HeaderMap) -> bool {
    let n = name.as_str();
    !(HOP_BY_HOP.contains(&n)
        || n == "host"
        || n == AGENT_HEADER
        || n == "content-length"
        || n == "accept-encoding"
        || n == "expect"
        || listed_in_connection(name, headers))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().copied() {
        headers.remove(name);
    }
    for name in listed {
        headers.remove(name);
    }
}

fn json_response(
    status: StatusCode,
    body: Vec<u8>,
    content_type: &'static str,
) -> Response<ResBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_private_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(AGENT_HEADER, HeaderValue::from_static("agent_00000000_a"));
        h.insert("host", HeaderValue::from_static("gateway"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        let kept: Vec<&str> = h
            .keys()
            .filter(|n| forwardable(n, &h))
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(kept, vec!["anthropic-version"]);
    }
}
