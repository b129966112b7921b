//! The ledger: the SQLite write connection and the in-memory state, and the threads that
//! group-commit into them.
//!
//! Handlers send the writer thread jobs (closures) over a channel. The writer runs each job in
//! order inside an open transaction and commits it (writing the agents the jobs changed) as
//! soon as the syncer thread is free; the syncer then fdatasyncs the WAL once for the whole
//! group and only then answers every waiter. While one group is being synced the next one
//! gathers, so concurrent appends share one fsync and the writer never waits on the disk.
//! A call made while no other is in flight skips both threads: it commits and syncs its own
//! transaction where it is made (see [`Ledger::run`]).
//! If a group fails to commit or to sync, every job in it gets an error (and the in-memory
//! state is reloaded from the database), so no answer ever runs ahead of the disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use lockstock::AgentId;
use lockstock::api::{StampResult, Verdict};
use lockstock::chain::{Hash32, Head, SignedStamp, StampKind, flags};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::state::{Agent, State};

/// Most jobs folded into one transaction.
const MAX_GROUP: usize = 4096;
/// Jobs that may wait for the writer before handlers wait to enqueue.
const QUEUE: usize = 16 * 1024;

/// Settings the writer applies.
#[derive(Debug, Clone)]
pub(crate) struct LedgerConfig {
    pub reservation_ttl_ms: u64,
    pub default_output_cap: u64,
}

/// What a job sees: the open transaction's connection, the state, the group's time.
pub(crate) struct Ctx<'a> {
    pub conn: &'a Connection,
    pub state: &'a mut State,
    pub now_ms: u64,
    pub cfg: &'a LedgerConfig,
    failed: bool,
}

/// A job's failure: a refusal (nothing was written) or a database error (the group fails).
#[derive(Debug)]
pub(crate) enum JobError {
    Api(ApiError),
    Db(rusqlite::Error),
}

impl From<ApiError> for JobError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<rusqlite::Error> for JobError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

type Completion = Box<dyn FnOnce(bool) + Send>;
type Job = Box<dyn for<'a> FnOnce(&mut Ctx<'a>) -> Completion + Send>;

/// What the writer's queue carries: work, or the syncer saying it is free again.
enum Msg {
    Job(Job),
    Wake,
}

/// The write connection and the state it mirrors. The writer thread holds it while it runs
/// jobs or commits; between groups a handler may take it to run a lone job itself.
struct Core {
    conn: Connection,
    state: State,
    /// The state may disagree with the database (a transaction failed): reload before use.
    stale: bool,
}

impl Core {
    /// Writes the agents the group changed and commits. On failure the transaction is rolled
    /// back and the state marked stale.
    fn commit(&mut self) -> bool {
        let ok = match self.state.flush(&self.conn) {
            Err(e) => {
                tracing::error!(error = %e, "cannot write agent state");
                false
            }
            Ok(()) => match run_cached(&self.conn, "COMMIT") {
                Err(e) => {
                    tracing::error!(error = %e, "ledger commit failed");
                    false
                }
                Ok(()) => true,
            },
        };
        if !ok {
            self.roll_back();
        }
        ok
    }

    fn roll_back(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.stale = true;
    }
}

/// Runs a statement that returns no rows from the statement cache. Transaction control goes
/// through it: parsing "BEGIN IMMEDIATE" and "COMMIT" afresh for every group cost 2 % of the
/// control plane's CPU on lone calls.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    match core.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            // A job panicked: its transaction may be open and the state half-changed.
            let mut guard = poisoned.into_inner();
            guard.roll_back();
            core.clear_poison();
            guard
        }
    }
}

/// The WAL file and a cached handle to it, for fdatasync.
struct Wal {
    path: PathBuf,
    file: Option<(std::fs::File, u64)>,
}

impl Wal {
    fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// fdatasync, through a handle that is reopened if the file was replaced.
    fn sync(&mut self) -> bool {
        match sync_file(&self.path, &mut self.file) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "fsync of the ledger WAL failed");
                self.file = None;
                false
            }
        }
    }
}

