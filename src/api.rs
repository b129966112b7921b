//! The control plane's HTTP API (`/v1`), as types both sides compile against.
//!
//! Every body is JSON. Errors use the providers' shape, `{"error":{"message":…,"type":…}}`,
//! so one parser serves every client. Binary values travel as base64, hashes as hex.

use serde::{Deserialize, Serialize};

use crate::AgentId;
use crate::chain::{Hash32, Head, SignedStamp, StampKind};

/// Prefix of admin keys: everything.
pub const ADMIN_KEY_PREFIX: &str = "lsk_admin_";
/// Prefix of gateway keys: stamp, upload, activate, read policy; nothing else.
pub const GATEWAY_KEY_PREFIX: &str = "lsk_gateway_";
/// How long a genesis token stays valid.
pub const GENESIS_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Most stamps in one append call.
pub const MAX_STAMPS_PER_APPEND: usize = 1024;
/// Most blobs, or wrapped keys, in one upload call.
pub const MAX_ITEMS_PER_UPLOAD: usize = 1024;
/// Largest sealed blob the control plane keeps.
pub const MAX_BLOB_BYTES: usize = 16 * 1024 * 1024;

/// `{"error":{"message":…,"type":…}}`, as OpenAI and Anthropic SDKs expect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                code: None,
            },
        }
    }
}

/// `GET /v1/health` and the gateway's `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `POST /v1/agents` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionResponse {
    pub agent_id: AgentId,
    /// Single use; expires at `expires_ms`.
    pub genesis_token: String,
    pub expires_ms: u64,
}

/// `POST /v1/agents/activate` (gateway): binds the agent's Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateRequest {
    pub agent_id: AgentId,
    pub genesis_token: String,
    /// 32 bytes, hex.
    pub public_key: String,
}

/// What a gateway needs to govern an agent: `GET /v1/agents/{id}/policy` (gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPolicy {
    pub agent_id: AgentId,
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_reason: Option<String>,
    /// Tokens the agent may still spend; `None` is unlimited.
    pub remaining: Option<u64>,
    /// Where the agent's next stamp must attach.
    pub head: Head,
    /// The key stamps must verify against (hex); `None` before activation.
    pub public_key: Option<String>,
}

/// Anomaly breaker settings, per agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentinelConfig {
    pub enabled: bool,
    /// Hard cap on request stamps in any 60-second window.
    #[serde(default)]
    pub max_per_minute: Option<u64>,
    /// How many standard deviations above the learned rate trip the breaker.
    pub sensitivity: f64,
    /// Requests per second that never trip the statistical test (tool loops burst).
    pub min_burst: u64,
    /// Seconds after an agent's first request during which only the hard cap applies.
    pub warmup_secs: u64,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_per_minute: None,
            sensitivity: 6.0,
            min_burst: 60,
            warmup_secs: 300,
        }
    }
}

/// `PUT /v1/agents/{id}/sentinel` (admin): only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SentinelUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `Some(None)` clears the cap.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub max_per_minute: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_secs: Option<u64>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<u64>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().unwrap_or(&None).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
}

/// One agent as the admin sees it: `GET /v1/agents`, `GET /v1/agents/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_id: AgentId,
    pub name: String,
    #[serde(default)]
    pub provider: Option<String>,
    pub created_ms: u64,
    pub activated: bool,
    pub locked: bool,
    #[serde(default)]
    pub lock_reason: Option<String>,
    /// Spending limit in tokens since the budget was last set; `None` is unlimited.
    pub budget: Option<u64>,
    /// Tokens settled by response stamps.
    pub used: u64,
    /// Tokens held by requests still in flight.
    pub reserved: u64,
    pub remaining: Option<u64>,
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    pub seq: u64,
    pub chain_head: Hash32,
    #[serde(default)]
    pub public_key: Option<String>,
    pub sentinel: SentinelConfig,
    /// Why Sentinel's breaker is open (request stamps get the breaker verdict until an admin
    /// unlocks the agent); `None` when closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// `POST /v1/agents/{id}/lock` (admin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `PUT /v1/agents/{id}/budget` (admin): `tokens` is what the agent may still spend from now;
/// `null` removes the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRequest {
    pub tokens: Option<u64>,
}

