//! The `/v1` HTTP API: authentication, body limits, handlers.
//!
//! Handlers log ids (agents, seqs), never bodies, tokens or keys. Every refusal is
//! `{"error":{"message":…,"type":…}}` with a sentence a person can act on.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use lockstock::AgentId;
use lockstock::api::{
    AccountKeyRequest, ActivateRequest, AppendRequest, BlobUpload, BudgetRequest, Health,
    LockRequest, MAX_BLOB_BYTES, MAX_ITEMS_PER_UPLOAD, MAX_STAMPS_PER_APPEND, ProvisionRequest,
    PutKeysRequest, RotateGatewayKeyResponse, SentinelUpdate, UploadBlobsRequest,
    UploadBlobsResponse,
};
use lockstock::chain::{Hash32, SignedStamp};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::admin;
use crate::error::ApiError;
use crate::keys::{KeyHashes, Role};
use crate::ledger::{self, CheckedBlob, InlineBlob, Ledger};
use crate::read::{self, ReadPool};
use crate::verify::Verifier;

/// Body limit of JSON routes.
pub const JSON_LIMIT: usize = 4 * 1024 * 1024;
/// Body limit of `POST /v1/blobs`: one largest blob in base64, with room to spare.
pub const BLOBS_LIMIT: usize = MAX_BLOB_BYTES / 3 * 4 + 8 * 1024 * 1024;

pub(crate) struct Inner {
    pub ledger: Ledger,
    pub verifier: Verifier,
    pub reads: Arc<ReadPool>,
    /// Bound agent keys, for signature checks before the writer sees a stamp.
    pub keys: RwLock<HashMap<AgentId, VerifyingKey>>,
    pub auth: RwLock<KeyHashes>,
}

#[derive(Clone)]
pub(crate) struct App(pub Arc<Inner>);

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub(crate) fn router(app: App) -> Router {
    let admin = Router::new()
        .route("/v1/agents", post(provision).get(list_agents))
        .route("/v1/agents/{id}", get(show_agent))
        .route("/v1/agents/{id}/lock", post(lock))
        .route("/v1/agents/{id}/unlock", post(unlock))
        .route("/v1/agents/{id}/budget", put(set_budget))
        .route("/v1/agents/{id}/sentinel", put(set_sentinel))
        .route("/v1/agents/{id}/stamps", get(stamps))
        .route("/v1/agents/{id}/blobs/{seq}", get(blob))
        .route("/v1/agents/{id}/keys", get(list_keys))
        .route("/v1/account", get(account))
        .route("/v1/account/key", put(set_account_key))
        .route("/v1/alerts", get(alerts))
        .route("/v1/keys/rotate-gateway", post(rotate_gateway))
        .route_layer(from_fn_with_state(app.clone(), admin_only));
    let gateway = Router::new()
        .route("/v1/agents/activate", post(activate))
        .route("/v1/stamps", post(append))
        .route("/v1/blobs", post(upload_blobs))
        .route("/v1/keys", post(put_keys))
        .route("/v1/agents/{id}/policy", get(policy))
        .route_layer(from_fn_with_state(app.clone(), gateway_or_admin));
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard.js", get(dashboard_js))
        .route("/v1/health", get(health))
        .merge(admin)
        .merge(gateway)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(log_request))
        .with_state(app)
}

// ---- plumbing ----

async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let micros = start.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(%method, %path, status, micros, "request failed");
    } else {
        tracing::debug!(%method, %path, status, micros, "request");
    }
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "there is no {} {} in this API; see docs/api.md",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn role(app: &App, headers: &HeaderMap) -> Result<Role, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "no API key: send `Authorization: Bearer <key>` with the admin or gateway key",
        ));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    app.auth
        .read()
        .expect("auth lock")
        .role(key)
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid for this control plane"))
}

async fn admin_only(State(app): State<App>, req: Request, next: Next) -> Response {
    match role(&app, req.headers()) {
        Ok(Role::Admin) => next.run(req).await,
        Ok(Role::Gateway) => ApiError::forbidden(
            "the gateway key may only append stamps, upload blobs, add key wrappings, activate \
             agents and read policy; this needs the admin key",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn gateway_or_admin(State(app): State<App>, req: Request, next: Next) -> Response {
    match role(&app, req.headers()) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A JSON body of at most `LIMIT` bytes, with refusals as sentences.
pub(crate) struct JsonBody<T, const LIMIT: usize>(pub T);

impl<T, S, const LIMIT: usize> FromRequest<S> for JsonBody<T, LIMIT>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::too_large(format!(
                "the request body is larger than this route's limit of {} MiB",
                LIMIT / (1024 * 1024)
            ))
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            return Err(too_large());
        }
        let body = Limited::new(req.into_body(), LIMIT)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    too_large()
                } else {
                    ApiError::bad_request("the request body could not be read")
                }
            })?
            .to_bytes();
        parse_json(&body).map(Self)
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; this route expects a JSON object",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    serde_json::from_str(text).map_err(|e| {
        let detail = redact_long_strings(&e.to_string());
        match e.classify() {
            serde_json::error::Category::Data => ApiError::bad_request(format!(
                "the request body does not have the expected fields and types: {detail}"
            )),
            _ => ApiError::bad_request(format!("the request body is not valid JSON: {detail}")),
        }
    })
}

