//! Rotating the account key. Blobs stay as they are; only data keys are re-wrapped.
//!
//! Order, and why a crash at any instant loses nothing:
//!
//! 1. The new key is written to Liberty as `LOCKSTOCK_ACCOUNT_KEY_NEXT` before anything else,
//!    so every wrapping ever made to it has its secret on disk. A re-run finds it and resumes
//!    with it (a different `--new-key` is refused while one is pending).
//! 2. For every agent and epoch wrapped to the old key: unwrap with the old key, wrap to the
//!    new public key, check that the new wrapping opens with the new key to the same data
//!    key, upload it (`POST /v1/keys`). Both wrappings now coexist; wrappings already made by
//!    an interrupted run are checked the same way and skipped.
//! 3. Switch the account (`PUT /v1/account/key`: new public key, new verification hash,
//!    `retire_key_id` = old). The control plane does this in one transaction and refuses it
//!    unless every data key wrapped to the old key also has a wrapping to the new one (a
//!    gateway may have started a new epoch meanwhile: then step 2 runs again).
//! 4. Liberty gets the new key as `LOCKSTOCK_ACCOUNT_KEY` and its public half as
//!    `LOCKSTOCK_ACCOUNT_PUBLIC_KEY` in one atomic write; then `…_NEXT` is removed.
//!
//! Until 3, the old key opens everything and is still `LOCKSTOCK_ACCOUNT_KEY`; after 3 the new
//! key opens everything and is in Liberty since 1. A re-run after 3 sees the account already
//! on the new key and only finishes 4.

use std::collections::BTreeMap;

use base64::Engine;
use lockstock::AgentId;
use lockstock::api::{AccountKeyRequest, WrappedKey};
use lockstock::chain::StampKind;
use lockstock::client::{ClientError, ControlPlane};
use lockstock::env;
use lockstock::seal::{AccountKey, AccountPublicKey, Dek};

use super::keys::{WrongAccountKey, check_account};
use crate::config::{
    ConfigError, LOCKSTOCK_ACCOUNT_KEY_NEXT, LOCKSTOCK_ACCOUNT_PUBLIC_KEY, Sources,
};

/// Wrappings uploaded per call (the control plane takes up to 1024).
const UPLOAD_BATCH: usize = 256;
/// Times the switch is retried when a gateway started a new epoch meanwhile.
const SWITCH_ATTEMPTS: usize = 3;

/// What stops a rotation. Each leaves the account and Liberty consistent: re-running is safe.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the old key is not the account's key: {0}")]
    WrongOldKey(#[source] WrongAccountKey),
    #[error(
        "no account key is registered with the control plane, so there is nothing to rotate\n  hint: create one with `lockstock-gateway account init`"
    )]
    NoAccountKey,
    #[error("the new key is the old key")]
    SameKey,
    #[error(
        "an interrupted rotation to key {pending} is pending in Liberty ({LOCKSTOCK_ACCOUNT_KEY_NEXT}), and the new key given is {given}\n  hint: run `lockstock-rotate --resume` to finish the pending rotation first, or abandon it with `liberty rm {LOCKSTOCK_ACCOUNT_KEY_NEXT}` (its wrappings stay unused)"
    )]
    PendingDiffers { pending: String, given: String },
    #[error(
        "no rotation is pending ({LOCKSTOCK_ACCOUNT_KEY_NEXT} is not in Liberty)\n  hint: give the new key with --generate or --new-key"
    )]
    NothingToResume,
    #[error(
        "{} data key(s) do not open with the old key, so they cannot be re-wrapped: {}\n  the rotation stopped before switching; nothing was lost\n  hint: `lockstock-audit verify --all` shows what is wrong with them",
        .0.len(), list(.0)
    )]
    Unreadable(Vec<(AgentId, u64)>),
    #[error(
        "{} wrapping(s) to the new key are stored already but do not open with it: {}\n  the rotation stopped before switching; nothing was lost\n  hint: rotate to another new key (`liberty rm {LOCKSTOCK_ACCOUNT_KEY_NEXT}`, then --generate)",
        .0.len(), list(.0)
    )]
    BadExisting(Vec<(AgentId, u64)>),
    #[error("cannot {what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("re-wrapping a data key failed: {0}")]
    Seal(#[from] lockstock::seal::SealError),
}

fn list(items: &[(AgentId, u64)]) -> String {
    let mut parts: Vec<String> = items
        .iter()
        .take(10)
        .map(|(a, e)| format!("{a} epoch {e}"))
        .collect();
    if items.len() > 10 {
        parts.push(format!("and {} more", items.len() - 10));
    }
    parts.join(", ")
}

fn api(what: &'static str) -> impl FnOnce(ClientError) -> RotateError {
    move |source| RotateError::Api { what, source }
}

