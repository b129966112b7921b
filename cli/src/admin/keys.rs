//! The account key against the control plane, and an agent's data keys: which wrapping to
//! use, unwrapped once per epoch and kept for the run.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use lockstock::AgentId;
use lockstock::api::{AccountInfo, WrappedKey};
use lockstock::client::{ClientError, ControlPlane};
use lockstock::seal::{AccountKey, Dek};

/// The account key given is not the one the control plane's account is registered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing: this account key (key id {ours}) is not the account's key ({}); nothing was decrypted\n  hint: {}",
    match .registered { Some(id) => format!("the control plane expects key id {id}"), None => "the control plane has another key".to_owned() },
    "check LOCKSTOCK_ACCOUNT_KEY in Liberty (`liberty show LOCKSTOCK_ACCOUNT_KEY`); after a rotation only the new key opens the transcripts"
)]
pub struct WrongAccountKey {
    pub ours: String,
    pub registered: Option<String>,
}

/// Checks `key` against what the control plane stores: the verification hash, else the key
/// id. An account with no key registered accepts any key (there is nothing to decrypt).
pub fn check_account(info: &AccountInfo, key: &AccountKey) -> Result<(), WrongAccountKey> {
    let ours = key.public_key().key_id();
    let matches = match (&info.verification_hash, &info.key_id) {
        (Some(vh), _) => vh.eq_ignore_ascii_case(&key.verification_hash()),
        (None, Some(id)) => id == &ours,
        (None, None) => true,
    };
    if matches {
        Ok(())
    } else {
        Err(WrongAccountKey {
            ours,
            registered: info.key_id.clone(),
        })
    }
}

/// Why a blob's data key cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// No wrapping of this epoch's key is stored at all.
    Missing { epoch: u64 },
    /// Wrappings exist, but none to this account key.
    NotYours { epoch: u64, others: Vec<String> },
    /// The wrapping to this account key does not open: altered, or not base64.
    DoesNotOpen { epoch: u64 },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { epoch } => write!(
                f,
                "no data key is stored for epoch {epoch} (not uploaded yet, or lost)"
            ),
            Self::NotYours { epoch, others } => write!(
                f,
                "the data key of epoch {epoch} is wrapped only to other account keys ({}): sealed by a gateway still running with an older account key? restart it with the current ACCOUNT_PUBLIC_KEY",
                others.join(", ")
            ),
            Self::DoesNotOpen { epoch } => write!(
                f,
                "the data key of epoch {epoch} does not open with the account key: the wrapped key was altered"
            ),
        }
    }
}

/// An agent's wrapped data keys, and the ones unwrapped so far.
pub struct Keyring {
    account: Arc<AccountKey>,
    key_id: String,
    agent: AgentId,
    /// epoch → (key id, base64 wrapping)
    wrapped: HashMap<u64, Vec<(String, String)>>,
    opened: HashMap<u64, Result<Arc<Dek>, KeyProblem>>,
}

impl Keyring {
    pub fn new(account: Arc<AccountKey>, agent: AgentId) -> Self {
        let key_id = account.public_key().key_id();
        Self {
            account,
            key_id,
            agent,
            wrapped: HashMap::new(),
            opened: HashMap::new(),
        }
    }

    /// The account key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// (Re)reads the agent's wrapped keys from the control plane.
    pub async fn refresh(&mut self, cp: &ControlPlane) -> Result<(), ClientError> {
        let list = cp.keys(&self.agent).await?;
        self.load(list.keys);
        // Forget only the misses: keys that opened stay opened.
        self.opened
            .retain(|_, r| !matches!(r, Err(KeyProblem::Missing { .. })));
        Ok(())
    }

    pub fn load(&mut self, keys: Vec<WrappedKey>) {
        self.wrapped.clear();
        for k in keys.into_iter().filter(|k| k.agent_id == self.agent) {
            self.wrapped
                .entry(k.epoch)
                .or_default()
                .push((k.key_id, k.wrapped));
        }
    }

