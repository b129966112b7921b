//! Ships sealed blobs and wrapped data keys to the control plane, off the request path.
//!
//! Uploads are queued in memory and sent in batches by one task. When the control plane
//! cannot be reached they are written to a spool directory (they are ciphertext already) and
//! shipped when it returns, so a transcript is not lost to an outage or a restart. The task
//! waits a moment after the first item so uploads go in batches (they are off the request
//! path); at shutdown the gateway waits for everything queued to be delivered or spooled.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::{BlobUpload, WrappedKey};
use crate::client::{ClientError, ControlPlane};
use crate::stamper::Outstanding;

/// Most bytes of base64 sent in one blob upload call.
const MAX_UPLOAD_BYTES: usize = 8 * 1024 * 1024;
const RETRY_EVERY: Duration = Duration::from_secs(2);
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
}

impl Uploads {
    /// Starts the upload task. `spool`: where uploads wait while the control plane is away
    /// (`None` keeps them in memory only).
    pub fn start(cp: ControlPlane, spool: Option<PathBuf>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let outstanding = Arc::new(Outstanding::default());
        let worker = Worker {
            cp,
            spool,
            spooled: false,
            outstanding: outstanding.clone(),
        };
        tokio::spawn(worker.run(rx));
        Self { tx, outstanding }
    }

    pub fn blob(&self, blob: BlobUpload) {
        self.queue(Item::Blob(blob));
    }

    pub fn key(&self, key: WrappedKey) {
        self.queue(Item::Key(key));
    }

    fn queue(&self, item: Item) {
        self.outstanding.add(1);
        if self.tx.send(item).is_err() {
            self.outstanding.done(1);
        }
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
            let before = held.len();
            held = self.ship(held).await;
            if !held.is_empty() {
                held = self.spool_out(held);
            }
            // Delivered, refused for good, or on disk: nothing more to wait for at shutdown.
            self.outstanding.done(before - held.len());
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
        if !keys.is_empty()
            && let Err(e) = self.cp.put_keys(keys.clone()).await
        {
            log_failure("wrapped keys", &e);
            if e.is_unreachable() || is_server_error(&e) {
                failed.extend(keys.into_iter().map(Item::Key));
                failed.extend(blobs.into_iter().map(Item::Blob));
                return failed;
            }
        }
        let mut start = 0;
        while start < blobs.len() {
            let mut end = start;
            let mut size = 0;
            while end < blobs.len()
                && (end == start || size + blobs[end].data.len() <= MAX_UPLOAD_BYTES)
            {
                size += blobs[end].data.len();
                end += 1;
            }
            let chunk = &blobs[start..end];
            match self.cp.upload_blobs(chunk).await {
                Ok(_) => {}
                Err(e) if e.is_unreachable() || is_server_error(&e) => {
                    log_failure("blobs", &e);
                    failed.extend(blobs.drain(start..).map(Item::Blob));
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
            start = end;
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
