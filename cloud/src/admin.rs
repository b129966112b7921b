//! Jobs that change or read agents and the account, run on the ledger writer.

use base64::Engine;
use ed25519_dalek::VerifyingKey;
use lockstock::AgentId;
use lockstock::api::{
    AccountInfo, AccountKeyRequest, ActivateRequest, AgentInfo, AgentList, AgentPolicy,
    GENESIS_TTL_MS, ProvisionRequest, ProvisionResponse, SentinelUpdate, WrappedKey,
};
use lockstock::seal::AccountPublicKey;
use rusqlite::{OptionalExtension, params};
use secrecy::{ExposeSecret, SecretString};

use crate::error::ApiError;
use crate::keys::{self, hash_secret, same_hash};
use crate::ledger::{Ctx, JobError};
use crate::sentinel::Sentinel;
use crate::state::{Agent, State};

/// Longest provider label and lock reason kept.
const MAX_LABEL: usize = 64;
const MAX_REASON: usize = 500;
/// Largest wrapped data key accepted (an HPKE wrapping of 32 bytes is 80).
pub(crate) const MAX_WRAPPED_BYTES: usize = 1024;

fn unknown(id: &AgentId) -> JobError {
    ApiError::not_found(format!("no agent {id} exists on this control plane")).into()
}

fn agent_mut<'c>(ctx: &'c mut Ctx<'_>, id: &AgentId) -> Result<&'c mut Agent, JobError> {
    ctx.state.agents.get_mut(id).ok_or_else(|| unknown(id))
}

/// Applies `f` to an agent, marks it changed and returns its info.
fn update(
    ctx: &mut Ctx<'_>,
    id: &AgentId,
    f: impl FnOnce(&mut Agent),
) -> Result<AgentInfo, JobError> {
    let now = ctx.now_ms;
    let agent = ctx.state.agents.get_mut(id).ok_or_else(|| unknown(id))?;
    f(agent);
    State::touch(&mut ctx.state.dirty, agent);
    Ok(agent.info(now))
}

pub(crate) fn provision(
    ctx: &mut Ctx<'_>,
    req: ProvisionRequest,
) -> Result<ProvisionResponse, JobError> {
    let provider = match req.provider {
        Some(p) if p.len() > MAX_LABEL || p.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(format!(
                "provider must be at most {MAX_LABEL} printable characters"
            ))
            .into());
        }
        p => p,
    };
    let id = loop {
        let id = AgentId::generate(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if !ctx.state.agents.contains_key(&id) {
            break id;
        }
    };
    let token = keys::new_genesis_token();
    let token_hash = hash_secret(token.expose_secret());
    let expires_ms = ctx.now_ms.saturating_add(GENESIS_TTL_MS);
    let agent_tmp = Agent::new(
        0,
        id.clone(),
        provider,
        ctx.now_ms,
        (token_hash, expires_ms),
    );
    ctx.conn
        .prepare_cached(
            "INSERT INTO agents (agent_id, name, provider, created_ms, genesis_hash, \
             genesis_expires_ms, head_hash, sentinel_config) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            id.as_str(),
            agent_tmp.name,
            agent_tmp.provider,
            ctx.now_ms as i64,
            token_hash,
            expires_ms as i64,
            agent_tmp.head.hash.0,
            serde_json::to_string(&agent_tmp.sentinel_cfg).expect("plain struct"),
        ])?;
    let row = ctx.conn.last_insert_rowid();
    ctx.state
        .agents
        .insert(id.clone(), Agent { row, ..agent_tmp });
    tracing::info!(agent = %id, "agent provisioned");
    Ok(ProvisionResponse {
        agent_id: id,
        genesis_token: token.expose_secret().to_owned(),
        expires_ms,
    })
}

/// Parses an Ed25519 public key given as 64 hex characters.
pub(crate) fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, ApiError> {
    let bad = || {
        ApiError::bad_request("public_key must be 64 hex characters encoding an Ed25519 public key")
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| bad())?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
    if key.is_weak() {
        return Err(ApiError::bad_request(
            "public_key is a weak (small-order) Ed25519 key; generate a proper key pair",
        ));
    }
    Ok(key)
}

pub(crate) fn activate(
    ctx: &mut Ctx<'_>,
    req: ActivateRequest,
    key: VerifyingKey,
) -> Result<AgentPolicy, JobError> {
    let now = ctx.now_ms;
    let state = &mut *ctx.state;
    let agent = state
        .agents
        .get_mut(&req.agent_id)
        .ok_or_else(|| unknown(&req.agent_id))?;
    let Some((token_hash, expires_ms)) = agent.genesis.filter(|_| agent.key.is_none()) else {
        return Err(ApiError::conflict(format!(
            "agent {} is already activated; a genesis token works only once",
            agent.id
        ))
        .into());
    };
    if !same_hash(&hash_secret(&req.genesis_token), &token_hash) {
        return Err(ApiError::forbidden(format!(
            "the genesis token does not match agent {}",
            agent.id
        ))
        .into());
    }
    if now >= expires_ms {
        return Err(ApiError::new(
            http::StatusCode::GONE,
            "genesis_token_expired",
            format!(
                "the genesis token of agent {} expired (tokens last 24 hours); provision a new agent",
                agent.id
            ),
        )
        .into());
    }
    agent.genesis = None;
    agent.key = Some(key);
    State::touch(&mut state.dirty, agent);
    tracing::info!(agent = %agent.id, "agent activated");
    Ok(agent.policy(now))
}