/// Parser messages quote offending values; long ones could be secrets pasted in the wrong
/// field, so they are elided.
fn redact_long_strings(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        match rest.find('"') {
            Some(end) => {
                let inner = &rest[..end];
                if inner.chars().count() > 40 {
                    out.push('…');
                } else {
                    out.push_str(inner);
                }
                out.push('"');
                rest = &rest[end + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A path parameter, refused with a sentence when it does not parse.
pub(crate) struct P<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Self(t))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

fn agent_id(s: &str) -> Result<AgentId, ApiError> {
    s.parse()
        .map_err(|e: lockstock::agent::AgentIdError| ApiError::bad_request(e.to_string()))
}

type Json<T> = axum::Json<T>;
type ApiResult<T> = Result<Json<T>, ApiError>;

// ---- public ----

async fn health() -> Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Headers for the dashboard's static files: no framing, no inline script, API calls to self.
fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-store"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (http::header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard() -> Response {
    static_file("text/html; charset=utf-8", include_str!("dashboard.html"))
}

async fn dashboard_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("dashboard.js"),
    )
}

// ---- gateway (and admin) ----

#[tracing::instrument(level = "debug", skip_all, fields(agent = %req.agent_id))]
async fn activate(
    State(app): State<App>,
    JsonBody(req): JsonBody<ActivateRequest, JSON_LIMIT>,
) -> ApiResult<lockstock::api::AgentPolicy> {
    let key = admin::parse_public_key(&req.public_key)?;
    let id = req.agent_id.clone();
    let policy = app
        .ledger
        .run(move |ctx| admin::activate(ctx, req, key))
        .await?;
    app.keys.write().expect("key cache lock").insert(id, key);
    Ok(axum::Json(policy))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn append(
    State(app): State<App>,
    JsonBody(req): JsonBody<AppendRequest, JSON_LIMIT>,
) -> ApiResult<lockstock::api::AppendResponse> {
    let AppendRequest { stamps, blobs } = req;
    let n = stamps.len();
    if n == 0 {
        return Err(ApiError::bad_request(
            "stamps is empty; send at least one stamp",
        ));
    }
    if n > MAX_STAMPS_PER_APPEND {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_STAMPS_PER_APPEND} stamps per call; got {n}"
        )));
    }
    if blobs.len() > n {
        return Err(ApiError::bad_request(format!(
            "{} blobs for {n} stamps; send at most one blob per stamp",
            blobs.len()
        )));
    }
    let blobs = pair_with_stamps(&stamps, decode_blobs(blobs).await?)?;
    let keys: Vec<Option<VerifyingKey>> = {
        let cache = app.keys.read().expect("key cache lock");
        stamps
            .iter()
            .map(|s| cache.get(&s.stamp.agent_id).copied())
            .collect()
    };
    let appended = app.verifier.append(stamps, keys, blobs).await?;
    Ok(axum::Json(lockstock::api::AppendResponse {
        results: appended.results,
        blobs_stored: Some(appended.blobs_stored),
    }))
}

/// Matches each blob sent with stamps to the stamp in the call that commits to it.
fn pair_with_stamps(
    stamps: &[SignedStamp],
    blobs: Vec<CheckedBlob>,
) -> Result<Vec<InlineBlob>, ApiError> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let index: HashMap<(&AgentId, u64), usize> = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| ((&s.stamp.agent_id, s.stamp.seq), i))
        .collect();
    let mut paired = Vec::with_capacity(blobs.len());
    let mut has_blob = vec![false; stamps.len()];
    for b in blobs {
        let Some(&i) = index.get(&(&b.agent, b.seq)) else {
            return Err(ApiError::bad_request(format!(
                "the blob for seq {} of agent {} has no stamp in this call; send it with its \
                 stamp, or to POST /v1/blobs once the stamp is appended",
                b.seq, b.agent
            )));
        };
        let stamp = &stamps[i].stamp;
        ledger::check_commitment(&b, stamp.kind == b.kind, stamp.blob_hash.map(|h| h.0))?;
        if std::mem::replace(&mut has_blob[i], true) {
            return Err(ApiError::bad_request(format!(
                "two blobs for seq {} of agent {}; a stamp commits to one",
                b.seq, b.agent
            )));
        }
        paired.push(InlineBlob {
            stamp: i,
            data: b.data,
        });
    }
    Ok(paired)
}

