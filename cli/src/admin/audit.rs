//! Reading an agent's transcripts: stamps page by page (each checked like `verify` does),
//! blobs fetched concurrently and checked against their stamp's hash *before* decryption,
//! data keys unwrapped once per epoch, request and response paired into exchanges.
//!
//! Only GET requests are made: nothing is ever sent back to the control plane. Nothing here
//! prints; exchanges go to the caller's `emit`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lockstock::AgentId;
use lockstock::api::{StampRecord, Verdict};
use lockstock::chain::StampKind;
use lockstock::client::{ClientError, ControlPlane};
use lockstock::seal::{AccountKey, blob_epoch};
use zeroize::Zeroizing;

use super::keys::{KeyProblem, Keyring, WrongAccountKey, check_account};
use super::ledger::{self, Blob, ChainWalker, Checked, Unavailable};

/// A request stamp without a response this many seqs later is shown on its own (its response
/// will be shown on its own too, if it ever comes).
const PAIRING_WINDOW: u64 = 4096;

/// What can stop an audit as a whole (a bad entry never does: it is refused and the audit
/// goes on).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    WrongAccountKey(#[from] WrongAccountKey),
    #[error(
        "no agent {0} exists on this control plane\n  hint: `lockstock-gateway agents` lists the agents"
    )]
    UnknownAgent(AgentId),
    #[error("cannot read {what} from the control plane: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

fn api(what: &'static str) -> impl FnOnce(ClientError) -> AuditError {
    move |source| AuditError::Api { what, source }
}

/// What an audit shows.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only exchanges whose request (or lone response) is at or after this time (ms).
    pub since: Option<u64>,
    /// Only exchanges whose request (or lone response) is at or before this time (ms).
    pub until: Option<u64>,
    /// Keep polling for new stamps after the end.
    pub follow: bool,
    /// How often to poll when following.
    pub poll: Duration,
    /// How long, when following, to wait for a blob or data key the stamp promises.
    pub wait_for_blobs: Duration,
    /// Blobs fetched at once.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            since: None,
            until: None,
            follow: false,
            poll: Duration::from_secs(1),
            wait_for_blobs: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

/// A transcript body, or why there is none.
#[derive(Debug)]
pub enum Body {
    /// Decrypted.
    Plain(Zeroizing<Vec<u8>>),
    /// There is nothing to decrypt, for a reason that is not an error.
    Unavailable(Unavailable),
    /// There is something, but it was not decrypted. An error.
    Refused(Refusal),
}

/// Why a side was not decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `refused: …`, a sentence for the operator.
    pub reason: String,
    /// The cause may go away by itself (a data key not uploaded yet).
    pub transient: bool,
}

impl Refusal {
    fn body(reason: impl std::fmt::Display) -> Body {
        Body::Refused(Self {
            reason: format!("refused: {reason}"),
            transient: false,
        })
    }
}

/// One stamp of an exchange with its transcript.
#[derive(Debug)]
pub struct Side {
    pub record: StampRecord,
    pub body: Body,
}

impl Side {
    pub fn seq(&self) -> u64 {
        self.record.signed.stamp.seq
    }
}

/// A request and the response that settles it (either may be missing).
#[derive(Debug)]
pub struct Exchange {
    pub agent: AgentId,
    pub request: Option<Side>,
    pub response: Option<Side>,
}