/// Counts calls between entering [`Ledger::run`] and getting their answer.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Enters a call; true when no other call was in flight.
    fn enter(calls: &'a AtomicUsize) -> (Self, bool) {
        let alone = calls.fetch_add(1, Ordering::SeqCst) == 0;
        (Self(calls), alone)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handle to the writer thread; clones share it.
#[derive(Clone)]
pub(crate) struct Ledger {
    tx: mpsc::Sender<Msg>,
    core: Arc<Mutex<Core>>,
    /// The WAL as lone calls sync it (the syncer thread has its own handle).
    wal: Arc<Mutex<Wal>>,
    calls: Arc<AtomicUsize>,
    sync: Arc<SyncState>,
    clock: Arc<dyn Clock>,
    cfg: Arc<LedgerConfig>,
}

impl Ledger {
    /// Starts the writer and syncer threads. They stop, after answering everything queued,
    /// when every [`Ledger`] handle is dropped; the handle joins both.
    ///
    /// `conn` must be in WAL mode; `wal` is its `-wal` file, which the syncer and lone calls
    /// fsync.
    pub fn start(
        conn: Connection,
        state: State,
        clock: Arc<dyn Clock>,
        cfg: LedgerConfig,
        wal: PathBuf,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let sync = Arc::new(SyncState::default());
        sync.idle.store(true, Ordering::Release);
        let syncer = {
            let sync = sync.clone();
            let wake = tx.downgrade();
            let wal = wal.clone();
            std::thread::Builder::new()
                .name("ledger-sync".into())
                .spawn(move || syncer(Wal::new(wal), sync_rx, &sync, &wake))?
        };
        let core = Arc::new(Mutex::new(Core {
            conn,
            state,
            stale: false,
        }));
        let cfg = Arc::new(cfg);
        let handle = {
            let (core, clock, cfg, sync) = (core.clone(), clock.clone(), cfg.clone(), sync.clone());
            std::thread::Builder::new()
                .name("ledger-writer".into())
                .spawn(move || {
                    writer(&core, rx, &*clock, &cfg, sync_tx, &sync);
                    if syncer.join().is_err() {
                        tracing::error!("the ledger syncer thread panicked");
                    }
                })?
        };
        Ok((
            Self {
                tx,
                core,
                wal: Arc::new(Mutex::new(Wal::new(wal))),
                calls: Arc::default(),
                sync,
                clock,
                cfg,
            },
            handle,
        ))
    }

    /// Runs `f` in the ledger; its answer arrives once its transaction is committed and the
    /// WAL synced to disk (or a 503 if that failed). A call made while no other is in flight
    /// runs on the calling thread, blocking it for the commit and the fsync (see
    /// [`Ledger::run_alone`]).
    pub async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&mut Ctx<'a>) -> Result<T, JobError> + Send + 'static,
    {
        let (_call, alone) = InFlight::enter(&self.calls);
        let f = match alone {
            true => match self.run_alone(f) {
                Ok(answer) => return answer,
                Err(f) => f,
            },
            false => f,
        };
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job(job(f, tx)))
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Like [`Ledger::run`], from a thread outside the async runtime; the answer goes to `reply`.
    pub fn submit_blocking<T, F>(&self, f: F, reply: oneshot::Sender<Result<T, ApiError>>)
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&mut Ctx<'a>) -> Result<T, JobError> + Send + 'static,
    {
        // If the writer is gone the job is dropped with `reply`, which the caller sees.
        let _ = self.tx.blocking_send(Msg::Job(job(f, reply)));
    }

    /// Runs `f` on the calling thread, in a transaction of its own, when no other call is
    /// in flight and the writer holds nothing open. A lone call then crosses no thread: on a
    /// small VM each hand-off to the writer, to the syncer and back (a futex wake, an
    /// interrupt to the other core) costs more than the SQLite work and the fdatasync, which
    /// hold this thread for a few hundred microseconds instead. Calls that overlap go to the
    /// writer and share its group commits. Gives `f` back when the ledger is busy.
    fn run_alone<T, F>(&self, f: F) -> Result<Result<T, ApiError>, F>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&mut Ctx<'a>) -> Result<T, JobError> + Send + 'static,
    {
        if self.tx.capacity() < self.tx.max_capacity() || !self.sync.idle.load(Ordering::SeqCst) {
            return Err(f);
        }
        let Ok(mut guard) = self.core.try_lock() else {
            return Err(f);
        };
        let core = &mut *guard;
        if core.stale || !core.conn.is_autocommit() {
            return Err(f);
        }
        if let Err(e) = run_cached(&core.conn, "BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a ledger transaction");
            core.stale = true;
            return Ok(Err(unwritten()));
        }
        let (tx, mut rx) = oneshot::channel();
        let mut ctx = Ctx {
            conn: &core.conn,
            state: &mut core.state,
            now_ms: self.clock.now_ms(),
            cfg: &self.cfg,
            failed: false,
        };
        let done = job(f, tx)(&mut ctx);
        let committed = if ctx.failed {
            core.roll_back();
            false
        } else {
            core.commit()
        };
        // Calls that arrive meanwhile can gather in the writer's next group.
        drop(guard);
        let durable = committed && lock_wal(&self.wal).sync();
        done(durable);
        Ok(rx.try_recv().unwrap_or_else(|_| Err(unwritten())))
    }
}