/// Decodes and hashes blobs; many bytes are decoded off the async workers.
async fn decode_blobs(blobs: Vec<BlobUpload>) -> Result<Vec<CheckedBlob>, ApiError> {
    let total: usize = blobs.iter().map(|b| b.data.len()).sum();
    if total <= 64 * 1024 {
        decode_each(blobs)
    } else {
        tokio::task::spawn_blocking(move || decode_each(blobs))
            .await
            .map_err(|e| ApiError::internal(&e))?
    }
}

fn decode_each(blobs: Vec<BlobUpload>) -> Result<Vec<CheckedBlob>, ApiError> {
    blobs
        .into_iter()
        .map(|b| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(b.data.as_bytes())
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "the blob for seq {} of agent {} is not valid base64",
                        b.seq, b.agent_id
                    ))
                })?;
            if data.len() > MAX_BLOB_BYTES {
                return Err(ApiError::too_large(format!(
                    "the blob for seq {} of agent {} is larger than the {} MiB limit",
                    b.seq,
                    b.agent_id,
                    MAX_BLOB_BYTES / (1024 * 1024)
                )));
            }
            let hash = Hash32::of(&data);
            Ok(CheckedBlob {
                agent: b.agent_id,
                seq: b.seq,
                kind: b.kind,
                data,
                hash,
            })
        })
        .collect()
}

#[tracing::instrument(level = "debug", skip_all)]
async fn upload_blobs(
    State(app): State<App>,
    JsonBody(req): JsonBody<UploadBlobsRequest, BLOBS_LIMIT>,
) -> ApiResult<UploadBlobsResponse> {
    if req.blobs.is_empty() {
        return Err(ApiError::bad_request(
            "blobs is empty; send at least one blob",
        ));
    }
    if req.blobs.len() > MAX_ITEMS_PER_UPLOAD {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ITEMS_PER_UPLOAD} blobs per call"
        )));
    }
    let blobs = decode_blobs(req.blobs).await?;
    let stored = app
        .ledger
        .run(move |ctx| ledger::store_blobs(ctx, blobs))
        .await?;
    Ok(axum::Json(UploadBlobsResponse { stored }))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn put_keys(
    State(app): State<App>,
    JsonBody(req): JsonBody<PutKeysRequest, JSON_LIMIT>,
) -> ApiResult<serde_json::Value> {
    if req.keys.is_empty() {
        return Err(ApiError::bad_request(
            "keys is empty; send at least one wrapped key",
        ));
    }
    if req.keys.len() > MAX_ITEMS_PER_UPLOAD {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ITEMS_PER_UPLOAD} wrapped keys per call"
        )));
    }
    let keys = req
        .keys
        .into_iter()
        .map(|k| admin::check_wrapped(&k).map(|bytes| (k, bytes)))
        .collect::<Result<Vec<_>, _>>()?;
    let stored = app
        .ledger
        .run(move |ctx| admin::put_keys(ctx, keys))
        .await?;
    Ok(axum::Json(serde_json::json!({ "stored": stored })))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn policy(
    State(app): State<App>,
    P(id): P<String>,
) -> ApiResult<lockstock::api::AgentPolicy> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.ledger.run(move |ctx| admin::policy(ctx, &id)).await?,
    ))
}

// ---- admin ----

#[tracing::instrument(level = "debug", skip_all)]
async fn provision(
    State(app): State<App>,
    JsonBody(req): JsonBody<ProvisionRequest, JSON_LIMIT>,
) -> Result<(StatusCode, Json<lockstock::api::ProvisionResponse>), ApiError> {
    let resp = app
        .ledger
        .run(move |ctx| admin::provision(ctx, req))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(resp)))
}

