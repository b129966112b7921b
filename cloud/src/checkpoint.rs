//! Checkpoints the ledger's WAL into the database file on a thread of its own.
//!
//! SQLite's automatic checkpoint runs on the connection that commits: the ledger writer would
//! stop for each one (copying about a thousand pages and fsyncing the database file, 5-12 ms
//! under load) while every append waited behind it, which made most of the ledger's latency
//! tail. Instead the writer's commit hook wakes this thread once the WAL holds
//! [`Thresholds::wake`] frames, and the thread runs PASSIVE checkpoints from its own connection
//! while the writer goes on. Once a checkpoint has caught up, the writer's next transaction
//! starts the WAL over from its beginning, so the file keeps its size and is overwritten in
//! place. A PASSIVE checkpoint never waits for the writer and may fall behind under constant
//! writes: past [`Thresholds::force`] frames the writer checkpoints itself, as SQLite would.
//!
//! Durability does not change: a commit is durable once the ledger's syncer has fsynced the
//! WAL; a checkpoint syncs the WAL before it copies and the database file after.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode};

use crate::Error;

/// When the WAL is checkpointed, in frames (pages) since it last started over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    /// Wake the checkpoint thread (SQLite's own default: 1,000 pages, about 4 MiB).
    pub wake: u32,
    /// The thread has fallen this far behind: the writer checkpoints before it goes on.
    pub force: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            wake: 1_000,
            force: 10_000,
        }
    }
}

#[derive(Default)]
struct Shared {
    requested: AtomicBool,
    stop: AtomicBool,
    /// Checkpoints the thread started, and finished.
    begun: AtomicU64,
    passes: AtomicU64,
    /// Checkpoints the writer had to run itself.
    forced: AtomicU64,
}

/// The checkpoint thread; stopped and joined when dropped.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thresholds: Thresholds,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a connection of its own to the ledger database (see
    /// [`crate::db::open_checkpointer`]).
    pub fn start(conn: Connection, thresholds: Thresholds) -> Result<Self, Error> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ledger-checkpoint".into())
                .spawn(move || run(&conn, &shared))
                .map_err(Error::Listen)?
        };
        Ok(Self {
            shared,
            thresholds,
            thread: Some(thread),
        })
    }

    /// Replaces SQLite's automatic checkpoint on the writer's connection with this thread.
    pub fn attach(&self, writer: &mut Connection) -> rusqlite::Result<()> {
        let shared = self.shared.clone();
        let thread = self
            .thread
            .as_ref()
            .expect("the thread runs until drop")
            .thread()
            .clone();
        let Thresholds { wake, force } = self.thresholds;
        writer.wal_hook(Some(move |wal: &mut Wal, frames: c_int| {
            let frames = u32::try_from(frames).unwrap_or(0);
            if frames >= force {
                shared.forced.fetch_add(1, Ordering::Relaxed);
                // Errors stay here: the commit has happened whatever this returns, and an error
                // would only make the writer think it had not. Busy means the thread is mid-pass;
                // the next commit asks again.
                match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    Err(e) if e.sqlite_error_code() != Some(ErrorCode::DatabaseBusy) => {
                        tracing::warn!(error = %e, frames, "the ledger writer's own WAL checkpoint failed");
                    }
                    _ => {}
                }
            } else if frames >= wake && !shared.requested.swap(true, Ordering::AcqRel) {
                thread.unpark();
            }
            Ok(())
        }))
    }

    /// Checkpoints run by the thread, and by the writer because the thread fell behind.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.passes.load(Ordering::Relaxed),
            self.shared.forced.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("the ledger checkpoint thread panicked");
            }
        }
        let (passes, forced) = self.counts();
        tracing::debug!(passes, forced, "ledger checkpoints");
    }
}

