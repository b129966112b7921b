//! A typed client for the control plane's `/v1` API, used by the gateway (stamps, blobs,
//! policy, activation) and by the operator CLIs (everything else).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AgentId;
use crate::api::*;
use crate::chain::SignedStamp;
use crate::http::{ClientOptions, HttpClient, full};
use crate::secret::{ExposeSecret, SecretString};

/// Largest response body the client reads (stamp pages and blobs included).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What can go wrong talking to the control plane.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("control plane URL {url:?} is not a valid http(s) URL")]
    InvalidUrl { url: String },
    #[error("the API key is not a valid header value")]
    InvalidKey,
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the control plane at {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{message}")]
    Api {
        status: StatusCode,
        kind: String,
        message: String,
    },
    #[error("the control plane sent an answer this client cannot read: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status the control plane answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the control plane could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// A control plane served by this very process (`quickstart`), reached without a socket.
/// It answers exactly what its HTTP API would: same routes, same checks, same errors.
pub trait InProcess: Send + Sync + 'static {
    /// Answers one request, body and all; `Err` (a reason) when it has stopped.
    fn call(&self, req: Request<Bytes>) -> InProcessFuture;
}

pub type InProcessFuture = Pin<Box<dyn Future<Output = Result<Response<Bytes>, String>> + Send>>;

// The pooled client is as large as before this enum existed; boxing it would add a
// pointer chase to every call of the common case.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Transport {
    Network(HttpClient),
    InProcess(Arc<dyn InProcess>),
}

/// A connection pool to one control plane, authenticated with one key.
#[derive(Clone)]
pub struct ControlPlane {
    transport: Transport,
    base: String,
    auth: HeaderValue,
    timeout: Duration,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// `base_url` is the server root, e.g. `http://127.0.0.1:4100`.
    pub fn new(base_url: &str, key: &SecretString) -> Result<Self, ClientError> {
        Self::with_http(base_url, key, crate::http::client(ClientOptions::default()))
    }

    /// Shares an existing connection pool.
    pub fn with_http(
        base_url: &str,
        key: &SecretString,
        http: HttpClient,
    ) -> Result<Self, ClientError> {
        Self::with_transport(base_url, key, Transport::Network(http))
    }

    /// Talks to a control plane in this process. `base_url` is where it also listens, if
    /// anywhere; it names it in errors.
    pub fn in_process(
        base_url: &str,
        key: &SecretString,
        server: Arc<dyn InProcess>,
    ) -> Result<Self, ClientError> {
        Self::with_transport(base_url, key, Transport::InProcess(server))
    }