pub(crate) fn list(ctx: &mut Ctx<'_>) -> AgentList {
    let now = ctx.now_ms;
    let mut agents: Vec<AgentInfo> = ctx.state.agents.values_mut().map(|a| a.info(now)).collect();
    agents.sort_by(|a, b| {
        (a.created_ms, a.agent_id.as_str()).cmp(&(b.created_ms, b.agent_id.as_str()))
    });
    AgentList { agents }
}

pub(crate) fn show(ctx: &mut Ctx<'_>, id: &AgentId) -> Result<AgentInfo, JobError> {
    let now = ctx.now_ms;
    Ok(agent_mut(ctx, id)?.info(now))
}

pub(crate) fn policy(ctx: &mut Ctx<'_>, id: &AgentId) -> Result<AgentPolicy, JobError> {
    let now = ctx.now_ms;
    Ok(agent_mut(ctx, id)?.policy(now))
}

pub(crate) fn lock(
    ctx: &mut Ctx<'_>,
    id: &AgentId,
    reason: Option<String>,
) -> Result<AgentInfo, JobError> {
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "locked by an admin".to_owned());
    if reason.len() > MAX_REASON {
        return Err(
            ApiError::bad_request(format!("reason must be at most {MAX_REASON} bytes")).into(),
        );
    }
    tracing::info!(agent = %id, "agent locked");
    update(ctx, id, |a| a.lock_reason = Some(reason))
}

pub(crate) fn unlock(ctx: &mut Ctx<'_>, id: &AgentId) -> Result<AgentInfo, JobError> {
    tracing::info!(agent = %id, "agent unlocked");
    update(ctx, id, |a| {
        a.lock_reason = None;
        a.frozen = None;
        a.breaker = None;
        a.sentinel = Sentinel::default();
    })
}

pub(crate) fn set_budget(
    ctx: &mut Ctx<'_>,
    id: &AgentId,
    tokens: Option<u64>,
) -> Result<AgentInfo, JobError> {
    if tokens.is_some_and(|t| t > i64::MAX as u64) {
        return Err(ApiError::bad_request("tokens must be at most 2^63 - 1").into());
    }
    update(ctx, id, |a| {
        a.budget = tokens;
        a.used = 0;
    })
}

pub(crate) fn set_sentinel(
    ctx: &mut Ctx<'_>,
    id: &AgentId,
    up: SentinelUpdate,
) -> Result<AgentInfo, JobError> {
    if let Some(k) = up.sensitivity
        && !(k.is_finite() && k > 0.0 && k <= 1000.0)
    {
        return Err(
            ApiError::bad_request("sensitivity must be a number above 0 and at most 1000").into(),
        );
    }
    if up.max_per_minute == Some(Some(0)) {
        return Err(ApiError::bad_request(
            "max_per_minute must be at least 1 (null removes the cap)",
        )
        .into());
    }
    if up.warmup_secs.is_some_and(|w| w > 30 * 24 * 3600) {
        return Err(ApiError::bad_request("warmup_secs must be at most 30 days").into());
    }
    update(ctx, id, |a| {
        let c = &mut a.sentinel_cfg;
        if let Some(v) = up.enabled {
            c.enabled = v;
        }
        if let Some(v) = up.max_per_minute {
            c.max_per_minute = v;
        }
        if let Some(v) = up.sensitivity {
            c.sensitivity = v;
        }
        if let Some(v) = up.min_burst {
            c.min_burst = v;
        }
        if let Some(v) = up.warmup_secs {
            c.warmup_secs = v;
        }
    })
}

/// Checks a wrapping's fields; returns the decoded bytes.
pub(crate) fn check_wrapped(k: &WrappedKey) -> Result<Vec<u8>, ApiError> {
    if k.key_id.len() != 16
        || !k
            .key_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ApiError::bad_request(format!(
            "key_id of agent {} epoch {} must be 16 lowercase hex characters",
            k.agent_id, k.epoch
        )));
    }
    if k.epoch > i64::MAX as u64 {
        return Err(ApiError::bad_request("epoch must be at most 2^63 - 1"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(k.wrapped.as_bytes())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "wrapped key of agent {} epoch {} is not valid base64",
                k.agent_id, k.epoch
            ))
        })?;
    if bytes.is_empty() || bytes.len() > MAX_WRAPPED_BYTES {
        return Err(ApiError::bad_request(format!(
            "wrapped key of agent {} epoch {} must be 1 to {MAX_WRAPPED_BYTES} bytes",
            k.agent_id, k.epoch
        )));
    }
    Ok(bytes)
}

