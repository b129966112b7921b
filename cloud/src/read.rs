//! Reads that need no in-memory state: stamp pages, blobs, wrapped keys, the account, alerts.
//! They run on read-only connections (WAL readers never block the writer) in blocking tasks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use lockstock::AgentId;
use lockstock::api::{
    AccountInfo, Alert, AlertList, KeyList, StampPage, StampRecord, Verdict, WrappedKey,
};
use lockstock::chain::{Hash32, STAMP_VERSION, Sig, SignedStamp, Stamp, StampKind};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db;
use crate::error::ApiError;

/// Most stamps in one page.
pub const MAX_PAGE: u32 = 1000;
/// Most alerts listed (the newest).
pub const MAX_ALERTS: u32 = 1000;
const MAX_IDLE: usize = 8;

/// A few read-only connections, opened on demand and kept for reuse.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            path,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on a read-only connection in a blocking task.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().expect("pool lock").pop() {
                Some(c) => c,
                None => db::open_ro(&pool.path)?,
            };
            let out = f(&conn);
            let mut idle = pool.idle.lock().expect("pool lock");
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
    }
}

fn agent_row(conn: &Connection, id: &AgentId) -> Result<i64, ApiError> {
    conn.prepare_cached("SELECT id FROM agents WHERE agent_id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?
        .ok_or_else(|| ApiError::not_found(format!("no agent {id} exists on this control plane")))
}

fn corrupt(what: String) -> ApiError {
    ApiError::internal(&format!("unreadable stored record: {what}"))
}

pub(crate) fn stamp_page(
    conn: &Connection,
    id: &AgentId,
    after: u64,
    limit: u32,
) -> Result<StampPage, ApiError> {
    let row = agent_row(conn, id)?;
    let limit = limit.clamp(1, MAX_PAGE);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, time_ms, model, tokens_in, tokens_out, ref_seq, flags, status, \
         blob_hash, prev_hash, hash, signature, verdict, recorded_ms, \
         EXISTS (SELECT 1 FROM blobs AS b WHERE b.agent = s.agent AND b.seq = s.seq) \
         FROM stamps AS s WHERE agent = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![
        row,
        after.min(i64::MAX as u64) as i64,
        i64::from(limit) + 1
    ])?;
    let mut stamps = Vec::with_capacity(limit as usize);
    let mut more = false;
    while let Some(r) = rows.next()? {
        if stamps.len() == limit as usize {
            more = true;
            break;
        }
        let seq = r.get::<_, i64>(0)? as u64;
        let kind = match r.get::<_, i64>(1)? {
            1 => StampKind::Request,
            2 => StampKind::Response,
            k => return Err(corrupt(format!("stamp kind {k} of {id} seq {seq}"))),
        };
        let verdict: String = r.get(13)?;
        let verdict: Verdict = serde_json::from_str(&verdict)
            .map_err(|e| corrupt(format!("verdict of {id} seq {seq}: {e}")))?;
        let signed = SignedStamp {
            stamp: Stamp {
                version: STAMP_VERSION,
                agent_id: id.clone(),
                seq,
                prev_hash: Hash32(r.get(10)?),
                kind,
                time_ms: r.get::<_, i64>(2)? as u64,
                model: r.get(3)?,
                tokens_in: r.get::<_, i64>(4)? as u64,
                tokens_out: r.get::<_, i64>(5)? as u64,
                ref_seq: r.get::<_, i64>(6)? as u64,
                flags: r.get(7)?,
                status: r.get(8)?,
                blob_hash: r.get::<_, Option<[u8; 32]>>(9)?.map(Hash32),
            },
            signature: match r.get::<_, Vec<u8>>(12)? {
                // Covered by the signature of a later stamp of its batch.
                empty if empty.is_empty() => None,
                sig => Some(Sig(sig.try_into().map_err(|_| {
                    corrupt(format!("signature of {id} seq {seq} is not 64 bytes"))
                })?)),
            },
        };
        stamps.push(StampRecord {
            signed,
            hash: Hash32(r.get(11)?),
            verdict,
            recorded_ms: r.get::<_, i64>(14)? as u64,
            has_blob: r.get(15)?,
        });
    }
    let next_after = more
        .then(|| stamps.last().map(|s| s.signed.stamp.seq))
        .flatten();
    Ok(StampPage { stamps, next_after })
}

pub(crate) fn blob(conn: &Connection, id: &AgentId, seq: u64) -> Result<Vec<u8>, ApiError> {
    let row = agent_row(conn, id)?;
    conn.prepare_cached("SELECT data FROM blobs WHERE agent = ?1 AND seq = ?2")?
        .query_row(params![row, seq.min(i64::MAX as u64) as i64], |r| r.get(0))
        .optional()?
        .ok_or_else(|| {
            ApiError::not_found(format!("no blob is stored for seq {seq} of agent {id}"))
        })
}

pub(crate) fn keys(conn: &Connection, id: &AgentId) -> Result<KeyList, ApiError> {
    let row = agent_row(conn, id)?;
    let mut stmt = conn.prepare_cached(
        "SELECT epoch, key_id, wrapped FROM wrapped_keys WHERE agent = ?1 ORDER BY epoch, key_id",
    )?;
    let keys = stmt
        .query_map([row], |r| {
            Ok(WrappedKey {
                agent_id: id.clone(),
                epoch: r.get::<_, i64>(0)? as u64,
                key_id: r.get(1)?,
                wrapped: base64::engine::general_purpose::STANDARD.encode(r.get::<_, Vec<u8>>(2)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(KeyList { keys })
}

pub(crate) fn account(conn: &Connection) -> Result<AccountInfo, ApiError> {
    Ok(conn.query_row(
        "SELECT account_id, public_key, verification_hash, key_id FROM account WHERE id = 1",
        [],
        |r| {
            Ok(AccountInfo {
                account_id: r.get(0)?,
                public_key: r.get(1)?,
                verification_hash: r.get(2)?,
                key_id: r.get(3)?,
            })
        },
    )?)
}

pub(crate) fn alerts(conn: &Connection) -> Result<AlertList, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id, g.agent_id, a.time_ms, a.reason FROM alerts AS a \
         JOIN agents AS g ON g.id = a.agent ORDER BY a.id DESC LIMIT ?1",
    )?;
    let mut alerts = stmt
        .query_map([MAX_ALERTS], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .map(|row| {
            let (id, agent, time_ms, reason) = row?;
            let agent_id = agent
                .parse()
                .map_err(|e| corrupt(format!("alert {id}: {e}")))?;
            Ok(Alert {
                id: id as u64,
                agent_id,
                time_ms: time_ms as u64,
                reason,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    alerts.reverse();
    Ok(AlertList { alerts })
}