/// `POST /v1/stamps` (gateway): stamps in chain order; one fsync covers them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    pub stamps: Vec<SignedStamp>,
    /// Sealed blobs of stamps in this call, stored in the same commit as the stamps (a blob
    /// whose stamp is refused is dropped). Saves a second call and a second commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<BlobUpload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// One per stamp, in the same order.
    pub results: Vec<StampResult>,
    /// How many of the call's blobs were stored. Absent from a control plane that does not
    /// take blobs with stamps: the gateway then uploads them on their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_stored: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampResult {
    pub seq: u64,
    pub verdict: Verdict,
    /// The stamp was already in the ledger; `verdict` is the one recorded then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The agent's head after this stamp (or unchanged, when it was not appended).
    pub head: Head,
}

/// The ledger's answer to a stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Appended. For a request, `grant` is the output cap the gateway must clamp to
    /// (`None`: no clamp needed) and `remaining` the budget left after the reservation.
    Ok {
        #[serde(default)]
        grant: Option<u64>,
        #[serde(default)]
        remaining: Option<u64>,
    },
    /// Appended as an attempt; the request must not be forwarded.
    Locked {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Appended as an attempt; nothing is left to spend.
    Budget,
    /// Appended as an attempt; Sentinel's breaker is open.
    Breaker { reason: String },
    /// Not appended: `prev_hash` or `seq` does not follow the stored head. The agent is frozen.
    Fork,
    /// Not appended: bad signature, unknown or inactive agent, malformed stamp.
    Invalid { message: String },
}

impl Verdict {
    /// Whether the stamp is now part of the chain.
    pub fn appended(&self) -> bool {
        !matches!(self, Self::Fork | Self::Invalid { .. })
    }
}

/// A stamp as the ledger keeps it: `GET /v1/agents/{id}/stamps` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampRecord {
    #[serde(flatten)]
    pub signed: SignedStamp,
    pub hash: Hash32,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub recorded_ms: u64,
    pub has_blob: bool,
}

/// `GET /v1/agents/{id}/stamps?after=SEQ&limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampPage {
    pub stamps: Vec<StampRecord>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next_after: Option<u64>,
}

/// A sealed transcript blob: `POST /v1/blobs` (gateway), many per call, or with its stamp in
/// `POST /v1/stamps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobUpload {
    pub agent_id: AgentId,
    /// The stamp whose `blob_hash` commits to it.
    pub seq: u64,
    pub kind: StampKind,
    /// base64 of the sealed bytes.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadBlobsRequest {
    pub blobs: Vec<BlobUpload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadBlobsResponse {
    pub stored: usize,
}

/// A data key wrapped (HPKE) to one account public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub agent_id: AgentId,
    pub epoch: u64,
    /// Which account public key it is wrapped to: see [`crate::seal::AccountPublicKey::key_id`].
    pub key_id: String,
    /// base64.
    pub wrapped: String,
}

/// `POST /v1/keys` (gateway: new epochs; admin: extra wrappings during rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutKeysRequest {
    pub keys: Vec<WrappedKey>,
}

/// `GET /v1/agents/{id}/keys` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<WrappedKey>,
}

/// `PUT /v1/account/key` (admin): switch the account's public key.
///
/// With `retire_key_id`, wrappings to that older key are deleted in the same transaction,
/// which is the last step of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountKeyRequest {
    /// X25519 public key, hex.
    pub public_key: String,
    /// See [`crate::seal::AccountKey::verification_hash`], hex.
    pub verification_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_key_id: Option<String>,
}

/// `GET /v1/account` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub account_id: String,
    pub public_key: Option<String>,
    pub verification_hash: Option<String>,
    pub key_id: Option<String>,
}

/// A Sentinel alert: `GET /v1/alerts` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub agent_id: AgentId,
    pub time_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// `POST /v1/keys/rotate-gateway` (admin): the old gateway key stops working at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateGatewayKeyResponse {
    pub gateway_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_tagged() {
        let v = Verdict::Ok {
            grant: Some(5),
            remaining: None,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"verdict":"ok","grant":5,"remaining":null}"#
        );
        let back: Verdict = serde_json::from_str(r#"{"verdict":"budget"}"#).unwrap();
        assert_eq!(back, Verdict::Budget);
        assert!(!Verdict::Fork.appended());
    }

    #[test]
    fn sentinel_update_distinguishes_clear_from_absent() {
        let clear: SentinelUpdate = serde_json::from_str(r#"{"max_per_minute":null}"#).unwrap();
        assert_eq!(clear.max_per_minute, Some(None));
        let absent: SentinelUpdate = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.max_per_minute, None);
    }
}