fn lock_wal(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    // Nothing in a panic leaves the handle wrong; at worst it is reopened.
    wal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unwritten() -> ApiError {
    ApiError::unavailable(
        "the ledger could not write this request to disk; retry (retries are safe)",
    )
}

pub(crate) fn shutting_down() -> ApiError {
    ApiError::unavailable("the control plane is shutting down")
}

/// Wraps `f` so that its answer reaches `reply` only once it is durable.
fn job<T, F>(f: F, reply: oneshot::Sender<Result<T, ApiError>>) -> Job
where
    T: Send + 'static,
    F: for<'a> FnOnce(&mut Ctx<'a>) -> Result<T, JobError> + Send + 'static,
{
    Box::new(move |ctx| {
        let out = if ctx.failed {
            None
        } else {
            match f(ctx) {
                Ok(v) => Some(Ok(v)),
                Err(JobError::Api(e)) => Some(Err(e)),
                Err(JobError::Db(e)) => {
                    tracing::error!(error = %e, "ledger write failed; the transaction will be rolled back");
                    ctx.failed = true;
                    None
                }
            }
        };
        Box::new(move |durable| {
            let answer = match out {
                Some(r) if durable => r,
                _ => Err(unwritten()),
            };
            let _ = reply.send(answer);
        })
    })
}

/// Most jobs in one transaction while the previous one is still being synced.
const MAX_PENDING: usize = 16 * 1024;

/// The writer: runs jobs into an open transaction and commits it (writing the agents the jobs
/// changed) whenever the syncer is free, so at most one fsync is in flight and the next group
/// gathers meanwhile; then hands the group's answers to the syncer. Commits use
/// `synchronous=NORMAL` (no fsync of their own); durability comes from the syncer's
/// fdatasync of the WAL, which happens before any answer.
fn writer(
    core: &Mutex<Core>,
    mut rx: mpsc::Receiver<Msg>,
    clock: &dyn Clock,
    cfg: &LedgerConfig,
    sync_tx: std::sync::mpsc::Sender<Vec<Completion>>,
    sync: &SyncState,
) {
    // A small runtime of its own, only to wait on the queue with a deadline.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the ledger writer cannot start its timer");
            return;
        }
    };
    let mut jobs: Vec<Job> = Vec::with_capacity(256);
    let mut pending: Vec<Completion> = Vec::with_capacity(256);
    let mut gather = Gather::default();
    let mut in_txn = false;
    let mut closed = false;
    let mut stats = Stats::default();
    let fail = |pending: &mut Vec<Completion>| {
        for done in pending.drain(..) {
            done(false);
        }
    };
    loop {
        gather.on_sync_done(sync, pending.len());
        if !closed && in_txn && gather.syncing && !gather.ready(in_txn, pending.len()) {
            // A committed group waits on the syncer: ask it to wake us when it is free (it
            // does not otherwise, so an idle writer is not woken for nothing after every
            // sync), then look again in case it became free meanwhile.
            sync.writer_waits.store(true, Ordering::SeqCst);
            gather.on_sync_done(sync, pending.len());
        }
        if !closed && !gather.ready(in_txn, pending.len()) {
            let next = match gather.deadline.filter(|_| in_txn && !gather.syncing) {
                Some(deadline) => rt
                    .block_on(async { tokio::time::timeout_at(deadline.into(), rx.recv()).await })
                    .unwrap_or(Some(Msg::Wake)),
                None => rt.block_on(rx.recv()),
            };
            // Before the new job joins the group: if a sync finished while this thread slept,
            // the jobs it answered are what is coming back, the new one among them.
            gather.on_sync_done(sync, pending.len());
            match next {
                Some(Msg::Job(job)) => jobs.push(job),
                Some(Msg::Wake) => {}
                None => closed = true,
            }
        }
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => jobs.push(job),
                Ok(Msg::Wake) => {}
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !jobs.is_empty() {
            let mut guard = lock(core);
            let core = &mut *guard;
            let now_ms = clock.now_ms();
            if core.stale && !in_txn {
                match State::load(&core.conn, now_ms, cfg.reservation_ttl_ms) {
                    Ok(s) => {
                        core.state = s;
                        core.stale = false;
                        tracing::info!("ledger state reloaded from the database");
                    }
                    Err(e) => tracing::error!(
                        error = %lockstock::error_chain(&e),
                        "cannot reload the ledger state"
                    ),
                }
            }
            let mut failed = core.stale;
            if !failed && !in_txn {
                match run_cached(&core.conn, "BEGIN IMMEDIATE") {
                    Ok(()) => in_txn = true,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot begin a ledger transaction");
                        failed = true;
                    }
                }
            }
            let mut ctx = Ctx {
                conn: &core.conn,
                state: &mut core.state,
                now_ms,
                cfg,
                failed,
            };
            stats.jobs += jobs.len() as u64;
            pending.extend(jobs.drain(..).map(|job| job(&mut ctx)));
            if ctx.failed {
                core.roll_back();
                in_txn = false;
                fail(&mut pending);
            }
        }
        gather.on_sync_done(sync, pending.len());
        if in_txn && (closed || gather.ready(in_txn, pending.len())) {
            let start = std::time::Instant::now();
            let ok = lock(core).commit();
            in_txn = false;
            stats.commit(start.elapsed());
            if ok {
                sync.idle.store(false, Ordering::Release);
                gather.handed_over();
                if let Err(lost) = sync_tx.send(std::mem::take(&mut pending)) {
                    fail(&mut { lost.0 });
                }
            } else {
                fail(&mut pending);
            }
        }
        if closed && !in_txn && jobs.is_empty() {
            break;
        }
    }
    drop(sync_tx);
    tracing::debug!("ledger writer stopped");
}

