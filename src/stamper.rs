//! Per-agent chain writers: turn drafts into signed, chained, sealed stamps and deliver them
//! to the control plane in order.
//!
//! Each agent has one queue and one sender task. The sender takes everything queued, assigns
//! consecutive seqs from the chain head, seals transcripts (the seq is part of the blob's
//! AAD, so sealing happens here), signs the batch once (its last stamp), and sends it with its
//! blobs (up to 256 KiB of them; bigger ones follow through the uploader) in the next call of
//! the carrier (`carrier.rs`), together with the batches of other agents ready at the same
//! time; the control plane commits a call and its blobs with one fsync. While a batch is in
//! flight, new drafts queue up and form the next batch, so batches grow with load and latency
//! stays one round trip when idle.
//!
//! A signed stamp is never rewritten: if delivery fails, the same bytes are retried until the
//! control plane answers (it recognises a retry as a duplicate and repeats its verdict).
//! Request waiters are told at once that the control plane is unreachable, and a
//! "not forwarded" response stamp is queued to settle whatever the request may have reserved.
//! Only a batch the control plane refuses outright (a 4xx that is not about the gateway's key)
//! is given up, since the same bytes would be refused forever.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::StatusCode;
use tokio::sync::{Notify, oneshot};

use crate::AgentId;
use crate::api::{BlobUpload, Verdict, WrappedKey};
use crate::carrier::{Batch, Carrier};
use crate::chain::{Hash32, Head, STAMP_VERSION, SignedStamp, Stamp, StampKind, flags, sign_batch};
use crate::client::{ClientError, ControlPlane};
use crate::metrics::AgentMetrics;
use crate::seal::{AccountPublicKey, Dek};
use crate::sealer::Uploads;

/// Most stamps sent in one call.
const MAX_BATCH: usize = 256;
/// How long a batch of response stamps only (nobody waits on them) is held for a request
/// stamp to join it. An agent's next request usually follows its last answer within this:
/// riding along saves that request a whole round trip behind the response stamp.
const LINGER: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most bytes of sealed blobs (base64) sent with a batch's stamps, stored in the same commit.
/// Larger ones go to the uploader once their stamps are appended, so a big transcript does
/// not hold up the verdicts travelling with it.
const MAX_INLINE_BLOB_BYTES: usize = 256 * 1024;

/// What the proxy knows when it asks for a stamp; the sender fills in the chain position.
#[derive(Debug, Clone)]
pub struct Draft {
    pub kind: StampKind,
    pub model: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub ref_seq: u64,
    pub flags: u8,
    pub status: u16,
    /// Plaintext to seal into the blob this stamp commits to (only when sealing is on).
    pub transcript: Option<Bytes>,
}

/// The ledger's answer to a request stamp.
#[derive(Debug, Clone)]
pub struct Ack {
    pub seq: u64,
    pub verdict: Verdict,
}

/// Why a stamp got no verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StampFailure {
    #[error("the LockStock control plane is unreachable")]
    Unavailable,
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// Settings of the chain writers.
#[derive(Clone)]
pub struct StamperConfig {
    /// Seal transcripts to this key; `None` records stamps only.
    pub account: Option<AccountPublicKey>,
    /// How long one data key is used before a new one is made (and the old one wiped).
    pub dek_epoch: Duration,
    /// How long a request waits for its verdict.
    pub verdict_timeout: Duration,
}

struct Pending {
    draft: Draft,
    reply: Option<oneshot::Sender<Result<Ack, StampFailure>>>,
    /// Already in a batch the control plane refused for good: not sent again after another.
    requeued: bool,
}

/// One agent's chain writer.
pub struct Chain {
    agent: AgentId,
    key: SigningKey,
    queue: Mutex<VecDeque<Pending>>,
    wake: Notify,
    down: AtomicBool,
    outstanding: Arc<Outstanding>,
    verdict_timeout: Duration,
    metrics: Arc<AgentMetrics>,
}

/// Counts drafts not yet delivered, so shutdown can wait for them.
#[derive(Default)]
pub struct Outstanding {
    count: AtomicUsize,
    idle: Notify,
}

