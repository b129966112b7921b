//! Signature checks for appended stamps, batched across concurrent requests.
//!
//! Handlers hand their stamps (with the agents' bound keys) to one verifier thread. It takes
//! everything queued, checks all signatures (a gateway signs each call's last stamp only; that
//! signature covers the unsigned stamps before it) with one Ed25519 batch verification (several
//! times cheaper per signature than one by one once a few dozen are queued; a batch with a bad
//! signature falls back to one by one so each stamp gets its own answer), and passes each
//! request on to the ledger writer in arrival order. The writer never does cryptography.
//!
//! A call with few signatures that arrives while no other call is being checked is checked by
//! its handler instead: a batch needs company, and handing a lone call to another thread costs
//! more (a cross-CPU wake-up) than its one signature check.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use ed25519_dalek::VerifyingKey;
use lockstock::chain::{Hash32, SignedStamp, verify_calls};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::ledger::{self, Appended, Checked, InlineBlob, Ledger, shutting_down};

/// Most signatures checked in one batch.
const MAX_BATCH: usize = 1024;
const QUEUE: usize = 4096;
/// Most signatures a handler checks itself rather than queue for a batch.
const INLINE_SIGNATURES: usize = 2;

type Reply = oneshot::Sender<Result<Appended, ApiError>>;

struct Request {
    stamps: Vec<SignedStamp>,
    /// The bound key of each stamp's agent; `None` when unknown or not activated.
    keys: Vec<Option<VerifyingKey>>,
    blobs: Vec<InlineBlob>,
    reply: Reply,
}

/// A handle to the verifier thread; clones share it.
#[derive(Clone)]
pub(crate) struct Verifier {
    tx: mpsc::Sender<Request>,
    /// Calls being checked, by their handlers or on the thread.
    checking: Arc<AtomicUsize>,
    ledger: Ledger,
}

impl Verifier {
    /// Starts the thread; it stops when every handle is dropped (and then drops its ledger
    /// handle, so the writer can stop too).
    pub fn start(ledger: Ledger) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let checking = Arc::new(AtomicUsize::new(0));
        let handle = {
            let (checking, ledger) = (checking.clone(), ledger.clone());
            std::thread::Builder::new()
                .name("stamp-verifier".into())
                .spawn(move || run(rx, &ledger, &checking))?
        };
        Ok((
            Self {
                tx,
                checking,
                ledger,
            },
            handle,
        ))
    }

    /// Verifies `stamps` and appends them with their `blobs`; one answer per stamp, once
    /// durable.
    pub async fn append(
        &self,
        stamps: Vec<SignedStamp>,
        keys: Vec<Option<VerifyingKey>>,
        blobs: Vec<InlineBlob>,
    ) -> Result<Appended, ApiError> {
        let signatures = stamps.iter().filter(|s| s.signature.is_some()).count();
        let alone = self.checking.fetch_add(1, Ordering::SeqCst) == 0;
        if alone && signatures <= INLINE_SIGNATURES {
            let checks = check_all(&[(&stamps, &keys)]);
            self.checking.fetch_sub(1, Ordering::SeqCst);
            let checked = pair(stamps, &mut checks.into_iter());
            return self
                .ledger
                .run(move |ctx| ledger::append(ctx, checked, blobs))
                .await;
        }
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Request {
                stamps,
                keys,
                blobs,
                reply,
            })
            .await;
        if sent.is_err() {
            self.checking.fetch_sub(1, Ordering::SeqCst);
            return Err(shutting_down());
        }
        rx.await.map_err(|_| shutting_down())?
    }
}

fn run(mut rx: mpsc::Receiver<Request>, ledger: &Ledger, checking: &AtomicUsize) {
    let mut requests = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.stamps.len();
        requests.push(first);
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.stamps.len();
                    requests.push(r);
                }
                Err(_) => break,
            }
        }
        let calls: Vec<_> = requests
            .iter()
            .map(|r| (r.stamps.as_slice(), r.keys.as_slice()))
            .collect();
        let mut checks = check_all(&calls).into_iter();
        for r in requests.drain(..) {
            let checked = pair(r.stamps, &mut checks);
            let blobs = r.blobs;
            ledger.submit_blocking(move |ctx| ledger::append(ctx, checked, blobs), r.reply);
            checking.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Each stamp with its check, taken in order from `checks`.
fn pair(
    stamps: Vec<SignedStamp>,
    checks: &mut impl Iterator<Item = Result<Hash32, String>>,
) -> Vec<Checked> {
    stamps
        .into_iter()
        .zip(checks)
        .map(|(signed, check)| Checked { signed, check })
        .collect()
}

/// One result per stamp of every call (its stamps, and each one's agent's bound key), in order.
fn check_all(calls: &[(&[SignedStamp], &[Option<VerifyingKey>])]) -> Vec<Result<Hash32, String>> {
    let mut items: Vec<(&SignedStamp, &VerifyingKey)> = Vec::new();
    let mut starts = Vec::with_capacity(calls.len());
    for (stamps, keys) in calls {
        starts.push(items.len());
        items.extend(
            stamps
                .iter()
                .zip(*keys)
                .filter_map(|(s, k)| k.as_ref().map(|k| (s, k))),
        );
    }
    let mut verified = verify_calls(&items, &starts).into_iter();
    calls
        .iter()
        .flat_map(|(stamps, keys)| stamps.iter().zip(*keys))
        .map(|(s, key)| match key {
            None => Err(format!(
                "agent {} is not activated; activate it with its genesis token first",
                s.stamp.agent_id
            )),
            Some(_) => verified
                .next()
                .expect("one result per verified stamp")
                .map_err(|e| e.to_string()),
        })
        .collect()
}