async fn list_agents(State(app): State<App>) -> ApiResult<lockstock::api::AgentList> {
    Ok(axum::Json(
        app.ledger.run(|ctx| Ok(admin::list(ctx))).await?,
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn show_agent(
    State(app): State<App>,
    P(id): P<String>,
) -> ApiResult<lockstock::api::AgentInfo> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.ledger.run(move |ctx| admin::show(ctx, &id)).await?,
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn lock(
    State(app): State<App>,
    P(id): P<String>,
    JsonBody(req): JsonBody<LockRequest, JSON_LIMIT>,
) -> ApiResult<lockstock::api::AgentInfo> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.ledger
            .run(move |ctx| admin::lock(ctx, &id, req.reason))
            .await?,
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn unlock(State(app): State<App>, P(id): P<String>) -> ApiResult<lockstock::api::AgentInfo> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.ledger.run(move |ctx| admin::unlock(ctx, &id)).await?,
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn set_budget(
    State(app): State<App>,
    P(id): P<String>,
    JsonBody(req): JsonBody<BudgetRequest, JSON_LIMIT>,
) -> ApiResult<lockstock::api::AgentInfo> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.ledger
            .run(move |ctx| admin::set_budget(ctx, &id, req.tokens))
            .await?,
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn set_sentinel(
    State(app): State<App>,
    P(id): P<String>,
    JsonBody(req): JsonBody<SentinelUpdate, JSON_LIMIT>,
) -> ApiResult<lockstock::api::AgentInfo> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.ledger
            .run(move |ctx| admin::set_sentinel(ctx, &id, req))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn stamps(
    State(app): State<App>,
    P(id): P<String>,
    uri: http::Uri,
) -> ApiResult<lockstock::api::StampPage> {
    let id = agent_id(&id)?;
    let Query(q) = Query::<PageQuery>::try_from_uri(&uri).map_err(|e| {
        ApiError::bad_request(format!(
            "after and limit must be non-negative integers: {}",
            e.body_text()
        ))
    })?;
    let page = app
        .reads
        .run(move |conn| read::stamp_page(conn, &id, q.after.unwrap_or(0), q.limit.unwrap_or(100)))
        .await?;
    Ok(axum::Json(page))
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id, seq = %seq))]
async fn blob(
    State(app): State<App>,
    P((id, seq)): P<(String, String)>,
) -> Result<Response, ApiError> {
    let id = agent_id(&id)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{seq:?} is not a sequence number")))?;
    let data = app
        .reads
        .run(move |conn| read::blob(conn, &id, seq))
        .await?;
    Ok(([(CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[tracing::instrument(level = "debug", skip_all, fields(agent = %id))]
async fn list_keys(State(app): State<App>, P(id): P<String>) -> ApiResult<lockstock::api::KeyList> {
    let id = agent_id(&id)?;
    Ok(axum::Json(
        app.reads.run(move |conn| read::keys(conn, &id)).await?,
    ))
}

async fn account(State(app): State<App>) -> ApiResult<lockstock::api::AccountInfo> {
    Ok(axum::Json(app.reads.run(read::account).await?))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn set_account_key(
    State(app): State<App>,
    JsonBody(req): JsonBody<AccountKeyRequest, JSON_LIMIT>,
) -> ApiResult<lockstock::api::AccountInfo> {
    Ok(axum::Json(
        app.ledger
            .run(move |ctx| admin::set_account_key(ctx, req))
            .await?,
    ))
}

async fn alerts(State(app): State<App>) -> ApiResult<lockstock::api::AlertList> {
    Ok(axum::Json(app.reads.run(read::alerts).await?))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn rotate_gateway(State(app): State<App>) -> ApiResult<RotateGatewayKeyResponse> {
    let (key, hash) = app.ledger.run(admin::rotate_gateway).await?;
    app.auth.write().expect("auth lock").gateway = hash;
    Ok(axum::Json(RotateGatewayKeyResponse {
        gateway_key: key.expose_secret().to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_values_are_elided() {
        let secret = "lsk_admin_".to_owned() + &"ab".repeat(32);
        let msg = format!("invalid type: string \"{secret}\", expected u64 at line 1 column 90");
        let out = redact_long_strings(&msg);
        assert!(!out.contains("abab"), "{out}");
        assert!(out.contains("expected u64"), "{out}");
        assert_eq!(
            redact_long_strings("unknown variant \"x\", expected `a`"),
            "unknown variant \"x\", expected `a`"
        );
        assert_eq!(redact_long_strings("open \"quote"), "open \"…");
    }

    #[test]
    fn parse_json_names_the_problem() {
        let e = parse_json::<BudgetRequest>(b"").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = parse_json::<BudgetRequest>(b"{\"tokens\":").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_json::<BudgetRequest>(b"{\"tokens\":\"many\"}").unwrap_err();
        assert!(
            e.message.contains("expected fields and types"),
            "{}",
            e.message
        );
        let e = parse_json::<BudgetRequest>(b"{\"tokens\":\xff}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        assert_eq!(
            parse_json::<BudgetRequest>(b"{\"tokens\":5}")
                .unwrap()
                .tokens,
            Some(5)
        );
    }
}