impl Exchange {
    /// `(seq, reason)` of every refused side.
    pub fn refusals(&self) -> Vec<(u64, &str)> {
        [&self.request, &self.response]
            .into_iter()
            .flatten()
            .filter_map(|s| match &s.body {
                Body::Refused(r) => Some((s.seq(), r.reason.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Whether a side still waits for a blob or a key the control plane should soon have.
    fn waiting(&self) -> bool {
        [&self.request, &self.response]
            .into_iter()
            .flatten()
            .any(|s| {
                matches!(s.body, Body::Unavailable(Unavailable::NotUploaded))
                    || matches!(&s.body, Body::Refused(r) if r.transient)
            })
    }
}

/// Totals of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub exchanges: u64,
    /// Sides shown decrypted.
    pub decrypted: u64,
    /// Decrypted bytes.
    pub bytes: u64,
    /// Sides with no transcript, for a reason that is not an error.
    pub unavailable: u64,
    /// `(seq, reason)` of sides refused.
    pub refused: Vec<(u64, String)>,
    /// `(seq, problem)` of stamps outside the time window that do not verify.
    pub outside_problems: Vec<(u64, String)>,
}

/// Pairs stamps into exchanges as they come, in seq order.
#[derive(Default)]
struct Pairing {
    /// Forwarded requests waiting for their response.
    open: BTreeMap<u64, Checked>,
}

impl Pairing {
    /// Exchanges complete after `c`: a response with its request, a request that will get no
    /// response (not forwarded), or a lone response.
    fn push(&mut self, c: Checked, out: &mut Vec<(Option<Checked>, Option<Checked>)>) {
        let s = &c.record.signed.stamp;
        match s.kind {
            StampKind::Request => {
                if matches!(c.record.verdict, Verdict::Ok { .. }) {
                    self.open.insert(s.seq, c);
                } else {
                    out.push((Some(c), None));
                }
            }
            StampKind::Response => match self.open.remove(&s.ref_seq) {
                Some(req) => out.push((Some(req), Some(c))),
                None => out.push((None, Some(c))),
            },
        }
    }

    /// Requests left too far behind `last` to still expect their response.
    fn overdue(&mut self, last: u64, out: &mut Vec<(Option<Checked>, Option<Checked>)>) {
        while let Some(entry) = self.open.first_entry() {
            if entry.key() + PAIRING_WINDOW >= last {
                break;
            }
            out.push((Some(entry.remove()), None));
        }
    }

    fn drain(&mut self, out: &mut Vec<(Option<Checked>, Option<Checked>)>) {
        out.extend(
            std::mem::take(&mut self.open)
                .into_values()
                .map(|c| (Some(c), None)),
        );
    }
}

/// An open audit of one agent.
pub struct Auditor {
    cp: ControlPlane,
    pages: ledger::Pages,
    agent: AgentId,
    keyring: Keyring,
    walker: ChainWalker,
}

impl Auditor {
    /// Checks the account key against the control plane before anything is read, so a wrong
    /// key is refused before a single line is printed.
    pub async fn open(
        pages: ledger::Pages,
        agent: AgentId,
        account: AccountKey,
    ) -> Result<Self, AuditError> {
        let cp = pages.control_plane().clone();
        let info = cp.account().await.map_err(api("the account"))?;
        check_account(&info, &account)?;
        let agent_info = match cp.agent(&agent).await {
            Ok(a) => a,
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                return Err(AuditError::UnknownAgent(agent));
            }
            Err(e) => return Err(api("the agent")(e)),
        };
        let key = agent_info
            .public_key
            .as_deref()
            .and_then(ledger::parse_public_key);
        let mut keyring = Keyring::new(std::sync::Arc::new(account), agent.clone());
        keyring
            .refresh(&cp)
            .await
            .map_err(api("the wrapped data keys"))?;
        Ok(Self {
            walker: ChainWalker::new(agent.clone(), key),
            cp,
            pages,
            agent,
            keyring,
        })
    }

    /// Walks the chain and hands every exchange in the time window to `emit`. When following,
    /// polls for new stamps until `stop` resolves.
    pub async fn run<F>(
        &mut self,
        opts: &Options,
        mut emit: F,
        stop: impl Future<Output = ()>,
    ) -> Result<Summary, AuditError>
    where
        F: FnMut(&Exchange) -> std::io::Result<()>,
    {
        let mut stop = std::pin::pin!(stop);
        let mut sum = Summary::default();
        let mut pairing = Pairing::default();
        let mut deferred: Vec<(Exchange, Instant)> = Vec::new();
        let mut after = 0u64;
        let mut next = Some(self.spawn_page(after));
        loop {
            let page = next
                .take()
                .expect("a page is always requested")
                .await
                .map_err(|e| api("stamps")(ClientError::Decode(e.to_string())))?
                .map_err(api("stamps"))?;
            let more = page.next_after.is_some();
            let last = page.stamps.last().map_or(after, |r| r.signed.stamp.seq);
            if more {
                next = Some(self.spawn_page(last));
            }
            let mut ready = Vec::new();
            let end = !more && !opts.follow;
            let mut checked = self.walker.check_page(page.stamps);
            if end {
                checked.extend(self.walker.finish());
            }
            for c in checked {
                pairing.push(c, &mut ready);
            }
            pairing.overdue(last, &mut ready);
            after = last;
            if end {
                pairing.drain(&mut ready);
            }
            let ready = self.in_window(ready, opts, &mut sum);
            let shown = self.fetch_and_open(ready, opts.concurrency).await?;
            for ex in shown {
                if opts.follow && ex.waiting() {
                    deferred.push((ex, Instant::now() + opts.wait_for_blobs));
                } else {
                    Self::emit_one(&ex, &mut emit, &mut sum)?;
                }
            }
            if end {
                break;
            }
            if !more {
                tokio::select! {
                    _ = tokio::time::sleep(opts.poll) => {}
                    _ = &mut stop => break,
                }
                self.retry_deferred(&mut deferred, &mut emit, &mut sum)
                    .await?;
                next = Some(self.spawn_page(after));
            }
        }
        for (ex, _) in deferred {
            Self::emit_one(&ex, &mut emit, &mut sum)?;
        }
        Ok(sum)
    }

    fn spawn_page(
        &self,
        after: u64,
    ) -> tokio::task::JoinHandle<Result<lockstock::api::StampPage, ClientError>> {
        let (pages, agent) = (self.pages.clone(), self.agent.clone());
        tokio::spawn(async move { pages.get(&agent, after).await })
    }

    fn emit_one<F>(ex: &Exchange, emit: &mut F, sum: &mut Summary) -> Result<(), AuditError>
    where
        F: FnMut(&Exchange) -> std::io::Result<()>,
    {
        sum.exchanges += 1;
        for side in [&ex.request, &ex.response].into_iter().flatten() {
            match &side.body {
                Body::Plain(b) => {
                    sum.decrypted += 1;
                    sum.bytes += b.len() as u64;
                }
                Body::Unavailable(_) => sum.unavailable += 1,
                Body::Refused(r) => sum.refused.push((side.seq(), r.reason.clone())),
            }
        }
        emit(ex).map_err(AuditError::Output)
    }

    /// Keeps the exchanges in the time window; notes stamp problems of the others.
    fn in_window(
        &self,
        ready: Vec<(Option<Checked>, Option<Checked>)>,
        opts: &Options,
        sum: &mut Summary,
    ) -> Vec<(Option<Checked>, Option<Checked>)> {
        ready
            .into_iter()
            .filter(|(req, resp)| {
                let t = req
                    .as_ref()
                    .or(resp.as_ref())
                    .map_or(0, |c| c.record.signed.stamp.time_ms);
                let inside = opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t <= u);
                if !inside {
                    for c in [req, resp].into_iter().flatten().filter(|c| !c.ok()) {
                        sum.outside_problems.push((c.seq(), c.describe()));
                    }
                }
                inside
            })
            .collect()
    }

    /// Fetches the blobs of `ready` (several at once, in order), then decrypts them.
    async fn fetch_and_open(
        &mut self,
        ready: Vec<(Option<Checked>, Option<Checked>)>,
        concurrency: usize,
    ) -> Result<Vec<Exchange>, AuditError> {
        let Self {
            cp, agent, keyring, ..
        } = self;
        let (cp, agent_ref) = (&*cp, &*agent);
        let mut fetched = futures_util::stream::iter(ready)
            .map(|(req, resp)| async move {
                let (a, b) = futures_util::future::join(
                    fetch_side(cp, agent_ref, req.as_ref(), false),
                    fetch_side(cp, agent_ref, resp.as_ref(), false),
                )
                .await;
                Ok::<_, ClientError>((req, a?, resp, b?))
            })
            .buffered(concurrency.max(1));
        let mut out = Vec::new();
        let mut refreshed = false;
        while let Some(item) = fetched.next().await {
            let (req, req_blob, resp, resp_blob) = item.map_err(api("a blob"))?;
            for blob in [&req_blob, &resp_blob].into_iter().flatten() {
                if let Blob::Verified(bytes) = blob
                    && let Ok(epoch) = blob_epoch(bytes)
                    && !keyring.knows(epoch)
                    && !refreshed
                {
                    keyring
                        .refresh(cp)
                        .await
                        .map_err(api("the wrapped data keys"))?;
                    refreshed = true;
                }
            }
            out.push(Exchange {
                agent: agent.clone(),
                request: req.map(|c| open_side(keyring, agent, c, req_blob)),
                response: resp.map(|c| open_side(keyring, agent, c, resp_blob)),
            });
        }
        Ok(out)
    }

    /// Tries again the exchanges that waited for a blob or a key; emits those that have them
    /// now, or whose wait is over.
    async fn retry_deferred<F>(
        &mut self,
        deferred: &mut Vec<(Exchange, Instant)>,
        emit: &mut F,
        sum: &mut Summary,
    ) -> Result<(), AuditError>
    where
        F: FnMut(&Exchange) -> std::io::Result<()>,
    {
        if deferred.is_empty() {
            return Ok(());
        }
        self.keyring
            .refresh(&self.cp)
            .await
            .map_err(api("the wrapped data keys"))?;
        for (ex, deadline) in std::mem::take(deferred) {
            let mut again = Exchange {
                agent: ex.agent,
                request: None,
                response: None,
            };
            for (slot, side) in [
                (&mut again.request, ex.request),
                (&mut again.response, ex.response),
            ] {
                *slot = match side {
                    Some(s) if !matches!(s.body, Body::Plain(_)) => {
                        let c = Checked {
                            problems: Vec::new(),
                            record: s.record,
                        };
                        let blob = fetch_side(&self.cp, &self.agent, Some(&c), true)
                            .await
                            .map_err(api("a blob"))?;
                        Some(open_side(&mut self.keyring, &self.agent, c, blob))
                    }
                    other => other,
                };
            }
            if again.waiting() && Instant::now() < deadline {
                deferred.push((again, deadline));
            } else {
                Self::emit_one(&again, emit, sum)?;
            }
        }
        Ok(())
    }
}

/// A side's blob; `force` asks even when the stamp page said there is none yet.
async fn fetch_side(
    cp: &ControlPlane,
    agent: &AgentId,
    c: Option<&Checked>,
    force: bool,
) -> Result<Option<Blob>, ClientError> {
    let Some(c) = c else { return Ok(None) };
    if !c.ok() {
        return Ok(None);
    }
    if force && c.record.signed.stamp.blob_hash.is_some() {
        let mut r = c.record.clone();
        r.has_blob = true;
        return ledger::fetch_blob(cp, agent, &r).await.map(Some);
    }
    ledger::fetch_blob(cp, agent, &c.record).await.map(Some)
}

/// Decrypts one side, or says why not.
fn open_side(keyring: &mut Keyring, agent: &AgentId, c: Checked, blob: Option<Blob>) -> Side {
    let body = if !c.ok() {
        Refusal::body(format_args!(
            "its stamp does not verify ({}); not decrypted",
            c.describe()
        ))
    } else {
        match blob {
            None => Refusal::body("no blob was fetched"),
            Some(Blob::Unavailable(u)) => Body::Unavailable(u),
            Some(Blob::Mismatch) => Refusal::body(
                "blob hash mismatch: the blob does not match the hash its stamp commits to (altered in storage); not decrypted",
            ),
            Some(Blob::Unexpected) => {
                Refusal::body("a blob is stored but the stamp commits to none; not decrypted")
            }
            Some(Blob::Verified(bytes)) => decrypt(keyring, agent, &c.record, &bytes),
        }
    };
    Side {
        record: c.record,
        body,
    }
}

fn decrypt(keyring: &mut Keyring, agent: &AgentId, r: &StampRecord, bytes: &[u8]) -> Body {
    let epoch = match blob_epoch(bytes) {
        Ok(e) => e,
        Err(e) => return Refusal::body(e),
    };
    let dek = match keyring.dek(epoch) {
        Ok(d) => d,
        Err(p) => {
            return Body::Refused(Refusal {
                reason: format!("refused: {p}"),
                transient: matches!(p, KeyProblem::Missing { .. }),
            });
        }
    };
    let s = &r.signed.stamp;
    match dek.open(agent, s.seq, s.kind, bytes) {
        Ok(plain) => Body::Plain(plain),
        Err(e) => Refusal::body(e),
    }
}
