//! LockStock control plane: the ledger every gateway stamps into.
//!
//! It keeps the account and its two API keys, the agents (locks, budgets, Sentinel), every
//! agent's signed hash chain of stamps, the sealed transcript blobs and the wrapped data keys,
//! in one SQLite file, and serves them over the `/v1` JSON API documented in `docs/api.md`.
//!
//! Entry points: [`Account::init`] creates the account (once) and returns the keys;
//! [`serve`] runs the API on a bound listener until a shutdown future resolves.
//! The library never prints; the `lockstock-cloud` binary is a thin shell over it.

mod admin;
mod checkpoint;
pub mod cli;
mod clock;
mod db;
mod error;
mod keys;
mod ledger;
mod read;
mod routes;
mod sentinel;
mod server;
mod state;
mod verify;

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::Error;
pub use keys::GENESIS_TOKEN_PREFIX;
pub use read::MAX_PAGE;
pub use routes::{BLOBS_LIMIT, JSON_LIMIT};
pub use server::{Server, ServerConfig, TlsFiles, serve};

/// Where the control plane listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4100";

/// `$XDG_DATA_HOME/lockstock-cloud`, else `~/.local/share/lockstock-cloud`.
pub fn default_data_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(base.join("lockstock-cloud"))
}

/// The keys `init` creates. Shown once; only their hashes are stored.
pub struct InitKeys {
    pub account_id: String,
    pub admin_key: SecretString,
    pub gateway_key: SecretString,
}

impl std::fmt::Debug for InitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitKeys")
            .field("account_id", &self.account_id)
            .field("admin_key", &"****")
            .field("gateway_key", &"****")
            .finish()
    }
}

/// The account stored in a data directory.
#[derive(Debug)]
pub struct Account;

impl Account {
    /// Creates the data directory (0700), the database (0600) and the account with a fresh
    /// admin key and gateway key. Refuses when an account already exists there.
    pub fn init(data_dir: &Path) -> Result<InitKeys, Error> {
        db::prepare_dir(data_dir)?;
        let mut conn = db::open_rw(data_dir, true)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if db::load_account(&tx)?.is_some() {
            return Err(Error::AccountExists(data_dir.to_owned()));
        }
        let account_id = keys::new_account_id();
        let admin_key = keys::new_admin_key();
        let gateway_key = keys::new_gateway_key();
        let hashes = keys::KeyHashes {
            admin: keys::hash_secret(admin_key.expose_secret()),
            gateway: keys::hash_secret(gateway_key.expose_secret()),
        };
        db::insert_account(&tx, &account_id, SystemClock.now_ms(), &hashes)?;
        tx.commit()?;
        Ok(InitKeys {
            account_id,
            admin_key,
            gateway_key,
        })
    }

    /// Whether `data_dir` holds an account.
    pub fn exists(data_dir: &Path) -> Result<bool, Error> {
        if !db::db_path(data_dir).exists() {
            return Ok(false);
        }
        let conn = db::open_rw(data_dir, false)?;
        Ok(db::load_account(&conn)?.is_some())
    }

    /// Replaces the gateway key; the old one stops working (a running server notices within
    /// a second). Returns the new key.
    pub fn rotate_gateway_key(data_dir: &Path) -> Result<SecretString, Error> {
        let conn = db::open_rw(data_dir, false)?;
        if db::load_account(&conn)?.is_none() {
            return Err(Error::NoAccount(data_dir.to_owned()));
        }
        let key = keys::new_gateway_key();
        db::set_gateway_hash(&conn, &keys::hash_secret(key.expose_secret()))?;
        Ok(key)
    }
}
