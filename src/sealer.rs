//! Ships the sealed blobs that did not travel with their stamps (too big, or refused with
//! them), and the wrapped data keys the chain writer could not store itself, to the control
//! plane, off the request path.
//!
//! Uploads are queued in memory and sent in batches by one task. When the control plane
//! cannot be reached they are written to a spool directory (they are ciphertext already) and
//! shipped when it returns, so a transcript is not lost to an outage or a restart. The task
//! waits a moment after the first item so uploads go in batches (they are off the request
//! path); at shutdown the gateway waits for everything queued to be delivered or spooled.
//!
//! The queue is bounded by bytes. When the control plane stores transcripts more slowly than
//! agents produce them, queuing waits for room, which holds back the agents' next verdicts:
//! traffic slows to what can be recorded instead of the backlog growing until the gateway
//! runs out of memory, and no transcript is dropped.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::api::{BlobUpload, MAX_ITEMS_PER_UPLOAD, WrappedKey};
use crate::client::{ClientError, ControlPlane};
use crate::stamper::Outstanding;

/// Most bytes of base64 sent in one blob upload call.
const MAX_UPLOAD_BYTES: usize = 8 * 1024 * 1024;
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Most bytes of sealed blobs (base64) queued or in flight at once.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// How long the first queued item waits for others, so each call and each ledger commit
/// carries many (a blob is not on the request path; nobody waits for it).
const GATHER: Duration = Duration::from_millis(10);

enum Item {
    Blob(BlobUpload),
    Key(WrappedKey),
}

/// A handle to queue uploads; cheap to clone.
#[derive(Clone)]
pub struct Uploads {
    tx: mpsc::UnboundedSender<Item>,
    outstanding: Arc<Outstanding>,
    /// Free bytes of the queue: a blob takes its size when queued, the worker gives it back
    /// once the blob is delivered, refused or spooled.
    room: Arc<Semaphore>,
}

impl Uploads {
    /// Starts the upload task. `spool`: where uploads wait while the control plane is away
    /// (`None` keeps them in memory only).
    pub fn start(cp: ControlPlane, spool: Option<PathBuf>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let outstanding = Arc::new(Outstanding::default());
        let room = Arc::new(Semaphore::new(MAX_QUEUED_BYTES));
        let worker = Worker {
            cp,
            spool,
            spooled: false,
            outstanding: outstanding.clone(),
            room: room.clone(),
        };
        tokio::spawn(worker.run(rx));
        Self {
            tx,
            outstanding,
            room,
        }
    }

    /// Queues a sealed blob, once the queue has room for it.
    pub async fn blob(&self, blob: BlobUpload) {
        let size = blob_size(&blob);
        if let Ok(taken) = self.room.acquire_many(size).await {
            taken.forget();
        }
        if !self.queue(Item::Blob(blob)) {
            self.room.add_permits(size as usize);
        }
    }

    pub fn key(&self, key: WrappedKey) {
        self.queue(Item::Key(key));
    }

    /// Bytes of the queue in use (queued or in flight).
    pub fn queued_bytes(&self) -> usize {
        MAX_QUEUED_BYTES - self.room.available_permits()
    }

    fn queue(&self, item: Item) -> bool {
        self.outstanding.add(1);
        let queued = self.tx.send(item).is_ok();
        if !queued {
            self.outstanding.done(1);
        }
        queued
    }

    /// Uploads neither delivered nor spooled to disk yet.
    pub fn outstanding(&self) -> &Outstanding {
        &self.outstanding
    }
}

struct Worker {
    cp: ControlPlane,
    spool: Option<PathBuf>,
    /// The spool may hold files. Only this task writes there, so the directory is read at
    /// start and after an outage, not on every cycle (that would be blocking file-system
    /// calls on a runtime worker, about a hundred times a second under load).
    spooled: bool,
    outstanding: Arc<Outstanding>,
    room: Arc<Semaphore>,
}

/// The room a blob takes in the queue (a blob bigger than the queue takes all of it).
fn blob_size(blob: &BlobUpload) -> u32 {
    blob.data.len().clamp(1, MAX_QUEUED_BYTES) as u32
}