/// Where the new key comes from.
pub enum NewKey {
    /// Given by the operator.
    Given(AccountKey),
    /// Made now (or the pending one, when a rotation was interrupted).
    Generate,
    /// Only the pending one.
    Resume,
}

/// What a rotation has to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub agents: usize,
    /// Data keys (agent × epoch) wrapped to the old key.
    pub data_keys: usize,
    /// Wrappings to the new key still to upload.
    pub to_add: usize,
    /// Wrappings to the new key already there (from an interrupted run).
    pub present: usize,
    /// Data keys wrapped only to other keys (neither old nor new): left as they are.
    pub foreign: usize,
}

/// Progress, for the caller to narrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pending rotation is resumed with its key.
    Resuming {
        key_id: String,
    },
    /// The new key is in Liberty as `…_NEXT`.
    KeptNext {
        key_id: String,
    },
    Planned(Counts),
    Uploaded {
        done: usize,
        total: usize,
    },
    /// A gateway added data keys meanwhile; re-wrapping again.
    Again,
    Switched {
        retired: String,
        key_id: String,
    },
    /// Liberty holds the new key; the rotation is complete.
    Stored,
}

/// How a run ended.
pub struct Outcome {
    pub counts: Counts,
    pub old_key_id: String,
    pub new_public: AccountPublicKey,
    /// The new key, when it was generated here (the operator needs an offline copy).
    pub generated: Option<AccountKey>,
    /// The switch had happened in an earlier, interrupted run.
    pub was_switched: bool,
    pub dry_run: bool,
}

