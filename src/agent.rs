//! Agent identity: `agent_<8 hex>_<name>`, and the signing key each agent stamps with.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::{ExposeSecret, SecretKey32};

/// Longest agent name accepted, so ids stay readable in tables and headers.
pub const MAX_NAME_LEN: usize = 48;

/// An agent id: `agent_` + 8 lowercase hex + `_` + a name of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

/// Why a string is not an agent id or an agent name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    #[error("agent ids look like agent_1a2b3c4d_name; got {0:?}")]
    Malformed(String),
    #[error("agent names are 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'; got {0:?}")]
    BadName(String),
}

impl AgentId {
    /// A new id for `name` with a random 8-hex prefix.
    pub fn generate(name: &str) -> Result<Self, AgentIdError> {
        validate_name(name)?;
        let tag: [u8; 4] = crate::secret::random_array();
        Ok(Self(format!("agent_{}_{}", hex::encode(tag), name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The human part after the hex tag.
    pub fn name(&self) -> &str {
        &self.0[15..]
    }

    /// The vault name that holds this agent's id: `LOCKSTOCK_AGENT_<NAME>`.
    pub fn vault_name(&self) -> String {
        vault_name_for(self.name())
    }
}

/// `LOCKSTOCK_AGENT_<NAME>`: upper-cased, with `-` turned into `_` so it is a valid variable name.
pub fn vault_name_for(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    format!("{}{upper}", crate::env::LOCKSTOCK_AGENT_PREFIX)
}

/// Checks an agent name: 1–48 of `[A-Za-z0-9_-]`.
pub fn validate_name(name: &str) -> Result<(), AgentIdError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AgentIdError::BadName(truncate_for_error(name)))
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(80).collect()
}

impl FromStr for AgentId {
    type Err = AgentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || AgentIdError::Malformed(truncate_for_error(s));
        let rest = s.strip_prefix("agent_").ok_or_else(malformed)?;
        let (tag, name) = rest.split_at_checked(8).ok_or_else(malformed)?;
        let name = name.strip_prefix('_').ok_or_else(malformed)?;
        if !tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(malformed());
        }
        validate_name(name).map_err(|_| malformed())?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for AgentId {
    type Error = AgentIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> Self {
        id.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({})", self.0)
    }
}

/// The agent's Ed25519 signing key, derived from the gateway's `MLS_SEED`.
///
/// Deriving rather than storing one key per agent means the container needs one secret (the
/// seed) however many agents it serves, and the vault can re-create any agent's key.
pub fn signing_key(seed: &SecretKey32, agent: &AgentId) -> SigningKey {
    let hk = Hkdf::<Sha256>::new(
        Some(b"lockstock/agent-signing-key/v1"),
        seed.expose_secret(),
    );
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(agent.as_str().as_bytes(), okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    SigningKey::from_bytes(&okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = AgentId::generate("support-bot").unwrap();
        assert_eq!(id.name(), "support-bot");
        assert_eq!(id.as_str().parse::<AgentId>().unwrap(), id);
        assert_eq!(id.vault_name(), "LOCKSTOCK_AGENT_SUPPORT_BOT");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "agent_",
            "agent_1234567_x",
            "agent_1234567g_x",
            "agent_12345678x",
            "agent_12345678_",
            "agent_12345678_a b",
            "agent_12345678_\u{0}",
            "agent_ABCDEF12_x",
            "bot_12345678_x",
        ] {
            assert!(bad.parse::<AgentId>().is_err(), "{bad:?} was accepted");
        }
        let long = format!("agent_12345678_{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(long.parse::<AgentId>().is_err());
    }

    #[test]
    fn signing_keys_differ_per_agent_and_are_stable() {
        let seed = crate::secret::key_from_hex(&"11".repeat(32)).unwrap();
        let a: AgentId = "agent_00000001_a".parse().unwrap();
        let b: AgentId = "agent_00000002_b".parse().unwrap();
        assert_eq!(
            signing_key(&seed, &a).to_bytes(),
            signing_key(&seed, &a).to_bytes()
        );
        assert_ne!(
            signing_key(&seed, &a).to_bytes(),
            signing_key(&seed, &b).to_bytes()
        );
    }
}