/// The room queued items take.
fn room_taken(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| match i {
            Item::Blob(b) => blob_size(b) as usize,
            Item::Key(_) => 0,
        })
        .sum()
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>) {
        if let Some(dir) = &self.spool
            && let Err(e) = create_private_dir(dir)
        {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the spool directory");
        }
        self.spooled = self.spool_has_files();
        let mut held: Vec<Item> = Vec::new();
        loop {
            let first = if held.is_empty() && !self.spooled {
                match rx.recv().await {
                    Some(i) => Some(i),
                    None => return,
                }
            } else {
                match tokio::time::timeout(RETRY_EVERY, rx.recv()).await {
                    Ok(Some(i)) => Some(i),
                    Ok(None) => return,
                    Err(_) => None,
                }
            };
            if first.is_some() && held.is_empty() {
                tokio::time::sleep(GATHER).await;
            }
            held.extend(first);
            while let Ok(i) = rx.try_recv() {
                held.push(i);
            }
            let (before, taken) = (held.len(), room_taken(&held));
            held = self.ship(held).await;
            if !held.is_empty() {
                held = self.spool_out(held);
            }
            // Delivered, refused for good, or on disk: nothing more to wait for at shutdown,
            // and no memory held.
            self.outstanding.done(before - held.len());
            self.room.add_permits(taken - room_taken(&held));
            if held.is_empty() && self.spooled {
                self.spooled = !self.ship_spool().await;
            }
        }
    }

    /// Sends keys first (a blob is useless without its key), then blobs in size-bounded
    /// batches. Returns what could not be delivered.
    async fn ship(&self, items: Vec<Item>) -> Vec<Item> {
        let (mut keys, mut blobs) = (Vec::new(), Vec::new());
        for i in items {
            match i {
                Item::Key(k) => keys.push(k),
                Item::Blob(b) => blobs.push(b),
            }
        }
        let mut failed = Vec::new();
        for (i, chunk) in keys.chunks(MAX_ITEMS_PER_UPLOAD).enumerate() {
            if let Err(e) = self.cp.put_keys(chunk.to_vec()).await {
                log_failure("wrapped keys", &e);
                if e.is_unreachable() || is_server_error(&e) {
                    let undelivered = keys.drain(i * MAX_ITEMS_PER_UPLOAD..);
                    failed.extend(undelivered.map(Item::Key));
                    failed.extend(blobs.into_iter().map(Item::Blob));
                    return failed;
                }
            }
        }
        for batch in upload_batches(&blobs) {
            let chunk = &blobs[batch.clone()];
            match self.cp.upload_blobs(chunk).await {
                Ok(_) => {}
                Err(e) if e.is_unreachable() || is_server_error(&e) => {
                    log_failure("blobs", &e);
                    failed.extend(blobs.drain(batch.start..).map(Item::Blob));
                    return failed;
                }
                Err(e) => {
                    // One bad blob must not block the rest: retry one by one, drop refusals.
                    log_failure("blobs", &e);
                    for b in chunk {
                        if let Err(e) = self.cp.upload_blobs(std::slice::from_ref(b)).await {
                            tracing::error!(agent = %b.agent_id, seq = b.seq, error = %e, "blob refused by the control plane; dropped");
                        }
                    }
                }
            }
        }
        failed
    }

    fn spool_has_files(&self) -> bool {
        self.spool
            .as_deref()
            .and_then(|d| std::fs::read_dir(d).ok())
            .is_some_and(|mut entries| entries.next().is_some())
    }

    /// Writes undelivered items to the spool; returns what could not be written.
    fn spool_out(&mut self, items: Vec<Item>) -> Vec<Item> {
        let Some(dir) = &self.spool else {
            return items;
        };
        let mut left = Vec::new();
        for item in items {
            let (name, json) = match &item {
                Item::Blob(b) => (
                    format!("blob.{}.{}.json", b.agent_id, b.seq),
                    serde_json::to_vec(b),
                ),
                Item::Key(k) => (
                    format!("key.{}.{}.{}.json", k.agent_id, k.epoch, k.key_id),
                    serde_json::to_vec(k),
                ),
            };
            let written = json
                .map_err(std::io::Error::other)
                .and_then(|bytes| write_atomic(&dir.join(&name), &bytes));
            match written {
                Ok(()) => self.spooled = true,
                Err(e) => {
                    tracing::error!(file = %name, error = %e, "cannot spool an upload; keeping it in memory");
                    left.push(item);
                }
            }
        }
        left
    }

    /// Ships spooled files, keys before blobs, deleting each once delivered or refused.
    /// Returns whether the spool is empty now.
    async fn ship_spool(&self) -> bool {
        let Some(dir) = &self.spool else { return true };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("key."))
        });
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let item = if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("key."))
            {
                serde_json::from_slice(&bytes).map(Item::Key)
            } else {
                serde_json::from_slice(&bytes).map(Item::Blob)
            };
            let Ok(item) = item else {
                tracing::error!(file = %path.display(), "unreadable spool file; removed");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if !self.ship(vec![item]).await.is_empty() {
                return false;
            }
            let _ = std::fs::remove_file(&path);
        }
        true
    }
}