    fn with_transport(
        base_url: &str,
        key: &SecretString,
        transport: Transport,
    ) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let valid = base.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !valid {
            return Err(ClientError::InvalidUrl { url: base });
        }
        let mut auth = HeaderValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| ClientError::InvalidKey)?;
        auth.set_sensitive(true);
        Ok(Self {
            transport,
            base,
            auth,
            timeout: Duration::from_secs(30),
        })
    }

    /// Gives up on any call after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, self.auth.clone());
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Bytes::from(body.unwrap_or_default()))
            .map_err(|_| ClientError::InvalidUrl { url: url.clone() })?;
        let call = async {
            let (status, body) = match &self.transport {
                Transport::Network(http) => {
                    let resp = http
                        .request(req.map(full))
                        .await
                        .map_err(|e| self.unreachable(crate::error_chain(&e)))?;
                    let status = resp.status();
                    let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                        .collect()
                        .await
                        .map_err(|e| self.unreachable(e.to_string()))?
                        .to_bytes();
                    (status, body)
                }
                Transport::InProcess(server) => {
                    let resp = server.call(req).await.map_err(|e| self.unreachable(e))?;
                    (resp.status(), resp.into_body())
                }
            };
            if status.is_success() {
                Ok(body)
            } else {
                Err(api_error(status, &body))
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.base.clone(),
                secs: self.timeout.as_secs(),
            })?
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    // ---- gateway key ----

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(Method::GET, "/v1/health", None::<&()>).await
    }

    /// Appends stamps in chain order; one answer per stamp.
    pub async fn append(&self, stamps: &[SignedStamp]) -> Result<AppendResponse, ClientError> {
        self.append_with_blobs(stamps, &[]).await
    }

    /// Appends stamps in chain order with blobs they commit to, stored in the same commit;
    /// one answer per stamp. `blobs_stored` is `None` when the control plane ignored the
    /// blobs (it predates them): upload those with [`Self::upload_blobs`].
    pub async fn append_with_blobs(
        &self,
        stamps: &[SignedStamp],
        blobs: &[BlobUpload],
    ) -> Result<AppendResponse, ClientError> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            stamps: &'a [SignedStamp],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            blobs: &'a [BlobUpload],
        }
        let resp: AppendResponse = self
            .json(
                Method::POST,
                "/v1/stamps",
                Some(&Borrowed { stamps, blobs }),
            )
            .await?;
        if resp.results.len() != stamps.len() {
            return Err(ClientError::Decode(format!(
                "sent {} stamps, got {} answers",
                stamps.len(),
                resp.results.len()
            )));
        }
        Ok(resp)
    }

    pub async fn upload_blobs(&self, blobs: &[BlobUpload]) -> Result<usize, ClientError> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            blobs: &'a [BlobUpload],
        }
        let resp: UploadBlobsResponse = self
            .json(Method::POST, "/v1/blobs", Some(&Borrowed { blobs }))
            .await?;
        Ok(resp.stored)
    }

    pub async fn put_keys(&self, keys: Vec<WrappedKey>) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .json(Method::POST, "/v1/keys", Some(&PutKeysRequest { keys }))
            .await?;
        Ok(())
    }

    pub async fn policy(&self, agent: &AgentId) -> Result<AgentPolicy, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/agents/{agent}/policy"),
            None::<&()>,
        )
        .await
    }

    pub async fn activate(&self, req: &ActivateRequest) -> Result<AgentPolicy, ClientError> {
        self.json(Method::POST, "/v1/agents/activate", Some(req))
            .await
    }

    // ---- admin key ----

    pub async fn provision(
        &self,
        req: &ProvisionRequest,
    ) -> Result<ProvisionResponse, ClientError> {
        self.json(Method::POST, "/v1/agents", Some(req)).await
    }

    pub async fn agents(&self) -> Result<AgentList, ClientError> {
        self.json(Method::GET, "/v1/agents", None::<&()>).await
    }

    pub async fn agent(&self, agent: &AgentId) -> Result<AgentInfo, ClientError> {
        self.json(Method::GET, &format!("/v1/agents/{agent}"), None::<&()>)
            .await
    }

    pub async fn lock(
        &self,
        agent: &AgentId,
        reason: Option<String>,
    ) -> Result<AgentInfo, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/agents/{agent}/lock"),
            Some(&LockRequest { reason }),
        )
        .await
    }

    pub async fn unlock(&self, agent: &AgentId) -> Result<AgentInfo, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/agents/{agent}/unlock"),
            Some(&serde_json::json!({})),
        )
        .await
    }

    pub async fn set_budget(
        &self,
        agent: &AgentId,
        tokens: Option<u64>,
    ) -> Result<AgentInfo, ClientError> {
        self.json(
            Method::PUT,
            &format!("/v1/agents/{agent}/budget"),
            Some(&BudgetRequest { tokens }),
        )
        .await
    }

    pub async fn set_sentinel(
        &self,
        agent: &AgentId,
        update: &SentinelUpdate,
    ) -> Result<AgentInfo, ClientError> {
        self.json(
            Method::PUT,
            &format!("/v1/agents/{agent}/sentinel"),
            Some(update),
        )
        .await
    }

    pub async fn stamps(
        &self,
        agent: &AgentId,
        after: u64,
        limit: u32,
    ) -> Result<StampPage, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/agents/{agent}/stamps?after={after}&limit={limit}"),
            None::<&()>,
        )
        .await
    }

    /// The sealed blob committed to by stamp `seq`; `None` when none was stored.
    pub async fn blob(&self, agent: &AgentId, seq: u64) -> Result<Option<Bytes>, ClientError> {
        match self
            .send(
                Method::GET,
                &format!("/v1/agents/{agent}/blobs/{seq}"),
                None,
            )
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn keys(&self, agent: &AgentId) -> Result<KeyList, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/agents/{agent}/keys"),
            None::<&()>,
        )
        .await
    }

    pub async fn account(&self) -> Result<AccountInfo, ClientError> {
        self.json(Method::GET, "/v1/account", None::<&()>).await
    }

    pub async fn set_account_key(
        &self,
        req: &AccountKeyRequest,
    ) -> Result<AccountInfo, ClientError> {
        self.json(Method::PUT, "/v1/account/key", Some(req)).await
    }

    pub async fn alerts(&self) -> Result<AlertList, ClientError> {
        self.json(Method::GET, "/v1/alerts", None::<&()>).await
    }

    pub async fn rotate_gateway_key(&self) -> Result<RotateGatewayKeyResponse, ClientError> {
        self.json(
            Method::POST,
            "/v1/keys/rotate-gateway",
            Some(&serde_json::json!({})),
        )
        .await
    }
}

/// Turns an error answer into a sentence, whatever shape the body has.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status,
            kind: e.error.kind,
            message: e.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned();
            let message = if text.is_empty() {
                format!(
                    "the control plane answered {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
            } else {
                format!("the control plane answered {}: {text}", status.as_u16())
            };
            ClientError::Api {
                status,
                kind: "http_error".into(),
                message,
            }
        }
    }
}
