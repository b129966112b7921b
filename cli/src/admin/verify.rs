//! Verifying chains offline: every stamp's hash, signature and link, every blob's hash against
//! its stamp, the chain's end against the agent's recorded head, and the data keys the blobs
//! need. No decryption, and no account key needed (with one, the wrapped data keys are
//! opened too, which is the only way to tell an altered wrapping).

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use futures_util::StreamExt;
use lockstock::AgentId;
use lockstock::api::{AccountInfo, AgentInfo, StampRecord};
use lockstock::chain::Hash32;
use lockstock::client::{ClientError, ControlPlane};
use lockstock::seal::{AccountKey, blob_epoch};
use serde::Serialize;

use super::keys::{KeyProblem, Keyring};
use super::ledger::{self, Blob, ChainWalker, Unavailable};

/// What stops a verification as a whole.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {what} from the control plane: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: ClientError,
    },
}

fn api(what: &'static str) -> impl FnOnce(ClientError) -> VerifyError {
    move |source| VerifyError::Api { what, source }
}

/// How to verify.
pub struct VerifyOptions {
    /// The agent's public key from an out-of-band copy, used instead of the control plane's.
    pub public_key: Option<VerifyingKey>,
    /// With the account key, wrapped data keys are opened (not the blobs).
    pub account: Option<Arc<AccountKey>>,
    /// Blobs fetched at once.
    pub concurrency: usize,
}

/// One thing found, as one line: `seq 17: signature does not verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub message: String,
    /// False for notes (a blob not uploaded yet is not a failure).
    pub error: bool,
}

impl Finding {
    fn error(seq: Option<u64>, message: String) -> Self {
        Self {
            seq,
            message,
            error: true,
        }
    }

    fn note(seq: Option<u64>, message: String) -> Self {
        Self {
            seq,
            message,
            error: false,
        }
    }
}

/// What verifying one agent found.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub agent_id: AgentId,
    pub stamps: u64,
    pub blobs_checked: u64,
    pub blobs_unavailable: u64,
    /// Wrapped data keys opened; `None` without the account key.
    pub keys_opened: Option<u64>,
    pub findings: Vec<Finding>,
}

impl AgentReport {
    /// Everything verifies (notes allowed).
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(|f| f.error)
    }
}

/// Verifies one agent's chain, blobs and data keys.
pub async fn verify_agent(
    pages: &ledger::Pages,
    info: &AgentInfo,
    account: &AccountInfo,
    opts: &VerifyOptions,
) -> Result<AgentReport, VerifyError> {
    let cp = pages.control_plane();
    let agent = info.agent_id.clone();
    let mut report = AgentReport {
        agent_id: agent.clone(),
        stamps: 0,
        blobs_checked: 0,
        blobs_unavailable: 0,
        keys_opened: None,
        findings: Vec::new(),
    };
    let registered = info
        .public_key
        .as_deref()
        .map(|k| ledger::parse_public_key(k).ok_or_else(|| k.to_owned()));
    let key = match (opts.public_key, registered) {
        (Some(given), Some(Ok(theirs))) if given != theirs => {
            report.findings.push(Finding::error(
                None,
                format!(
                    "the control plane's public key for this agent ({}) differs from the one given ({}); verified with the one given",
                    hex::encode(theirs.as_bytes()),
                    hex::encode(given.as_bytes())
                ),
            ));
            Some(given)
        }
        (Some(given), _) => Some(given),
        (None, Some(Ok(k))) => Some(k),
        (None, Some(Err(bad))) => {
            report.findings.push(Finding::error(
                None,
                format!(
                    "the control plane's public key for this agent is not an Ed25519 key: {bad:?}"
                ),
            ));
            None
        }
        (None, None) => None,
    };

    let mut walker = ChainWalker::new(agent.clone(), key);
    // epoch → seqs of the blobs sealed in it (first few, and a count)
    let mut epochs: BTreeMap<u64, (Vec<u64>, u64)> = BTreeMap::new();
    let mut head_seen: Option<Hash32> = None;
    let mut after = 0u64;
    let spawn = |after: u64| {
        let (pages, agent) = (pages.clone(), agent.clone());
        tokio::spawn(async move { pages.get(&agent, after).await })
    };
    let mut next = Some(spawn(after));
    while let Some(handle) = next.take() {
        let page = handle
            .await
            .map_err(|e| api("stamps")(ClientError::Decode(e.to_string())))?
            .map_err(api("stamps"))?;
        let last = page.stamps.last().map_or(after, |r| r.signed.stamp.seq);
        if page.next_after.is_some() {
            next = Some(spawn(last));
        }
        after = last;
        let mut checked = walker.check_page(page.stamps);
        if page.next_after.is_none() {
            checked.extend(walker.finish());
        }
        let mut to_fetch: Vec<StampRecord> = Vec::new();
        for c in checked {
            report.stamps += 1;
            let seq = c.seq();
            if seq == info.seq {
                head_seen = Some(c.record.hash);
            }
            for p in &c.problems {
                report
                    .findings
                    .push(Finding::error(Some(seq), format!("seq {seq}: {p}")));
            }
            match ledger::blob_without_fetch(&c.record) {
                None => to_fetch.push(c.record),
                Some(Blob::Unexpected) => report.findings.push(Finding::error(
                    Some(seq),
                    format!("seq {seq}: a blob is stored but the stamp commits to none"),
                )),
                Some(Blob::Unavailable(Unavailable::NotUploaded)) => {
                    report.blobs_unavailable += 1;
                    report.findings.push(Finding::note(
                        Some(seq),
                        format!("seq {seq}: {}", Unavailable::NotUploaded),
                    ));
                }
                Some(_) => {}
            }
        }
        let agent_ref = &agent;
        let mut results = futures_util::stream::iter(to_fetch)
            .map(|r| async move {
                let b = ledger::fetch_blob(cp, agent_ref, &r).await;
                (r.signed.stamp.seq, b)
            })
            .buffered(opts.concurrency.max(1));
        while let Some((seq, b)) = results.next().await {
            match b.map_err(api("a blob"))? {
                Blob::Verified(bytes) => {
                    report.blobs_checked += 1;
                    match blob_epoch(&bytes) {
                        Ok(e) => {
                            let entry = epochs.entry(e).or_default();
                            if entry.0.len() < 3 {
                                entry.0.push(seq);
                            }
                            entry.1 += 1;
                        }
                        Err(e) => report
                            .findings
                            .push(Finding::error(Some(seq), format!("seq {seq}: {e}"))),
                    }
                }
                Blob::Mismatch => report.findings.push(Finding::error(
                    Some(seq),
                    format!(
                        "seq {seq}: blob hash mismatch (the stored blob is not the one its stamp commits to)"
                    ),
                )),
                Blob::Unavailable(u) => {
                    report.blobs_unavailable += 1;
                    report
                        .findings
                        .push(Finding::note(Some(seq), format!("seq {seq}: {u}")));
                }
                Blob::Unexpected => {}
            }
        }
    }

    // The chain must reach the head the control plane recorded for the agent.
    let (last_seq, _) = walker.last();
    if last_seq < info.seq {
        report.findings.push(Finding::error(
            None,
            format!(
                "the ledger lists stamps up to seq {last_seq}, but the agent's head is seq {}: stamps are missing at the end",
                info.seq
            ),
        ));
    } else if info.seq > 0 && head_seen.is_some_and(|h| h != info.chain_head) {
        report.findings.push(Finding::error(
            Some(info.seq),
            format!(
                "seq {}: the agent's recorded chain head does not match this stamp",
                info.seq
            ),
        ));
    }

    check_keys(cp, &agent, account, opts, &epochs, &mut report).await?;
    report.findings.sort_by_key(|f| f.seq.unwrap_or(0));
    Ok(report)
}