/// Splits blobs into calls the control plane accepts: at most [`MAX_ITEMS_PER_UPLOAD`] blobs
/// and [`MAX_UPLOAD_BYTES`] of base64 each (a bigger blob goes on its own).
fn upload_batches(blobs: &[BlobUpload]) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < blobs.len() {
        let mut end = start;
        let mut size = 0;
        while end < blobs.len()
            && end - start < MAX_ITEMS_PER_UPLOAD
            && (end == start || size + blobs[end].data.len() <= MAX_UPLOAD_BYTES)
        {
            size += blobs[end].data.len();
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

fn is_server_error(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| s.is_server_error() || s.as_u16() == 401 || s.as_u16() == 403)
}

fn log_failure(what: &str, e: &ClientError) {
    tracing::warn!(error = %e, "uploading {what} failed");
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::StampKind;

    fn blob(seq: u64, bytes: usize) -> BlobUpload {
        BlobUpload {
            agent_id: crate::AgentId::generate("test").unwrap(),
            seq,
            kind: StampKind::Request,
            data: "A".repeat(bytes),
        }
    }

    fn covered_in_order(batches: &[Range<usize>], n: usize) -> bool {
        batches.first().is_none_or(|b| b.start == 0)
            && batches.windows(2).all(|w| w[0].end == w[1].start)
            && batches.last().map_or(0, |b| b.end) == n
            && batches.iter().all(|b| !b.is_empty())
    }

    #[test]
    fn many_small_blobs_go_in_calls_of_at_most_the_item_limit() {
        let blobs: Vec<_> = (0..3000).map(|i| blob(i, 1500)).collect();
        let batches = upload_batches(&blobs);
        assert!(covered_in_order(&batches, blobs.len()));
        assert_eq!(batches.len(), 3);
        assert!(batches.iter().all(|b| b.len() <= MAX_ITEMS_PER_UPLOAD));
    }

    #[test]
    fn large_blobs_go_in_calls_of_at_most_the_byte_limit_and_a_huge_one_alone() {
        let mut blobs: Vec<_> = (0..5).map(|i| blob(i, 3 * 1024 * 1024)).collect();
        blobs.insert(2, blob(99, MAX_UPLOAD_BYTES + 1));
        let batches = upload_batches(&blobs);
        assert!(covered_in_order(&batches, blobs.len()));
        for b in &batches {
            let bytes: usize = blobs[b.clone()].iter().map(|x| x.data.len()).sum();
            assert!(
                b.len() == 1 || bytes <= MAX_UPLOAD_BYTES,
                "{b:?}: {bytes} bytes"
            );
        }
        assert!(
            batches.contains(&(2..3)),
            "the huge blob goes alone: {batches:?}"
        );
        assert!(upload_batches(&[]).is_empty());
    }
}