fn run(conn: &Connection, shared: &Shared) {
    loop {
        while !shared.requested.load(Ordering::Acquire) {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park();
        }
        // Counted before the request is cleared, so that no request pending and as many passes
        // finished as begun means the thread is idle. A commit that asks between the two
        // lines is covered by the pass about to start.
        shared.begun.fetch_add(1, Ordering::AcqRel);
        shared.requested.store(false, Ordering::Release);
        // Returns (busy, frames in the WAL, frames checkpointed); a busy or partial pass is
        // fine, the next commit past the threshold asks again.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
        shared.passes.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::db;

    const PAGE: u64 = 4096;

    fn open(dir: &Path) -> Connection {
        let conn = Connection::open(dir.join("t.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
        )
        .unwrap();
        conn
    }

    /// A WAL database in a fresh directory with a checkpoint thread attached.
    fn attached(wake: u32, force: u32) -> (tempfile::TempDir, Connection, Checkpointer) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path());
        let conn_cp = db::open_checkpointer(&dir.path().join("t.db")).unwrap();
        let cp = Checkpointer::start(conn_cp, Thresholds { wake, force }).unwrap();
        cp.attach(&mut conn).unwrap();
        (dir, conn, cp)
    }

    fn wal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("t.db-wal")).map_or(0, |m| m.len())
    }

    /// Commits `n` transactions of four rows of 1 KiB each.
    fn write(conn: &Connection, from: i64, n: i64) {
        for i in from..from + n {
            let tx = conn.unchecked_transaction().unwrap();
            for j in 0..4 {
                tx.execute(
                    "INSERT INTO t (id, data) VALUES (?1, ?2)",
                    rusqlite::params![i * 4 + j, vec![i as u8; 1024]],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
    }

    /// Waits until the thread has finished more than `passes` checkpoints and is idle. A wait
    /// on the thread, not a timing assertion: the deadline only keeps a broken thread from
    /// hanging the test.
    fn wait_for_pass(cp: &Checkpointer, passes: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let shared = &cp.shared;
        loop {
            let idle = !shared.requested.load(Ordering::Acquire)
                && shared.begun.load(Ordering::Acquire) == shared.passes.load(Ordering::Acquire);
            let (now, _) = cp.counts();
            if idle && now > passes {
                return now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the thread was woken but never checkpointed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn the_thread_checkpoints_and_the_wal_starts_over_instead_of_growing() {
        let (dir, conn, cp) = attached(64, 100_000);
        // Rounds of 100 transactions (at least 100 pages, past the wake threshold of 64), each
        // followed by a wait for the thread to finish. The WAL starts over only when a writer
        // begins after a pass has caught up; pacing the writes instead made the test depend on
        // the machine (a thread starved on a busy CI machine never caught up with the writer:
        // the forced checkpoint's case, tested below).
        let mut passes = 0;
        for round in 0..24 {
            write(&conn, round * 100, 100);
            passes = wait_for_pass(&cp, passes);
        }
        let (_, forced) = cp.counts();
        assert_eq!(forced, 0);
        let copied = std::fs::metadata(dir.path().join("t.db")).unwrap().len();
        assert!(
            copied > 1_000 * PAGE,
            "only {copied} bytes reached the database file"
        );
        // 2,400 transactions wrote at least 2,400 pages; had the WAL never started over it
        // would hold them all (the file never shrinks, so its length is its high-water mark).
        let wal = wal_len(dir.path());
        assert!(
            wal < 1_000 * (PAGE + 24),
            "the WAL grew to {wal} bytes: it never started over"
        );
        drop(cp);
        drop(conn);
        let conn = open(dir.path());
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 9_600);
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_writer_that_outruns_the_thread_checkpoints_itself() {
        let (dir, conn, cp) = attached(1_000_000, 100);
        write(&conn, 0, 1_000);
        let (passes, forced) = cp.counts();
        assert_eq!(passes, 0, "the thread was never woken");
        assert!(forced > 0);
        let wal = wal_len(dir.path());
        assert!(wal < 4 * 100 * (PAGE + 24), "the WAL grew to {wal} bytes");
    }
}
