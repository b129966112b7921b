//! Where the device secret lives: the OS keyring or a 0600 key file outside the vault
//! directory. The vault header records which, so reads go straight there.

use std::fs;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::env;
use crate::error::Error;
use crate::format::KeyStoreKind;
use crate::fsio;
use crate::secret::Key32;

const KEYRING_SERVICE: &str = "liberty";
const KEY_FILE_TAG: &str = "liberty-device-key-v1";

/// Which store `init` and `recover` should use for the device secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStorePreference {
    /// The OS keyring if a Secret Service answers and keeps what it is given; else the key file.
    #[default]
    Auto,
    /// Always the key file.
    File,
    /// Only the OS keyring; fail when it is unavailable.
    Keyring,
}

impl KeyStorePreference {
    /// From `LIBERTY_KEY_STORE` (`auto`, `file`, `keyring`); unset or empty means `Auto`.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var(env::LIBERTY_KEY_STORE).as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(Self::Auto),
            Ok("file") => Ok(Self::File),
            Ok("keyring") => Ok(Self::Keyring),
            Ok(_) => Err(Error::InvalidValue {
                name: env::LIBERTY_KEY_STORE.into(),
                reason: "use `auto`, `file` or `keyring`".into(),
            }),
        }
    }
}

/// The directory for key files: `$LIBERTY_KEY_DIR`, else `$XDG_STATE_HOME/liberty/keys`,
/// else `~/.local/state/liberty/keys`.
pub fn key_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = non_empty_var(env::LIBERTY_KEY_DIR) {
        return Ok(dir);
    }
    let state = match non_empty_var(env::XDG_STATE_HOME) {
        Some(s) => s,
        None => std::env::home_dir()
            .filter(|h| !h.as_os_str().is_empty())
            .ok_or(Error::NoHome {
                what: env::HOME,
                alternative: env::LIBERTY_KEY_DIR,
            })?
            .join(".local/state"),
    };
    Ok(state.join("liberty").join("keys"))
}

pub(crate) fn non_empty_var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub(crate) fn key_file_path(vault_id_hex: &str) -> Result<PathBuf, Error> {
    Ok(key_dir()?.join(format!("{vault_id_hex}.key")))
}

/// A human description of where the secret is kept.
pub(crate) fn location(kind: KeyStoreKind, vault_id_hex: &str) -> String {
    match kind {
        KeyStoreKind::File => match key_file_path(vault_id_hex) {
            Ok(p) => format!("key file {}", p.display()),
            Err(_) => "key file (location unknown: HOME is not set)".into(),
        },
        KeyStoreKind::Keyring => {
            format!(
                "OS keyring (Secret Service; service `{KEYRING_SERVICE}`, user `{vault_id_hex}`)"
            )
        }
    }
}

/// Refuses a key directory inside the vault directory (unless the keyring alone is used).
pub(crate) fn check_key_dir_outside(home: &Path, pref: KeyStorePreference) -> Result<(), Error> {
    if pref == KeyStorePreference::Keyring {
        return Ok(());
    }
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let (key_dir, home) = (absolute(&key_dir()?), absolute(home));
    if key_dir.starts_with(&home) {
        return Err(Error::KeyDirInsideVault { key_dir, home });
    }
    Ok(())
}

/// Saves the device secret; returns the store that now holds it.
pub(crate) fn save(
    pref: KeyStorePreference,
    vault_id_hex: &str,
    secret: &Key32,
) -> Result<KeyStoreKind, Error> {
    match pref {
        KeyStorePreference::File => save_file(vault_id_hex, secret).map(|()| KeyStoreKind::File),
        KeyStorePreference::Keyring => {
            save_keyring(vault_id_hex, secret).map(|()| KeyStoreKind::Keyring)
        }
        KeyStorePreference::Auto => match save_keyring(vault_id_hex, secret) {
            Ok(()) => Ok(KeyStoreKind::Keyring),
            Err(_) => save_file(vault_id_hex, secret).map(|()| KeyStoreKind::File),
        },
    }
}

/// Loads the device secret from the store the vault names. `Ok(None)` when it is not there.
pub(crate) fn load(kind: KeyStoreKind, vault_id_hex: &str) -> Result<Option<Key32>, Error> {
    match kind {
        KeyStoreKind::File => load_file(vault_id_hex),
        KeyStoreKind::Keyring => load_keyring(vault_id_hex),
    }
}

fn save_file(vault_id_hex: &str, secret: &Key32) -> Result<(), Error> {
    let path = key_file_path(vault_id_hex)?;
    fsio::ensure_private_dir(path.parent().unwrap_or(Path::new(".")))?;
    let text = Zeroizing::new(format!(
        "{KEY_FILE_TAG} {vault_id_hex} {}\n",
        hex::encode(*secret.0)
    ));
    fsio::write_atomic(&path, text.as_bytes())
}

fn load_file(vault_id_hex: &str) -> Result<Option<Key32>, Error> {
    let path = key_file_path(vault_id_hex)?;
    let Some(bytes) = fsio::read_bounded(&path, 4096)? else {
        return Ok(None);
    };
    let bytes = Zeroizing::new(bytes);
    let bad = || Error::corrupt(&path, "it is not a Liberty device key file for this vault");
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let mut parts = text.split_ascii_whitespace();
    if parts.next() != Some(KEY_FILE_TAG) || parts.next() != Some(vault_id_hex) {
        return Err(bad());
    }
    let mut key = Key32::zero();
    hex::decode_to_slice(parts.next().ok_or_else(bad)?, key.0.as_mut()).map_err(|_| bad())?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(Some(key))
}

/// Removes a key file (used when a keyring save replaced it, or by tests).
pub(crate) fn remove_file_copy(vault_id_hex: &str) {
    if let Ok(path) = key_file_path(vault_id_hex) {
        let _ = fs::remove_file(path);
    }
}

fn keyring_entry(vault_id_hex: &str, action: &'static str) -> Result<keyring::Entry, Error> {
    keyring::Entry::new(KEYRING_SERVICE, vault_id_hex).map_err(|e| Error::KeyStore {
        action,
        detail: e.to_string(),
    })
}

fn save_keyring(vault_id_hex: &str, secret: &Key32) -> Result<(), Error> {
    let action = "saving the device key";
    keyring_entry(vault_id_hex, action)?
        .set_secret(secret.0.as_ref())
        .map_err(|e| Error::KeyStore {
            action,
            detail: e.to_string(),
        })?;
    // Read it back through a fresh entry: a store that silently keeps nothing (a mock, or a
    // session-only store) must not become the only copy of the device secret.
    match load_keyring(vault_id_hex)? {
        Some(back) if back.0 == secret.0 => Ok(()),
        _ => Err(Error::KeyStore {
            action,
            detail: "the keyring did not return what was stored".into(),
        }),
    }
}

fn load_keyring(vault_id_hex: &str) -> Result<Option<Key32>, Error> {
    let action = "reading the device key";
    match keyring_entry(vault_id_hex, action)?.get_secret() {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let mut key = Key32::zero();
            if bytes.len() != 32 {
                return Err(Error::KeyStore {
                    action,
                    detail: "the stored device key has the wrong length".into(),
                });
            }
            key.0.copy_from_slice(&bytes);
            Ok(Some(key))
        }
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(Error::KeyStore {
            action,
            detail: e.to_string(),
        }),
    }
}