/// Every epoch a blob was sealed in needs a data key wrapped to the account's key; with the
/// account key, every such wrapping must open.
async fn check_keys(
    cp: &ControlPlane,
    agent: &AgentId,
    account: &AccountInfo,
    opts: &VerifyOptions,
    epochs: &BTreeMap<u64, (Vec<u64>, u64)>,
    report: &mut AgentReport,
) -> Result<(), VerifyError> {
    let keys = cp.keys(agent).await.map_err(api("the wrapped data keys"))?;
    let mut by_epoch: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for k in &keys.keys {
        by_epoch.entry(k.epoch).or_default().push(&k.key_id);
    }
    let seqs = |e: u64| -> String {
        let (first, n) = &epochs[&e];
        let list: Vec<String> = first.iter().map(|s| format!("seq {s}")).collect();
        if *n > first.len() as u64 {
            format!("{} and {} more", list.join(", "), *n - first.len() as u64)
        } else {
            list.join(", ")
        }
    };
    match &account.key_id {
        Some(current) => {
            for &e in epochs.keys() {
                let first = epochs[&e].0.first().copied();
                match by_epoch.get(&e) {
                    None => report.findings.push(Finding::error(
                        first,
                        format!("epoch {e} ({}): no data key is stored for it", seqs(e)),
                    )),
                    Some(ids) if !ids.contains(&current.as_str()) => {
                        report.findings.push(Finding::error(
                            first,
                            format!(
                                "epoch {e} ({}): its data key is wrapped only to other account keys ({}), not to the account's key {current}",
                                seqs(e),
                                ids.join(", ")
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        None if !epochs.is_empty() => report.findings.push(Finding::note(
            None,
            "no account key is registered with the control plane, yet blobs are stored".to_owned(),
        )),
        None => {}
    }
    if let Some(secret) = &opts.account {
        let mut ring = Keyring::new(secret.clone(), agent.clone());
        ring.load(keys.keys);
        let mut opened = 0;
        for e in ring.epochs() {
            match ring.dek(e) {
                Ok(_) => opened += 1,
                Err(p @ KeyProblem::DoesNotOpen { .. }) => {
                    let first = epochs.get(&e).and_then(|s| s.0.first().copied());
                    report.findings.push(Finding::error(
                        first,
                        format!("epoch {e}: {p} (key id {})", ring.key_id()),
                    ))
                }
                Err(_) => {}
            }
        }
        report.keys_opened = Some(opened);
    }
    Ok(())
}
