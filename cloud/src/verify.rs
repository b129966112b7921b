//! Signature checks for appended stamps, batched across concurrent requests.
//!
//! Handlers hand their stamps (with the agents' bound keys) to one verifier thread. It takes
//! everything queued, checks all signatures (a gateway signs each call's last stamp only; that
//! signature covers the unsigned stamps before it) with one Ed25519 batch verification (several
//! times cheaper per signature than one by one once a few dozen are queued; a batch with a bad
//! signature falls back to one by one so each stamp gets its own answer), and passes each
//! request on to the ledger writer in arrival order. The writer never does cryptography.

use std::thread::JoinHandle;

use ed25519_dalek::VerifyingKey;
use lockstock::api::StampResult;
use lockstock::chain::{Hash32, SignedStamp, verify_calls};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::ledger::{self, Checked, Ledger, shutting_down};

/// Most signatures checked in one batch.
const MAX_BATCH: usize = 1024;
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Vec<StampResult>, ApiError>>;

struct Request {
    stamps: Vec<SignedStamp>,
    /// The bound key of each stamp's agent; `None` when unknown or not activated.
    keys: Vec<Option<VerifyingKey>>,
    reply: Reply,
}

/// A handle to the verifier thread; clones share it.
#[derive(Clone)]
pub(crate) struct Verifier {
    tx: mpsc::Sender<Request>,
}

impl Verifier {
    /// Starts the thread; it stops when every handle is dropped (and then drops its ledger
    /// handle, so the writer can stop too).
    pub fn start(ledger: Ledger) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = std::thread::Builder::new()
            .name("stamp-verifier".into())
            .spawn(move || run(rx, ledger))?;
        Ok((Self { tx }, handle))
    }

    /// Verifies `stamps` and appends them; one answer per stamp, once durable.
    pub async fn append(
        &self,
        stamps: Vec<SignedStamp>,
        keys: Vec<Option<VerifyingKey>>,
    ) -> Result<Vec<StampResult>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                stamps,
                keys,
                reply,
            })
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }
}

fn run(mut rx: mpsc::Receiver<Request>, ledger: Ledger) {
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
        let checks = check_all(&requests);
        let mut checks = checks.into_iter();
        for r in requests.drain(..) {
            let checked: Vec<Checked> = r
                .stamps
                .into_iter()
                .zip(checks.by_ref())
                .map(|(signed, check)| Checked { signed, check })
                .collect();
            ledger.submit_blocking(move |ctx| ledger::append(ctx, checked), r.reply);
        }
    }
}

/// One result per stamp of every request, in order.
fn check_all(requests: &[Request]) -> Vec<Result<Hash32, String>> {
    let mut items: Vec<(&SignedStamp, &VerifyingKey)> = Vec::new();
    let mut starts = Vec::with_capacity(requests.len());
    for r in requests {
        starts.push(items.len());
        items.extend(
            r.stamps
                .iter()
                .zip(&r.keys)
                .filter_map(|(s, k)| k.as_ref().map(|k| (s, k))),
        );
    }
    let mut verified = verify_calls(&items, &starts).into_iter();
    requests
        .iter()
        .flat_map(|r| r.stamps.iter().zip(&r.keys))
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