/// What the writer and the syncer share.
#[derive(Default)]
struct SyncState {
    /// No group is being synced.
    idle: AtomicBool,
    /// The writer holds a committed group back until the syncer is free, and waits to hear.
    writer_waits: AtomicBool,
    /// Requests answered by the last sync.
    answered: AtomicUsize,
    /// How long the last sync took.
    last_sync_us: AtomicU64,
}

/// When to commit the next group.
///
/// Requests answered by one sync come back (their clients' next calls) a little later. If the
/// writer committed whatever was queued the moment the syncer became free, the clients would
/// split into two cohorts taking turns, each sync serving half of them. So after a sync the
/// writer waits, briefly, for as many requests as were in flight (those queued plus those just
/// answered), at most half the last sync's duration (0.1–1 ms), before committing.
#[derive(Default)]
struct Gather {
    syncing: bool,
    target: usize,
    deadline: Option<std::time::Instant>,
}

impl Gather {
    fn handed_over(&mut self) {
        *self = Self {
            syncing: true,
            ..Self::default()
        };
    }

    /// Starts gathering once the syncer has finished the group handed to it.
    fn on_sync_done(&mut self, sync: &SyncState, queued: usize) {
        if self.syncing && sync.idle.load(Ordering::SeqCst) {
            self.syncing = false;
            self.target = queued + sync.answered.swap(0, Ordering::AcqRel);
            let wait = (sync.last_sync_us.load(Ordering::Relaxed) / 2).clamp(100, 1000);
            self.deadline =
                Some(std::time::Instant::now() + std::time::Duration::from_micros(wait));
        }
    }

    fn ready(&self, in_txn: bool, queued: usize) -> bool {
        in_txn
            && (queued >= MAX_PENDING
                || !self.syncing
                    && (queued >= self.target
                        || self.deadline.is_none_or(|d| std::time::Instant::now() >= d)))
    }
}

/// The syncer: fdatasyncs the WAL once for every group committed since its last sync, then
/// releases their answers, oldest first.
fn syncer(
    mut wal: Wal,
    rx: std::sync::mpsc::Receiver<Vec<Completion>>,
    sync: &SyncState,
    wake: &mpsc::WeakSender<Msg>,
) {
    let mut stats = Stats::default();
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let start = std::time::Instant::now();
        let durable = wal.sync();
        let took = start.elapsed();
        stats.sync(took);
        let answered: usize = groups.iter().map(Vec::len).sum();
        sync.answered.store(answered, Ordering::Release);
        sync.last_sync_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        sync.idle.store(true, Ordering::SeqCst);
        if sync.writer_waits.swap(false, Ordering::SeqCst)
            && let Some(tx) = wake.upgrade()
        {
            let _ = tx.try_send(Msg::Wake);
        }
        for done in groups.into_iter().flatten() {
            done(durable);
        }
    }
}

/// fdatasync of `path`, through a cached handle that is reopened if the file was replaced.
fn sync_file(path: &Path, file: &mut Option<(std::fs::File, u64)>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let inode = inode_of(path)?;
    if file.as_ref().is_none_or(|(_, ino)| *ino != inode) {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        // The handle's own inode, not `inode`: the file may have been replaced in between.
        // A full stat here costs one inode write (see `inode_of`), once per reopen.
        let ino = f.metadata()?.ino();
        *file = Some((f, ino));
    }
    file.as_ref().expect("just opened").0.sync_data()
}