/// Adds wrappings; an existing (agent, epoch, key id) is never overwritten (the same bytes
/// again are accepted, so retries are safe). All or nothing.
pub(crate) fn put_keys(
    ctx: &mut Ctx<'_>,
    keys: Vec<(WrappedKey, Vec<u8>)>,
) -> Result<usize, JobError> {
    let mut rows = Vec::with_capacity(keys.len());
    for (k, bytes) in &keys {
        let row = ctx
            .state
            .agents
            .get(&k.agent_id)
            .ok_or_else(|| unknown(&k.agent_id))?
            .row;
        let existing: Option<Vec<u8>> = ctx
            .conn
            .prepare_cached(
                "SELECT wrapped FROM wrapped_keys WHERE agent = ?1 AND epoch = ?2 AND key_id = ?3",
            )?
            .query_row(params![row, k.epoch as i64, k.key_id], |r| r.get(0))
            .optional()?;
        if existing.is_some_and(|e| &e != bytes) {
            return Err(ApiError::conflict(format!(
                "agent {} already has a data key for epoch {} wrapped to key {}; wrappings are never overwritten",
                k.agent_id, k.epoch, k.key_id
            ))
            .into());
        }
        rows.push(row);
    }
    let mut stmt = ctx.conn.prepare_cached(
        "INSERT OR IGNORE INTO wrapped_keys (agent, epoch, key_id, wrapped, created_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for ((k, bytes), row) in keys.iter().zip(rows) {
        stmt.execute(params![
            row,
            k.epoch as i64,
            k.key_id,
            bytes,
            ctx.now_ms as i64
        ])?;
    }
    Ok(keys.len())
}

pub(crate) fn set_account_key(
    ctx: &mut Ctx<'_>,
    req: AccountKeyRequest,
) -> Result<AccountInfo, JobError> {
    let public = AccountPublicKey::from_hex(&req.public_key).map_err(|_| {
        ApiError::bad_request("public_key must be 64 hex characters (an X25519 public key)")
    })?;
    let verification = req.verification_hash.trim().to_ascii_lowercase();
    if verification.len() != 64 || hex::decode(&verification).is_err() {
        return Err(ApiError::bad_request("verification_hash must be 64 hex characters").into());
    }
    let key_id = public.key_id();
    if let Some(retire) = &req.retire_key_id {
        if retire == &key_id {
            return Err(ApiError::bad_request(
                "retire_key_id names the new key itself; retire the previous key instead",
            )
            .into());
        }
        let missing: i64 = ctx.conn.query_row(
            "SELECT COUNT(*) FROM (SELECT DISTINCT agent, epoch FROM wrapped_keys WHERE key_id = ?1) AS old \
             WHERE NOT EXISTS (SELECT 1 FROM wrapped_keys AS w \
                               WHERE w.agent = old.agent AND w.epoch = old.epoch AND w.key_id = ?2)",
            params![retire, key_id],
            |r| r.get(0),
        )?;
        if missing > 0 {
            return Err(ApiError::conflict(format!(
                "{missing} data key(s) are wrapped to key {retire} but not yet to the new key {key_id}; \
                 upload their new wrappings (POST /v1/keys) before retiring the old key"
            ))
            .into());
        }
        let deleted = ctx.conn.execute(
            "DELETE FROM wrapped_keys WHERE key_id = ?1",
            params![retire],
        )?;
        tracing::info!(retired = %retire, deleted, "old account key retired");
    }
    ctx.conn.execute(
        "UPDATE account SET public_key = ?1, verification_hash = ?2, key_id = ?3 WHERE id = 1",
        params![public.to_hex(), verification, key_id],
    )?;
    let account_id: String =
        ctx.conn
            .query_row("SELECT account_id FROM account WHERE id = 1", [], |r| {
                r.get(0)
            })?;
    tracing::info!(key_id = %key_id, "account key set");
    Ok(AccountInfo {
        account_id,
        public_key: Some(public.to_hex()),
        verification_hash: Some(verification),
        key_id: Some(key_id),
    })
}

/// Replaces the gateway key; returns the new key and its hash.
pub(crate) fn rotate_gateway(ctx: &mut Ctx<'_>) -> Result<(SecretString, [u8; 32]), JobError> {
    let key = keys::new_gateway_key();
    let hash = hash_secret(key.expose_secret());
    crate::db::set_gateway_hash(ctx.conn, &hash)?;
    tracing::info!("gateway key rotated");
    Ok((key, hash))
}
