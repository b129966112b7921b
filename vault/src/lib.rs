//! Liberty: a secrets vault bound to the machine.
//!
//! A random 256-bit vault key encrypts every entry with AES-256-GCM-SIV (a fresh random nonce
//! per write; the AAD binds format, version, vault id and entry name). The vault key is
//! wrapped twice, as LUKS does with key slots:
//!
//! - the **device slot**: HKDF-SHA256 over a random 32-byte device secret kept in the OS
//!   keyring or in a 0600 key file outside the vault directory (and over the Argon2id output
//!   of the passphrase, when the vault has one), with the machine fingerprint in the info;
//! - the **recovery slot**: HKDF-SHA256 over a 160-bit recovery code shown once at `init`.
//!
//! Every slot's parameters are in its AAD, so nothing can be downgraded. Reads take no lock
//! and never write; writes lock, re-read, merge, and replace the file atomically.
//!
//! ```no_run
//! use liberty_vault::Vault;
//! use secrecy::{ExposeSecret, SecretString};
//!
//! let mut vault = Vault::open_default()?;
//! vault.set("OPENAI_API_KEY", &SecretString::from("sk-..."))?;
//! if let Some(key) = vault.get("OPENAI_API_KEY")? {
//!     assert!(key.expose_secret().starts_with("sk-"));
//! }
//! # Ok::<(), liberty_vault::Error>(())
//! ```
//!
//! This library never prints; its errors name files and entries, never values.

mod crypto;
pub mod dotenv;
pub mod env;
mod error;
mod format;
mod fsio;
mod keystore;
mod machine;
mod names;
mod secret;
mod vault;

pub use error::{Error, ErrorKind};
pub use format::{KeyStoreKind, MAX_VALUE_BYTES};
pub use keystore::{KeyStorePreference, key_dir};
pub use names::{validate as validate_name, validate_value};
pub use secrecy::{ExposeSecret, SecretString};
pub use secret::{Passphrase, RecoveryCode};
pub use vault::{
    Binding, EntryInfo, InitOptions, LOCK_FILE, RecoverOptions, Status, Unlock, VAULT_FILE, Vault,
    default_home,
};

impl std::fmt::Display for KeyStoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyStoreKind::File => "key file",
            KeyStoreKind::Keyring => "OS keyring",
        })
    }
}