/// The inode number of `path`, asking the kernel for nothing else.
///
/// A stat that reads the file's times (as `std::fs::metadata` does) tells filesystems with
/// multigrain timestamps (ext4, XFS, btrfs since Linux 6.13) that someone watches them, so
/// the next write gets a fresh fine-grained mtime and dirties the inode. The WAL is written
/// and then synced for every commit: its fdatasync would then write the inode as well as the
/// data, one more device round trip each time (measured on ext4 without a journal: p50
/// 0.27 ms instead of 0.19 ms per sync).
fn inode_of(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `buf` a writable statx buffer
    // that outlives the call; the kernel fills only what the mask asks for.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            0,
            libc::STATX_INO,
            &mut buf,
        )
    };
    if rc == 0 {
        return Ok(buf.stx_ino);
    }
    let err = std::io::Error::last_os_error();
    if matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
        // A kernel before 4.11, or a seccomp profile older than statx, refuses it; a full
        // stat still gives the right answer.
        use std::os::unix::fs::MetadataExt;
        return Ok(std::fs::metadata(path)?.ino());
    }
    Err(err)
}

/// Group-commit figures, logged at debug level every ten seconds.
#[derive(Default)]
struct Stats {
    since: Option<std::time::Instant>,
    jobs: u64,
    events: u64,
    busy: std::time::Duration,
    max: std::time::Duration,
}

impl Stats {
    fn commit(&mut self, took: std::time::Duration) {
        self.event(took, "ledger commits");
    }

    fn sync(&mut self, took: std::time::Duration) {
        self.event(took, "ledger WAL syncs");
    }

    fn event(&mut self, took: std::time::Duration, what: &'static str) {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        self.events += 1;
        self.busy += took;
        self.max = self.max.max(took);
        if since.elapsed() >= std::time::Duration::from_secs(10) {
            tracing::debug!(
                count = self.events,
                jobs = self.jobs,
                avg_us = (self.busy / self.events.max(1) as u32).as_micros() as u64,
                max_us = self.max.as_micros() as u64,
                "{what}"
            );
            *self = Self::default();
        }
    }
}

/// A stamp whose structure and signature the handler has checked (`Ok(hash)`), or why not.
pub(crate) struct Checked {
    pub signed: SignedStamp,
    pub check: Result<Hash32, String>,
}

fn answer(seq: u64, verdict: Verdict, head: Head) -> StampResult {
    StampResult {
        seq,
        verdict,
        duplicate: false,
        head,
    }
}

/// A blob sent with its stamp: `stamp` is the stamp's index in the call, which the handler
/// has matched to the blob (agent, seq, kind and hash).
pub(crate) struct InlineBlob {
    pub stamp: usize,
    pub data: Vec<u8>,
}

/// What an append call did: one answer per stamp, and how many of its blobs were stored.
pub(crate) struct Appended {
    pub results: Vec<StampResult>,
    pub blobs_stored: usize,
}

/// Applies stamps in order, one answer each, then stores the blobs of those appended (a
/// refused stamp's blob is dropped: nothing in the chain commits to it).
pub(crate) fn append(
    ctx: &mut Ctx<'_>,
    stamps: Vec<Checked>,
    blobs: Vec<InlineBlob>,
) -> Result<Appended, JobError> {
    // Where each blob goes, read before the stamps are consumed.
    let targets: Vec<Option<(i64, u64)>> = blobs
        .iter()
        .map(|b| {
            let stamp = &stamps[b.stamp].signed.stamp;
            ctx.state
                .agents
                .get(&stamp.agent_id)
                .map(|a| (a.row, stamp.seq))
        })
        .collect();
    let mut results = Vec::with_capacity(stamps.len());
    for c in stamps {
        results.push(append_one(ctx, c)?);
    }
    let kept = blobs.iter().zip(targets).filter_map(|(b, target)| {
        let (row, seq) = target.filter(|_| results[b.stamp].verdict.appended())?;
        Some((row, seq, b.data.as_slice()))
    });
    let blobs_stored = insert_blobs(ctx, kept)?;
    Ok(Appended {
        results,
        blobs_stored,
    })
}