struct Plan {
    counts: Counts,
    to_add: Vec<WrappedKey>,
    unreadable: Vec<(AgentId, u64)>,
    bad_existing: Vec<(AgentId, u64)>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether two data keys are the same key: one seals a probe, the other opens it.
fn same_dek(a: &Dek, b: &Dek, agent: &AgentId) -> bool {
    a.seal(agent, 1, StampKind::Request, b"rotation probe")
        .is_ok_and(|blob| b.open(agent, 1, StampKind::Request, &blob).is_ok())
}

/// Lists every agent's wrappings; re-wraps (in memory) what the new key lacks.
async fn plan(cp: &ControlPlane, old: &AccountKey, new: &AccountKey) -> Result<Plan, RotateError> {
    let (old_id, new_pub) = (old.public_key().key_id(), new.public_key());
    let new_id = new_pub.key_id();
    let agents = cp.agents().await.map_err(api("list the agents"))?.agents;
    let mut plan = Plan {
        counts: Counts {
            agents: agents.len(),
            ..Counts::default()
        },
        to_add: Vec::new(),
        unreadable: Vec::new(),
        bad_existing: Vec::new(),
    };
    for info in agents {
        let agent = info.agent_id;
        let keys = cp
            .keys(&agent)
            .await
            .map_err(api("read the wrapped data keys"))?
            .keys;
        let mut by_epoch: BTreeMap<u64, Vec<WrappedKey>> = BTreeMap::new();
        for k in keys {
            by_epoch.entry(k.epoch).or_default().push(k);
        }
        for (epoch, wrappings) in by_epoch {
            let find = |id: &str| {
                wrappings.iter().find(|w| w.key_id == id).map(|w| {
                    base64::engine::general_purpose::STANDARD
                        .decode(&w.wrapped)
                        .unwrap_or_default()
                })
            };
            let (Some(old_w), new_w) = (find(&old_id), find(&new_id)) else {
                if find(&new_id).is_none() {
                    plan.counts.foreign += 1;
                }
                continue;
            };
            plan.counts.data_keys += 1;
            let Ok(dek) = old.unwrap_dek(&agent, epoch, &old_w) else {
                plan.unreadable.push((agent.clone(), epoch));
                continue;
            };
            if let Some(new_w) = new_w {
                plan.counts.present += 1;
                let opens = new
                    .unwrap_dek(&agent, epoch, &new_w)
                    .is_ok_and(|d| same_dek(&dek, &d, &agent));
                if !opens {
                    plan.bad_existing.push((agent.clone(), epoch));
                }
                continue;
            }
            let wrapped = dek.wrap(&new_pub, &agent)?;
            let check = new.unwrap_dek(&agent, epoch, &wrapped)?;
            if !same_dek(&dek, &check, &agent) {
                return Err(RotateError::Seal(lockstock::seal::SealError::Wrap));
            }
            plan.counts.to_add += 1;
            plan.to_add.push(WrappedKey {
                agent_id: agent.clone(),
                epoch,
                key_id: new_id.clone(),
                wrapped: b64(&wrapped),
            });
        }
    }
    Ok(plan)
}

/// Uploads wrappings, one agent (at most [`UPLOAD_BATCH`]) per call.
async fn upload(
    cp: &ControlPlane,
    keys: Vec<WrappedKey>,
    on: &mut dyn FnMut(Event),
) -> Result<(), RotateError> {
    let total = keys.len();
    let mut done = 0;
    let mut batch: Vec<WrappedKey> = Vec::new();
    let mut iter = keys.into_iter().peekable();
    while let Some(k) = iter.next() {
        let agent = k.agent_id.clone();
        batch.push(k);
        let next_other = iter.peek().is_none_or(|n| n.agent_id != agent);
        if next_other || batch.len() == UPLOAD_BATCH {
            let n = batch.len();
            cp.put_keys(std::mem::take(&mut batch))
                .await
                .map_err(api("upload the new wrappings"))?;
            done += n;
            on(Event::Uploaded { done, total });
        }
    }
    Ok(())
}

/// Writes the new key as the account key in Liberty, then forgets the pending one.
fn store_final(src: &mut Sources, new: &AccountKey) -> Result<(), RotateError> {
    let hex = new.to_hex();
    let public = new.public_key().to_hex();
    src.vault_set(&[
        (env::LOCKSTOCK_ACCOUNT_KEY, hex.as_str()),
        (LOCKSTOCK_ACCOUNT_PUBLIC_KEY, public.as_str()),
    ])?;
    src.vault_remove(LOCKSTOCK_ACCOUNT_KEY_NEXT)?;
    Ok(())
}

/// Rotates from `old` to the new key; with `dry_run`, only counts (nothing is written
/// anywhere, not even Liberty).
pub async fn rotate(
    cp: &ControlPlane,
    src: &mut Sources,
    old: AccountKey,
    new: NewKey,
    dry_run: bool,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome, RotateError> {
    let pending = src.pending_rotation_key()?;
    let was_pending = pending.is_some();
    let (new, generated) = match (new, pending) {
        (NewKey::Given(k), Some(p)) => {
            if k.public_key() != p.public_key() {
                return Err(RotateError::PendingDiffers {
                    pending: p.public_key().key_id(),
                    given: k.public_key().key_id(),
                });
            }
            (k, false)
        }
        (NewKey::Given(k), None) => (k, false),
        (NewKey::Generate | NewKey::Resume, Some(p)) => {
            on(Event::Resuming {
                key_id: p.public_key().key_id(),
            });
            (p, true)
        }
        (NewKey::Generate, None) => (AccountKey::generate(), true),
        (NewKey::Resume, None) => return Err(RotateError::NothingToResume),
    };
    let (old_id, new_pub) = (old.public_key().key_id(), new.public_key());
    let outcome = |counts, was_switched, new: AccountKey| Outcome {
        counts,
        old_key_id: old_id.clone(),
        new_public: new_pub,
        generated: (generated && !dry_run).then_some(new),
        was_switched,
        dry_run,
    };

    let account = cp.account().await.map_err(api("read the account"))?;
    if account.key_id.is_none() {
        return Err(RotateError::NoAccountKey);
    }
    if account.key_id.as_deref() == Some(new_pub.key_id().as_str())
        && check_account(&account, &new).is_ok()
    {
        // An earlier run switched the account and stopped before Liberty was updated.
        if !dry_run {
            store_final(src, &new)?;
            on(Event::Stored);
        }
        return Ok(outcome(Counts::default(), true, new));
    }
    if new_pub == old.public_key() {
        return Err(RotateError::SameKey);
    }
    check_account(&account, &old).map_err(RotateError::WrongOldKey)?;

    if !dry_run && !was_pending {
        src.vault_set(&[(LOCKSTOCK_ACCOUNT_KEY_NEXT, new.to_hex().as_str())])?;
        on(Event::KeptNext {
            key_id: new_pub.key_id(),
        });
    }

    let mut attempt = 0;
    let counts = loop {
        attempt += 1;
        let plan = plan(cp, &old, &new).await?;
        on(Event::Planned(plan.counts.clone()));
        if !plan.unreadable.is_empty() {
            return Err(RotateError::Unreadable(plan.unreadable));
        }
        if !plan.bad_existing.is_empty() {
            return Err(RotateError::BadExisting(plan.bad_existing));
        }
        if dry_run {
            return Ok(outcome(plan.counts, false, new));
        }
        upload(cp, plan.to_add, on).await?;
        let switched = cp
            .set_account_key(&AccountKeyRequest {
                public_key: new_pub.to_hex(),
                verification_hash: new.verification_hash(),
                retire_key_id: Some(old_id.clone()),
            })
            .await;
        match switched {
            Ok(_) => break plan.counts,
            Err(e)
                if e.status() == Some(http::StatusCode::CONFLICT) && attempt < SWITCH_ATTEMPTS =>
            {
                on(Event::Again);
            }
            Err(e) => return Err(api("switch the account key")(e)),
        }
    };
    on(Event::Switched {
        retired: old_id.clone(),
        key_id: new_pub.key_id(),
    });
    store_final(src, &new)?;
    on(Event::Stored);
    Ok(outcome(counts, false, new))
}