    /// Whether anything is stored for `epoch` (a refresh may help when not).
    pub fn knows(&self, epoch: u64) -> bool {
        self.wrapped.contains_key(&epoch)
    }

    /// Epochs with a wrapping to this account key.
    pub fn epochs(&self) -> Vec<u64> {
        let mut e: Vec<u64> = self
            .wrapped
            .iter()
            .filter(|(_, w)| w.iter().any(|(id, _)| id == &self.key_id))
            .map(|(e, _)| *e)
            .collect();
        e.sort_unstable();
        e
    }

    /// The data key of `epoch`, unwrapped once and kept.
    pub fn dek(&mut self, epoch: u64) -> Result<Arc<Dek>, KeyProblem> {
        if let Some(r) = self.opened.get(&epoch) {
            return r.clone();
        }
        let r = self.unwrap(epoch);
        self.opened.insert(epoch, r.clone());
        r
    }

    fn unwrap(&self, epoch: u64) -> Result<Arc<Dek>, KeyProblem> {
        let Some(all) = self.wrapped.get(&epoch) else {
            return Err(KeyProblem::Missing { epoch });
        };
        let Some((_, b64)) = all.iter().find(|(id, _)| id == &self.key_id) else {
            return Err(KeyProblem::NotYours {
                epoch,
                others: all.iter().map(|(id, _)| id.clone()).collect(),
            });
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| KeyProblem::DoesNotOpen { epoch })?;
        self.account
            .unwrap_dek(&self.agent, epoch, &bytes)
            .map(Arc::new)
            .map_err(|_| KeyProblem::DoesNotOpen { epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentId {
        "agent_01020304_keys".parse().unwrap()
    }

    fn wrapped(dek: &Dek, to: &AccountKey) -> WrappedKey {
        WrappedKey {
            agent_id: agent(),
            epoch: dek.epoch,
            key_id: to.public_key().key_id(),
            wrapped: base64::engine::general_purpose::STANDARD
                .encode(dek.wrap(&to.public_key(), &agent()).unwrap()),
        }
    }

    #[test]
    fn the_right_wrapping_opens_and_the_others_are_named() {
        let (mine, other) = (AccountKey::generate(), AccountKey::generate());
        let (d1, d2, d3) = (Dek::generate(1), Dek::generate(2), Dek::generate(3));
        let mut bad = wrapped(&d3, &mine);
        bad.wrapped = base64::engine::general_purpose::STANDARD.encode([7u8; 80]);
        let mine = Arc::new(mine);
        let mut ring = Keyring::new(mine.clone(), agent());
        ring.load(vec![
            wrapped(&d1, &other),
            wrapped(&d1, &mine),
            wrapped(&d2, &other),
            bad,
        ]);
        assert!(ring.dek(1).is_ok());
        assert!(matches!(
            ring.dek(2),
            Err(KeyProblem::NotYours { epoch: 2, .. })
        ));
        assert_eq!(
            ring.dek(3).unwrap_err(),
            KeyProblem::DoesNotOpen { epoch: 3 }
        );
        assert_eq!(ring.dek(4).unwrap_err(), KeyProblem::Missing { epoch: 4 });
        assert_eq!(ring.epochs(), vec![1, 3]);
    }

    #[test]
    fn the_account_check_uses_the_verification_hash() {
        let key = AccountKey::generate();
        let mut info = AccountInfo {
            account_id: "a".into(),
            public_key: Some(key.public_key().to_hex()),
            verification_hash: Some(key.verification_hash()),
            key_id: Some(key.public_key().key_id()),
        };
        assert!(check_account(&info, &key).is_ok());
        let err = check_account(&info, &AccountKey::generate()).unwrap_err();
        assert!(err.to_string().contains("nothing was decrypted"), "{err}");
        info.verification_hash = None;
        info.key_id = None;
        assert!(check_account(&info, &AccountKey::generate()).is_ok());
    }
}