fn append_one(ctx: &mut Ctx<'_>, c: Checked) -> rusqlite::Result<StampResult> {
    let Ctx {
        conn,
        state,
        now_ms,
        cfg,
        ..
    } = ctx;
    let now_ms = *now_ms;
    let s = &c.signed.stamp;
    let seq = s.seq;
    let Some(agent) = state.agents.get_mut(&s.agent_id) else {
        return Ok(answer(
            seq,
            Verdict::Invalid {
                message: format!("no agent {} exists on this control plane", s.agent_id),
            },
            Head::genesis(&s.agent_id),
        ));
    };
    let hash = match c.check {
        Ok(h) => h,
        Err(message) => return Ok(answer(seq, Verdict::Invalid { message }, agent.head)),
    };
    if agent.key.is_none() {
        return Ok(answer(
            seq,
            Verdict::Invalid {
                message: format!(
                    "agent {} is not activated; activate it with its genesis token first",
                    agent.id
                ),
            },
            agent.head,
        ));
    }
    if seq <= agent.head.seq {
        let stored: Option<([u8; 32], String)> = conn
            .prepare_cached("SELECT hash, verdict FROM stamps WHERE agent = ?1 AND seq = ?2")?
            .query_row(params![agent.row, seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((stored_hash, verdict)) = stored
            && stored_hash == hash.0
        {
            let verdict: Verdict = serde_json::from_str(&verdict).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            return Ok(StampResult {
                seq,
                verdict,
                duplicate: true,
                head: agent.head,
            });
        }
        let why = format!("seq {seq} is already taken by a different stamp");
        return fork(conn, &mut state.dirty, agent, now_ms, seq, &why);
    }
    if seq != agent.head.seq + 1 {
        let why = format!(
            "seq {seq} does not follow the head at seq {}",
            agent.head.seq
        );
        return fork(conn, &mut state.dirty, agent, now_ms, seq, &why);
    }
    if s.prev_hash != agent.head.hash {
        let why = format!(
            "prev_hash does not match the hash of seq {}",
            agent.head.seq
        );
        return fork(conn, &mut state.dirty, agent, now_ms, seq, &why);
    }
    let verdict = match s.kind {
        StampKind::Request => request_verdict(conn, agent, &c.signed, now_ms, cfg)?,
        StampKind::Response => {
            agent.release(s.ref_seq);
            agent.used = agent
                .used
                .saturating_add(s.tokens_in.saturating_add(s.tokens_out));
            agent.expire(now_ms);
            Verdict::Ok {
                grant: None,
                remaining: agent.remaining(),
            }
        }
    };
    insert_stamp(conn, agent.row, &c.signed, &hash, &verdict, now_ms)?;
    agent.head = Head { seq, hash };
    agent.last_seen_ms = Some(now_ms);
    State::touch(&mut state.dirty, agent);
    Ok(answer(seq, verdict, agent.head))
}

/// Refuses a stamp that does not extend the chain, freezes the agent and records an alert
/// (once per freeze).
fn fork(
    conn: &Connection,
    dirty: &mut Vec<AgentId>,
    agent: &mut Agent,
    now_ms: u64,
    seq: u64,
    why: &str,
) -> rusqlite::Result<StampResult> {
    if agent.frozen.is_none() {
        let reason = format!(
            "chain fork at seq {seq}: {why}; the agent is frozen until an admin unlocks it"
        );
        tracing::warn!(agent = %agent.id, seq, "chain fork; agent frozen");
        insert_alert(conn, agent.row, now_ms, &reason)?;
        agent.frozen = Some(reason);
        State::touch(dirty, agent);
    }
    Ok(answer(seq, Verdict::Fork, agent.head))
}

fn request_verdict(
    conn: &Connection,
    agent: &mut Agent,
    signed: &SignedStamp,
    now_ms: u64,
    cfg: &LedgerConfig,
) -> rusqlite::Result<Verdict> {
    let s = &signed.stamp;
    if let Some(reason) = agent.locked_reason() {
        return Ok(Verdict::Locked {
            reason: Some(reason.to_owned()),
        });
    }
    if let Some(reason) = &agent.breaker {
        return Ok(Verdict::Breaker {
            reason: reason.clone(),
        });
    }
    if let Some(reason) = agent.sentinel.observe(now_ms, &agent.sentinel_cfg) {
        tracing::warn!(agent = %agent.id, seq = s.seq, "Sentinel tripped the breaker");
        insert_alert(conn, agent.row, now_ms, &reason)?;
        agent.breaker = Some(reason.clone());
        return Ok(Verdict::Breaker { reason });
    }
    let uncapped = s.flags & flags::UNCAPPED != 0;
    if agent.budget.is_none() {
        return Ok(Verdict::Ok {
            grant: (!uncapped).then_some(s.tokens_out),
            remaining: None,
        });
    }
    agent.expire(now_ms);
    let remaining = agent.remaining().unwrap_or(0);
    let avail = remaining.saturating_sub(s.tokens_in);
    if avail == 0 {
        return Ok(Verdict::Budget);
    }
    let cap = if uncapped {
        cfg.default_output_cap
    } else {
        s.tokens_out
    };
    let grant = cap.min(avail);
    let reserve = s.tokens_in + grant;
    agent.reserve(
        s.seq,
        reserve,
        now_ms.saturating_add(cfg.reservation_ttl_ms),
    );
    Ok(Verdict::Ok {
        grant: Some(grant),
        remaining: Some(remaining - reserve),
    })
}

fn insert_stamp(
    conn: &Connection,
    agent_row: i64,
    signed: &SignedStamp,
    hash: &Hash32,
    verdict: &Verdict,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let s = &signed.stamp;
    let verdict = serde_json::to_string(verdict)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.prepare_cached(
        "INSERT INTO stamps (agent, seq, kind, time_ms, model, tokens_in, tokens_out, ref_seq, \
         flags, status, blob_hash, prev_hash, hash, signature, verdict, recorded_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        agent_row,
        s.seq as i64,
        kind_code(s.kind),
        s.time_ms as i64,
        s.model,
        s.tokens_in as i64,
        s.tokens_out as i64,
        s.ref_seq as i64,
        s.flags,
        s.status,
        s.blob_hash.map(|h| h.0),
        s.prev_hash.0,
        hash.0,
        // Empty when a later stamp of the batch carries the signature.
        signed.signature.as_ref().map_or(&[][..], |s| &s.0[..]),
        verdict,
        now_ms as i64,
    ])?;
    Ok(())
}

pub(crate) fn kind_code(kind: StampKind) -> i64 {
    match kind {
        StampKind::Request => 1,
        StampKind::Response => 2,
    }
}

pub(crate) fn insert_alert(
    conn: &Connection,
    agent_row: i64,
    now_ms: u64,
    reason: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO alerts (agent, time_ms, reason) VALUES (?1, ?2, ?3)")?
        .execute(params![agent_row, now_ms as i64, reason])?;
    Ok(())
}

/// A blob whose base64 the handler decoded and hashed.
pub(crate) struct CheckedBlob {
    pub agent: AgentId,
    pub seq: u64,
    pub kind: StampKind,
    pub data: Vec<u8>,
    pub hash: Hash32,
}

/// Refuses a blob its stamp does not commit to: the stamp is of another kind, or commits to
/// no blob or to other bytes (`committed`: the stamp's `blob_hash`).
pub(crate) fn check_commitment(
    b: &CheckedBlob,
    same_kind: bool,
    committed: Option<[u8; 32]>,
) -> Result<(), ApiError> {
    if !same_kind {
        return Err(ApiError::bad_request(format!(
            "the stamp at seq {} of agent {} is not a {} stamp",
            b.seq,
            b.agent,
            b.kind.as_str()
        )));
    }
    match committed {
        None => Err(ApiError::bad_request(format!(
            "the stamp at seq {} of agent {} commits to no blob",
            b.seq, b.agent
        ))),
        Some(h) if h != b.hash.0 => Err(ApiError::bad_request(format!(
            "the blob for seq {} of agent {} does not match the SHA-256 its stamp commits to",
            b.seq, b.agent
        ))),
        Some(_) => Ok(()),
    }
}

/// Stores blobs committed to by existing stamps; all or nothing.
pub(crate) fn store_blobs(ctx: &mut Ctx<'_>, blobs: Vec<CheckedBlob>) -> Result<usize, JobError> {
    let mut rows = Vec::with_capacity(blobs.len());
    for b in &blobs {
        let Some(agent) = ctx.state.agents.get(&b.agent) else {
            return Err(ApiError::not_found(format!("no agent {} exists", b.agent)).into());
        };
        let stamp: Option<(i64, Option<[u8; 32]>)> = ctx
            .conn
            .prepare_cached("SELECT kind, blob_hash FROM stamps WHERE agent = ?1 AND seq = ?2")?
            .query_row(params![agent.row, b.seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((kind, committed)) = stamp else {
            return Err(ApiError::conflict(format!(
                "agent {} has no stamp at seq {}; append the stamp before its blob",
                b.agent, b.seq
            ))
            .into());
        };
        check_commitment(b, kind == kind_code(b.kind), committed)?;
        rows.push(agent.row);
    }
    let rows = blobs
        .iter()
        .zip(rows)
        .map(|(b, row)| (row, b.seq, b.data.as_slice()));
    insert_blobs(ctx, rows)?;
    Ok(blobs.len())
}

/// Stores blobs by (agent row, seq); storing one again is a no-op. Returns how many it was
/// given.
fn insert_blobs<'b>(
    ctx: &Ctx<'_>,
    blobs: impl Iterator<Item = (i64, u64, &'b [u8])>,
) -> rusqlite::Result<usize> {
    let mut stmt = ctx.conn.prepare_cached(
        "INSERT OR IGNORE INTO blobs (agent, seq, data, stored_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut n = 0;
    for (row, seq, data) in blobs {
        stmt.execute(params![row, seq as i64, data, ctx.now_ms as i64])?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;
    use crate::clock::SystemClock;
    use crate::db;

    #[test]
    fn the_wal_handle_follows_the_file_when_it_is_replaced_and_reports_when_it_is_gone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db-wal");
        std::fs::write(&path, b"first").unwrap();
        assert_eq!(
            inode_of(&path).unwrap(),
            std::fs::metadata(&path).unwrap().ino()
        );
        let mut handle = None;
        sync_file(&path, &mut handle).unwrap();
        let first = handle.as_ref().unwrap().1;

        // SQLite deletes the WAL when its last connection closes and makes a new one later.
        std::fs::remove_file(&path).unwrap();
        let err = sync_file(&path, &mut handle).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        // The old handle keeps the deleted inode alive, so the new file cannot reuse its number.
        std::fs::write(&path, b"second").unwrap();
        sync_file(&path, &mut handle).unwrap();
        let second = handle.as_ref().unwrap().1;
        assert_ne!(first, second, "the handle still points at the deleted file");
        assert_eq!(second, std::fs::metadata(&path).unwrap().ino());
    }

    /// A ledger on a fresh database, with a scratch table `t` for jobs to write.
    fn ledger() -> (tempfile::TempDir, Ledger, JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open_rw(dir.path(), true).unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER NOT NULL)")
            .unwrap();
        let state = State::load(&conn, 0, 1000).unwrap();
        let cfg = LedgerConfig {
            reservation_ttl_ms: 1000,
            default_output_cap: 100,
        };
        let wal = dir.path().join(format!("{}-wal", db::DB_FILE));
        let (ledger, writer) = Ledger::start(conn, state, Arc::new(SystemClock), cfg, wal).unwrap();
        (dir, ledger, writer)
    }

    fn insert(ctx: &mut Ctx<'_>, x: i64) -> Result<String, JobError> {
        ctx.conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
        Ok(std::thread::current().name().unwrap_or("?").to_owned())
    }

    async fn rows(ledger: &Ledger) -> i64 {
        ledger
            .run(|ctx| {
                Ok(ctx
                    .conn
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_call_runs_where_it_is_made_and_overlapping_calls_share_the_writer() {
        let (_dir, ledger, _writer) = ledger();
        let here = tokio::spawn({
            let ledger = ledger.clone();
            async move {
                let me = std::thread::current().name().unwrap_or("?").to_owned();
                (me, ledger.run(|ctx| insert(ctx, 1)).await.unwrap())
            }
        });
        let (caller, ran_on) = here.await.unwrap();
        assert_eq!(ran_on, caller, "a lone call crosses no thread");

        // While one call holds the ledger, others queue for the writer and go in together.
        let started = Arc::new(AtomicBool::new(false));
        let slow = tokio::spawn({
            let (ledger, started) = (ledger.clone(), started.clone());
            async move {
                ledger
                    .run(move |ctx| {
                        started.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        insert(ctx, 2)
                    })
                    .await
                    .unwrap()
            }
        });
        while !started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let queued: Vec<_> = (0..8)
            .map(|i| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.run(move |ctx| insert(ctx, 10 + i)).await })
            })
            .collect();
        assert_ne!(slow.await.unwrap(), "ledger-writer");
        for q in queued {
            assert_eq!(q.await.unwrap().unwrap(), "ledger-writer");
        }
        assert_eq!(rows(&ledger).await, 10);
    }

    #[tokio::test]
    async fn a_lone_call_that_fails_or_panics_leaves_nothing_behind() {
        let (_dir, ledger, _writer) = ledger();
        let failed = ledger
            .run(|ctx| {
                insert(ctx, 1)?;
                ctx.conn
                    .execute("INSERT INTO no_such_table VALUES (1)", [])?;
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            rows(&ledger).await,
            0,
            "the failed call's first row is rolled back"
        );

        let panicked = tokio::spawn({
            let ledger = ledger.clone();
            async move {
                ledger
                    .run(|ctx| -> Result<(), JobError> {
                        insert(ctx, 2)?;
                        panic!("a job that panics mid-transaction");
                    })
                    .await
            }
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
        assert_eq!(
            rows(&ledger).await,
            0,
            "the panicked call's row is rolled back"
        );
        let me = std::thread::current().name().unwrap_or("?").to_owned();
        assert_eq!(ledger.run(|ctx| insert(ctx, 3)).await.unwrap(), me);
        assert_eq!(rows(&ledger).await, 1);
    }
}