impl Outstanding {
    pub(crate) fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::SeqCst) == n {
            self.idle.notify_waiters();
        }
    }

    pub fn pending(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until every draft has been delivered (or `deadline` passes).
    pub async fn drained(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.pending() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

impl Chain {
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    /// The public half of this agent's signing key.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// True while the control plane is known to be unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn push(&self, draft: Draft, reply: Option<oneshot::Sender<Result<Ack, StampFailure>>>) {
        self.outstanding.add(1);
        self.queue
            .lock()
            .expect("stamp queue poisoned")
            .push_back(Pending {
                draft,
                reply,
                requeued: false,
            });
        self.wake.notify_one();
    }

    /// Stamps a request and waits for the ledger's verdict.
    pub async fn submit(&self, draft: Draft) -> Result<Ack, StampFailure> {
        if self.is_down() {
            // Fail fast: no stamp is made, so nothing needs settling later.
            return Err(StampFailure::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        self.push(draft, Some(tx));
        match tokio::time::timeout(self.verdict_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StampFailure::ShuttingDown),
            Err(_) => Err(StampFailure::Unavailable),
        }
    }

    /// Queues a stamp without waiting (response stamps: the client already has its answer).
    pub fn submit_detached(&self, draft: Draft) {
        self.push(draft, None);
    }
}

/// Every agent's chain writer, keyed by agent id.
pub struct Stamper {
    chains: HashMap<AgentId, Arc<Chain>>,
    outstanding: Arc<Outstanding>,
}

impl Stamper {
    /// Starts one sender task per agent; each records its calls in the agent's metrics.
    pub fn start(
        agents: impl IntoIterator<Item = (AgentId, SigningKey, Arc<AgentMetrics>)>,
        cp: ControlPlane,
        uploads: Option<Uploads>,
        config: StamperConfig,
    ) -> Self {
        let outstanding = Arc::new(Outstanding::default());
        let carrier = Carrier::start(cp.clone());
        let mut chains = HashMap::new();
        for (agent, key, metrics) in agents {
            let chain = Arc::new(Chain {
                agent: agent.clone(),
                key,
                queue: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
                down: AtomicBool::new(false),
                outstanding: outstanding.clone(),
                verdict_timeout: config.verdict_timeout,
                metrics,
            });
            let sender = Sender {
                chain: chain.clone(),
                cp: cp.clone(),
                carrier: carrier.clone(),
                uploads: uploads.clone(),
                config: config.clone(),
                head: None,
                dek: None,
                new_keys: Vec::new(),
                backoff: Duration::from_millis(50),
            };
            tokio::spawn(sender.run());
            chains.insert(agent, chain);
        }
        Self {
            chains,
            outstanding,
        }
    }

    pub fn chain(&self, agent: &AgentId) -> Option<&Arc<Chain>> {
        self.chains.get(agent)
    }

    pub fn chains(&self) -> impl Iterator<Item = &Arc<Chain>> {
        self.chains.values()
    }

    pub fn outstanding(&self) -> &Outstanding {
        &self.outstanding
    }
}

struct Built {
    signed: SignedStamp,
    blob: Option<BlobUpload>,
    reply: Option<oneshot::Sender<Result<Ack, StampFailure>>>,
    /// Set for a response stamp: should its batch be refused for good, it goes again (its
    /// request was forwarded, so its tokens and transcript must still reach the ledger).
    again: Option<Again>,
}

/// What a stamp needs to go again besides its own fields.
struct Again {
    transcript: Option<Bytes>,
}

impl Again {
    fn draft(self, stamp: Stamp) -> Draft {
        Draft {
            kind: stamp.kind,
            model: stamp.model,
            tokens_in: stamp.tokens_in,
            tokens_out: stamp.tokens_out,
            ref_seq: stamp.ref_seq,
            flags: stamp.flags,
            status: stamp.status,
            transcript: self.transcript,
        }
    }
}

struct CurrentDek {
    dek: Dek,
    since: Instant,
}

struct Sender {
    chain: Arc<Chain>,
    cp: ControlPlane,
    carrier: Carrier,
    uploads: Option<Uploads>,
    config: StamperConfig,
    head: Option<Head>,
    dek: Option<CurrentDek>,
    /// Data keys of epochs begun while building the batch about to go, stored before it.
    new_keys: Vec<WrappedKey>,
    backoff: Duration,
}

/// True when the control plane answered an append with an error that the same bytes would
/// get again. An unknown or revoked gateway key is not one: an operator can fix it on the
/// control plane while the gateway holds on to its stamps.
fn refused_for_good(e: &ClientError) -> bool {
    e.status().is_some_and(|s| {
        s.is_client_error()
            && !matches!(
                s,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            )
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Sender {
    async fn run(mut self) {
        loop {
            let batch = self.next_batch().await;
            if batch.is_empty() {
                continue;
            }
            let Some((head, batch)) = self.sync_head(batch).await else {
                continue;
            };
            let (built, head) = self.build(head, batch);
            self.head = Some(head);
            self.deliver(built).await;
        }
    }

    /// Waits for queued drafts; while the control plane is down and nothing is queued,
    /// probes it so request traffic resumes as soon as it is back.
    async fn next_batch(&mut self) -> Vec<Pending> {
        let mut linger_until: Option<Instant> = None;
        loop {
            {
                let mut q = self.chain.queue.lock().expect("stamp queue poisoned");
                if !q.is_empty() {
                    let someone_waits = q.iter().any(|p| p.reply.is_some());
                    let until = *linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                    if someone_waits || q.len() >= MAX_BATCH || Instant::now() >= until {
                        let n = q.len().min(MAX_BATCH);
                        return q.drain(..n).collect();
                    }
                }
            }
            if let Some(until) = linger_until {
                tokio::select! {
                    _ = self.chain.wake.notified() => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
                continue;
            }
            if self.chain.is_down() {
                tokio::select! {
                    _ = self.chain.wake.notified() => {}
                    _ = tokio::time::sleep(self.backoff) => {
                        if self.cp.health().await.is_ok() {
                            self.up();
                        } else {
                            self.grow_backoff();
                        }
                    }
                }
            } else {
                self.chain.wake.notified().await;
            }
        }
    }

    fn up(&mut self) {
        self.chain.down.store(false, Ordering::Relaxed);
        self.backoff = Duration::from_millis(50);
    }

    fn grow_backoff(&mut self) {
        self.chain.down.store(true, Ordering::Relaxed);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Makes sure the chain head is known (after start, or after a rejected stamp), then
    /// returns it with the batch. Request drafts that cannot wait are failed.
    async fn sync_head(&mut self, batch: Vec<Pending>) -> Option<(Head, Vec<Pending>)> {
        if let Some(head) = self.head {
            return Some((head, batch));
        }
        match self.cp.policy(&self.chain.agent).await {
            Ok(policy) => {
                self.up();
                Some((policy.head, batch))
            }
            Err(e) => {
                tracing::warn!(agent = %self.chain.agent, error = %e, "cannot read the chain head");
                self.grow_backoff();
                let mut keep = Vec::new();
                let mut failed = 0;
                for p in batch {
                    match p.reply {
                        Some(reply) => {
                            let _ = reply.send(Err(StampFailure::Unavailable));
                            failed += 1;
                        }
                        None => keep.push(p),
                    }
                }
                self.chain.outstanding.done(failed);
                {
                    let mut q = self.chain.queue.lock().expect("stamp queue poisoned");
                    for p in keep.into_iter().rev() {
                        q.push_front(p);
                    }
                }
                tokio::time::sleep(self.backoff).await;
                None
            }
        }
    }

    /// Assigns seqs from `head`, seals transcripts and signs the batch (once: its last stamp's
    /// signature covers the rest, see [`sign_batch`]).
    fn build(&mut self, mut head: Head, batch: Vec<Pending>) -> (Vec<Built>, Head) {
        let mut stamps = Vec::with_capacity(batch.len());
        let mut rest = Vec::with_capacity(batch.len());
        for mut p in batch {
            let seq = head.seq + 1;
            let blob = p
                .draft
                .transcript
                .as_ref()
                .and_then(|t| self.seal(seq, p.draft.kind, t));
            let blob_hash = blob.as_ref().map(|b| Hash32::of(b));
            let blob = blob.map(|b| {
                use base64::Engine;
                BlobUpload {
                    agent_id: self.chain.agent.clone(),
                    seq,
                    kind: p.draft.kind,
                    data: base64::engine::general_purpose::STANDARD.encode(b),
                }
            });
            let again = (p.draft.kind == StampKind::Response && !p.requeued).then(|| Again {
                transcript: p.draft.transcript.take(),
            });
            let stamp = Stamp {
                version: STAMP_VERSION,
                agent_id: self.chain.agent.clone(),
                seq,
                prev_hash: head.hash,
                kind: p.draft.kind,
                time_ms: now_ms(),
                model: p.draft.model,
                tokens_in: p.draft.tokens_in,
                tokens_out: p.draft.tokens_out,
                ref_seq: p.draft.ref_seq,
                flags: p.draft.flags,
                status: p.draft.status,
                blob_hash,
            };
            head = Head {
                seq,
                hash: stamp.hash(),
            };
            stamps.push(stamp);
            rest.push((blob, p.reply, again));
        }
        let built = sign_batch(stamps, &self.chain.key)
            .into_iter()
            .zip(rest)
            .map(|(signed, (blob, reply, again))| Built {
                signed,
                blob,
                reply,
                again,
            })
            .collect();
        (built, head)
    }

    /// Seals a transcript with the current epoch's data key, starting a new epoch when due.
    fn seal(&mut self, seq: u64, kind: StampKind, plaintext: &[u8]) -> Option<Vec<u8>> {
        let account = self.config.account?;
        // Without an upload queue, a blob too big to travel with its stamp would be lost.
        self.uploads.as_ref()?;
        let due = self
            .dek
            .as_ref()
            .is_none_or(|d| d.since.elapsed() >= self.config.dek_epoch);
        if due {
            // Dropping the old key wipes it: a later compromise cannot read earlier epochs.
            let epoch = now_ms().max(self.dek.as_ref().map_or(0, |d| d.dek.epoch + 1));
            let dek = Dek::generate(epoch);
            match dek.wrap(&account, &self.chain.agent) {
                Ok(wrapped) => {
                    use base64::Engine;
                    self.new_keys.push(WrappedKey {
                        agent_id: self.chain.agent.clone(),
                        epoch,
                        key_id: account.key_id(),
                        wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
                    });
                    self.dek = Some(CurrentDek {
                        dek,
                        since: Instant::now(),
                    });
                }
                Err(e) => {
                    tracing::error!(agent = %self.chain.agent, error = %e, "cannot wrap a data key");
                    return None;
                }
            }
        }
        let dek = &self.dek.as_ref()?.dek;
        match dek.seal(&self.chain.agent, seq, kind, plaintext) {
            Ok(blob) => Some(blob),
            Err(e) => {
                tracing::error!(agent = %self.chain.agent, seq, error = %e, "cannot seal a transcript");
                None
            }
        }
    }

    /// Sends one built batch (with as many of its blobs as fit) until the control plane
    /// answers, then hands out the verdicts and queues the blobs that did not travel with it.
    async fn deliver(&mut self, mut built: Vec<Built>) {
        self.store_new_keys().await;
        let (mut inline, mut inline_of, mut inline_bytes) = (Vec::new(), Vec::new(), 0);
        for (i, b) in built.iter_mut().enumerate() {
            let fits = b
                .blob
                .as_ref()
                .is_some_and(|blob| inline_bytes + blob.data.len() <= MAX_INLINE_BLOB_BYTES);
            if let Some(blob) = b.blob.take_if(|_| fits) {
                inline_bytes += blob.data.len();
                inline.push(blob);
                inline_of.push(i);
            }
        }
        let mut batch = Batch {
            stamps: built.iter().map(|b| b.signed.clone()).collect(),
            blobs: inline,
        };
        let resp = loop {
            let sent = Instant::now();
            let Some(delivery) = self.carrier.append(batch).await else {
                return; // the runtime is shutting down
            };
            batch = delivery.batch;
            match delivery.answer {
                Ok(resp) => {
                    self.chain
                        .metrics
                        .stamp_call(batch.stamps.len(), sent.elapsed());
                    break resp;
                }
                Err(e) if refused_for_good(&e) && !batch.blobs.is_empty() => {
                    // Perhaps only the size of the call (a proxy's body limit): the stamps go
                    // alone, their transcripts follow through the uploader.
                    tracing::warn!(agent = %self.chain.agent, error = %e, "the control plane refused stamps sent with their transcripts; sending the stamps alone");
                    for (blob, i) in batch.blobs.drain(..).zip(inline_of.drain(..)) {
                        built[i].blob = Some(blob);
                    }
                }
                Err(e) if refused_for_good(&e) => {
                    self.drop_refused(built, &e);
                    return;
                }
                Err(e) => {
                    tracing::warn!(agent = %self.chain.agent, error = %e, stamps = batch.stamps.len(), "stamp delivery failed; retrying");
                    self.grow_backoff();
                    self.fail_waiters(&mut built);
                    tokio::time::sleep(self.backoff).await;
                }
            }
        };
        self.up();
        let mut rejected = false;
        let mut blobs = Vec::new();
        if resp.blobs_stored.is_none() {
            // A control plane from before blobs travelled with stamps ignored them.
            blobs.extend(
                batch
                    .blobs
                    .into_iter()
                    .zip(inline_of)
                    .filter(|(_, i)| resp.results[*i].verdict.appended())
                    .map(|(blob, _)| blob),
            );
        }
        for (b, result) in built.into_iter().zip(&resp.results) {
            let appended = result.verdict.appended();
            rejected |= !appended;
            if appended {
                blobs.extend(b.blob);
            } else {
                tracing::warn!(agent = %self.chain.agent, seq = b.signed.stamp.seq, verdict = ?result.verdict, "stamp not appended");
            }
            if let Some(reply) = b.reply {
                let ack = Ack {
                    seq: b.signed.stamp.seq,
                    verdict: result.verdict.clone(),
                };
                let granted = matches!(ack.verdict, Verdict::Ok { .. });
                if reply.send(Ok(ack)).is_err() && granted {
                    // The waiter gave up; the reservation must still be released.
                    self.settle_not_forwarded(b.signed.stamp.seq, &b.signed.stamp.model);
                }
            }
        }
        if rejected {
            // The chain continues from what the ledger holds, not from what it refused.
            self.head = resp.results.last().map(|r| r.head);
        }
        // Verdicts first, so no request waits for this. The next batch does wait while the
        // upload queue is full: that is how a ledger that cannot keep up slows traffic down.
        // The stamps count as delivered only once their blobs are queued, so shutdown waits
        // for both.
        if let Some(uploads) = &self.uploads {
            for blob in blobs {
                uploads.blob(blob).await;
            }
        }
        self.chain.outstanding.done(resp.results.len());
    }

    /// Stores the data keys the batch's blobs are sealed with before the batch goes, so a
    /// stored blob can always be read (once an hour per agent, one call). When that fails,
    /// the keys go through the upload queue, which retries and spools them; the blobs still
    /// travel with their stamps and are readable once their key arrives.
    async fn store_new_keys(&mut self) {
        if self.new_keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.new_keys);
        if let Err(e) = self.cp.put_keys(keys.clone()).await {
            tracing::warn!(agent = %self.chain.agent, error = %e, "storing a new data key failed; queued for upload");
            if let Some(uploads) = &self.uploads {
                keys.into_iter().for_each(|k| uploads.key(k));
            }
        }
    }

    /// Gives up a batch the control plane refuses and would refuse again, byte for byte: none
    /// of it is in the ledger, so its request waiters are refused (nothing was reserved for
    /// them), response stamps queued to settle its requests are withdrawn (their seqs will be
    /// reused), and the chain resumes from the ledger's head. Its own response stamps settle
    /// requests that were forwarded: they go again, once, at the front of the queue. Retrying
    /// the batch instead would stop every request of this agent until the gateway restarts.
    fn drop_refused(&mut self, built: Vec<Built>, e: &ClientError) {
        let seqs = built.first().map_or(0, |b| b.signed.stamp.seq)
            ..=built.last().map_or(0, |b| b.signed.stamp.seq);
        let mut again = Vec::new();
        let dropped = built.len();
        for b in built {
            if let Some(reply) = b.reply {
                let _ = reply.send(Err(StampFailure::Unavailable));
            }
            let stamp = b.signed.stamp;
            if let Some(a) = b.again
                && !seqs.contains(&stamp.ref_seq)
            {
                again.push(a.draft(stamp));
            }
        }
        tracing::error!(agent = %self.chain.agent, error = %e, first_seq = seqs.start(), last_seq = seqs.end(), response_stamps_sent_again = again.len(), "the control plane refuses these stamps; they are dropped and the chain resumes from the ledger's head");
        let requeued = again.len();
        let withdrawn = {
            let mut q = self.chain.queue.lock().expect("stamp queue poisoned");
            let before = q.len();
            q.retain(|p| !(p.draft.kind == StampKind::Response && seqs.contains(&p.draft.ref_seq)));
            let withdrawn = before - q.len();
            for draft in again.into_iter().rev() {
                q.push_front(Pending {
                    draft,
                    reply: None,
                    requeued: true,
                });
            }
            withdrawn
        };
        self.chain.outstanding.done(dropped - requeued + withdrawn);
        self.head = None;
        self.up();
    }

    /// Tells request waiters the control plane is unreachable; their stamps stay in the
    /// batch and a settling response stamp is queued behind it for each.
    fn fail_waiters(&mut self, built: &mut [Built]) {
        for b in built.iter_mut() {
            if let Some(reply) = b.reply.take() {
                let _ = reply.send(Err(StampFailure::Unavailable));
                if b.signed.stamp.kind == StampKind::Request {
                    self.settle_not_forwarded(b.signed.stamp.seq, &b.signed.stamp.model);
                }
            }
        }
    }

    fn settle_not_forwarded(&self, request_seq: u64, model: &str) {
        self.chain.push(
            Draft {
                kind: StampKind::Response,
                model: model.to_owned(),
                tokens_in: 0,
                tokens_out: 0,
                ref_seq: request_seq,
                flags: flags::NOT_FORWARDED,
                status: 0,
                transcript: None,
            },
            None,
        );
    }
}
