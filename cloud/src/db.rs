//! The SQLite file: where it lives, how it is opened, its schema, and the account row.
//!
//! One file, `ledger.db` in the data directory (0700; the file 0600, and SQLite gives its
//! `-wal`/`-shm` companions the same mode). WAL journal with `synchronous=FULL`: a commit is
//! on disk when it returns. Only the ledger writer thread writes agents, stamps, blobs, keys
//! and alerts; readers open their own read-only connections.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::Error;
use crate::keys::KeyHashes;

pub(crate) const DB_FILE: &str = "ledger.db";
const LOCK_FILE: &str = "server.lock";
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE account (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    account_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    admin_key_hash BLOB NOT NULL,
    gateway_key_hash BLOB NOT NULL,
    public_key TEXT,
    verification_hash TEXT,
    key_id TEXT
);
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    provider TEXT,
    created_ms INTEGER NOT NULL,
    genesis_hash BLOB,
    genesis_expires_ms INTEGER,
    public_key BLOB,
    lock_reason TEXT,
    frozen_reason TEXT,
    breaker_reason TEXT,
    budget INTEGER,
    used INTEGER NOT NULL DEFAULT 0,
    head_seq INTEGER NOT NULL DEFAULT 0,
    head_hash BLOB NOT NULL,
    last_seen_ms INTEGER,
    sentinel_config TEXT NOT NULL,
    sentinel_state BLOB
);
CREATE TABLE stamps (
    agent INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    ref_seq INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    status INTEGER NOT NULL,
    blob_hash BLOB,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL, -- empty: covered by the next signed stamp of its batch
    verdict TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, seq)
) WITHOUT ROWID;
CREATE TABLE blobs (
    agent INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE TABLE wrapped_keys (
    agent INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, epoch, key_id)
) WITHOUT ROWID;
CREATE INDEX wrapped_keys_by_key_id ON wrapped_keys (key_id);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"#;

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

/// Creates the data directory (0700) if it is missing.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::DataDir {
            path: dir.to_owned(),
            source,
        })
}

/// Holds the data directory for one server process (released when dropped).
pub(crate) struct DirLock(#[allow(dead_code)] std::fs::File);

/// Opens `path` for writing, creating it 0600 (whatever the umask) if it is missing.
fn open_private(path: &Path) -> Result<std::fs::File, Error> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::DataDir {
            path: path.to_owned(),
            source,
        })
}

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, Error> {
    let path = dir.join(LOCK_FILE);
    let file = open_private(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy(dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::DataDir { path, source }),
    }
}

fn open_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Open {
        path: path.to_owned(),
        source,
    }
}

/// Opens (creating when asked) the database for writing, with the durability pragmas.
pub(crate) fn open_rw(dir: &Path, create: bool) -> Result<Connection, Error> {
    let path = db_path(dir);
    if create {
        // Create the file ourselves so it is 0600 whatever the umask; SQLite gives the WAL and
        // shared-memory files the same mode.
        open_private(&path)?;
    } else if !path.exists() {
        return Err(Error::NoAccount(dir.to_owned()));
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err(&path))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(open_err(&path))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err(&path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err(&path))?;
    conn.set_prepared_statement_cache_capacity(64);
    migrate(&conn, &path)?;
    Ok(conn)
}

/// The checkpoint thread's connection: it writes only the database file, from the WAL, and
/// syncs the WAL before copying and the database file after (`synchronous=FULL`).
pub(crate) fn open_checkpointer(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err(path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err(path))?;
    Ok(conn)
}

/// A read-only connection (admin listings, stamp pages, blobs).
pub(crate) fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), Error> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
            Ok(())
        }
        SCHEMA_VERSION => Ok(()),
        found => Err(Error::Schema {
            path: path.to_owned(),
            found,
        }),
    }
}

/// The account row: id and key hashes.
pub(crate) fn load_account(conn: &Connection) -> rusqlite::Result<Option<(String, KeyHashes)>> {
    conn.query_row(
        "SELECT account_id, admin_key_hash, gateway_key_hash FROM account WHERE id = 1",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                KeyHashes {
                    admin: r.get(1)?,
                    gateway: r.get(2)?,
                },
            ))
        },
    )
    .optional()
}

pub(crate) fn insert_account(
    conn: &Connection,
    account_id: &str,
    now_ms: u64,
    hashes: &KeyHashes,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO account (id, account_id, created_ms, admin_key_hash, gateway_key_hash) \
         VALUES (1, ?1, ?2, ?3, ?4)",
        params![account_id, now_ms as i64, hashes.admin, hashes.gateway],
    )?;
    Ok(())
}

pub(crate) fn set_gateway_hash(conn: &Connection, hash: &[u8; 32]) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE account SET gateway_key_hash = ?1 WHERE id = 1",
        params![hash],
    )
}
