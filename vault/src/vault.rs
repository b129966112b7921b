//! The vault: open, read, write, create, recover.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::crypto;
use crate::env;
use crate::error::Error;
use crate::format::{
    self, DeviceSlot, EntryRecord, KeyStoreKind, MAX_FILE_BYTES, PASSPHRASE_KDF, PassphraseKdf,
    RECOVERY_KDF, RecoverySlot, SealedKey, Slots, VERSION, VaultFile,
};
use crate::fsio;
use crate::keystore::{self, KeyStorePreference};
use crate::machine;
use crate::names;
use crate::secret::{Key32, Passphrase, RecoveryCode};

/// The vault file inside the vault directory.
pub const VAULT_FILE: &str = "vault.json";
/// The lock file writers hold (a separate file, so the rename of the vault file cannot
/// break the lock).
pub const LOCK_FILE: &str = "vault.lock";

/// The vault directory: `$LIBERTY_HOME`, else `$XDG_DATA_HOME/liberty`, else
/// `~/.local/share/liberty`.
pub fn default_home() -> PathBuf {
    if let Some(home) = keystore::non_empty_var(env::LIBERTY_HOME) {
        return home;
    }
    let data = keystore::non_empty_var(env::XDG_DATA_HOME).unwrap_or_else(|| {
        std::env::home_dir()
            .unwrap_or_default()
            .join(".local/share")
    });
    data.join("liberty")
}

/// How to unlock the device slot.
#[derive(Debug)]
pub enum Unlock {
    /// With this machine's device secret alone (vaults without a passphrase).
    Machine,
    /// With the device secret and the passphrase. Also opens vaults without a passphrase
    /// (the passphrase is then unused), so callers can pass one whenever they have it.
    Passphrase(Passphrase),
}

impl Unlock {
    /// `Passphrase` when `LIBERTY_PASSPHRASE` is set and not empty, else `Machine`.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var(env::LIBERTY_PASSPHRASE) {
            Ok(p) if !p.is_empty() => Ok(Unlock::Passphrase(Passphrase::new(p.into())?)),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Unlock::Machine),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidPassphrase {
                reason: "LIBERTY_PASSPHRASE is not valid UTF-8",
            }),
        }
    }
}

/// Options for [`Vault::init`].
#[derive(Debug, Default)]
pub struct InitOptions {
    /// Require this passphrase, in addition to the machine, to open the vault.
    pub passphrase: Option<Passphrase>,
    /// Where to keep the device secret.
    pub key_store: KeyStorePreference,
}

/// Options for [`Vault::recover`].
#[derive(Debug, Default)]
pub struct RecoverOptions {
    /// The passphrase the re-bound vault will require (`None`: none).
    pub passphrase: Option<Passphrase>,
    /// Where to keep the new device secret.
    pub key_store: KeyStorePreference,
}

/// An entry's name and times; never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub name: String,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Whether this machine can open the vault, as far as can be told without a passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The device key unlocked the vault.
    Opens,
    /// The machine matches and the device key is present; the passphrase was not checked.
    MatchesPassphraseNotChecked,
    /// The vault was bound on another machine.
    OtherMachine,
    /// The device key is not in its store.
    KeyMissing,
    /// The device key is there but does not open the vault, or could not be read.
    KeyFails(String),
}

impl Binding {
    /// True when nothing stands in the way of opening the vault here.
    pub fn is_ok(&self) -> bool {
        matches!(self, Binding::Opens | Binding::MatchesPassphraseNotChecked)
    }
}

/// What `liberty status` shows; no secret in it.
#[derive(Debug, Clone)]
pub struct Status {
    pub path: PathBuf,
    pub vault_id: String,
    pub format_version: u32,
    pub key_store: KeyStoreKind,
    /// Where the device secret is kept, in words (a path for the key file).
    pub key_location: String,
    pub passphrase: bool,
    pub entries: usize,
    pub binding: Binding,
}

/// An open (unlocked) vault. Reads come from the snapshot taken at open (or at the last
/// write); each write locks, re-reads the file and merges, so concurrent writers lose nothing.
pub struct Vault {
    home: PathBuf,
    path: PathBuf,
    file: VaultFile,
    key: Key32,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("entries", &self.file.entries.len())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// True when a vault file exists in `home`.
    pub fn exists(home: &Path) -> bool {
        home.join(VAULT_FILE).symlink_metadata().is_ok()
    }

    /// Creates a vault in `home` (made 0700 if missing) and returns it with its recovery code,
    /// which the caller must show the user exactly once. Fails if a vault is already there.
    pub fn init(home: &Path, options: InitOptions) -> Result<(Vault, RecoveryCode), Error> {
        keystore::check_key_dir_outside(home, options.key_store)?;
        fsio::ensure_private_dir(home)?;
        let _lock = fsio::lock_exclusive(&home.join(LOCK_FILE))?;
        let path = home.join(VAULT_FILE);
        if path.symlink_metadata().is_ok() {
            return Err(Error::VaultExists { path });
        }
        let vault_id: [u8; 16] = crypto::random_array()?;
        let key = Key32::random()?;
        let (slots, code) = new_slots(&vault_id, &key, options.passphrase, options.key_store)?;
        let file = VaultFile {
            magic: format::MAGIC.to_owned(),
            version: u64::from(VERSION),
            vault_id,
            created: now_secs(),
            slots,
            entries: BTreeMap::new(),
        };
        fsio::write_atomic(&path, &file.to_bytes())?;
        let home = home.to_owned();
        Ok((
            Vault {
                home,
                path,
                file,
                key,
            },
            code,
        ))
    }

    /// Opens the vault in `home` with this machine's device key (and the passphrase, if the
    /// vault has one). Takes no lock and writes nothing.
    pub fn open(home: &Path, unlock: Unlock) -> Result<Vault, Error> {
        let path = home.join(VAULT_FILE);
        let file = read_file(&path)?;
        let key = unlock_device(&path, &file, &unlock)?;
        Ok(Vault {
            home: home.to_owned(),
            path,
            file,
            key,
        })
    }

    /// Opens the vault in [`default_home`], with the passphrase from `LIBERTY_PASSPHRASE` when
    /// the vault has one.
    pub fn open_default() -> Result<Vault, Error> {
        Vault::open(&default_home(), Unlock::from_env()?)
    }

    /// Re-binds the vault to this machine with its recovery code: a new vault key (every
    /// entry re-encrypted), a new device secret, and a new recovery code (returned; the old
    /// one stops working).
    pub fn recover(
        home: &Path,
        code: &RecoveryCode,
        options: RecoverOptions,
    ) -> Result<(Vault, RecoveryCode), Error> {
        keystore::check_key_dir_outside(home, options.key_store)?;
        let path = home.join(VAULT_FILE);
        let _lock = fsio::lock_exclusive(&home.join(LOCK_FILE))?;
        let old = read_file(&path)?;
        let slot = &old.slots.recovery;
        let kek = recovery_kek(&old.vault_id, slot, code);
        let old_key = crypto::open(
            &kek,
            &format::recovery_aad(&old.vault_id, slot),
            &slot.sealed.nonce,
            &slot.sealed.ciphertext,
        )
        .ok_or_else(|| Error::WrongRecoveryCode { path: path.clone() })?;
        let old_key = key_from_bytes(&old_key);
        let mut plain = Vec::with_capacity(old.entries.len());
        for (name, entry) in &old.entries {
            plain.push((
                name,
                entry,
                decrypt_entry(&path, &old, &old_key, name, entry)?,
            ));
        }
        let key = Key32::random()?;
        let (slots, new_code) =
            new_slots(&old.vault_id, &key, options.passphrase, options.key_store)?;
        let mut file = VaultFile {
            slots,
            entries: BTreeMap::new(),
            ..old.clone()
        };
        for (name, entry, value) in plain {
            let mut record =
                encrypt_entry(&file.vault_id, &key, name, value.expose_secret().as_bytes())?;
            record.created = entry.created;
            record.updated = entry.updated;
            file.entries.insert(name.clone(), record);
        }
        fsio::remove_stale_temps(home);
        fsio::write_atomic(&path, &file.to_bytes())?;
        if file.slots.device.store == KeyStoreKind::Keyring {
            keystore::remove_file_copy(&file.vault_id_hex());
        }
        Ok((
            Vault {
                home: home.to_owned(),
                path,
                file,
                key,
            },
            new_code,
        ))
    }

    /// Describes the vault in `home` without a passphrase and without printing or returning
    /// any secret.
    pub fn inspect(home: &Path) -> Result<Status, Error> {
        let path = home.join(VAULT_FILE);
        let file = read_file(&path)?;
        let slot = &file.slots.device;
        let id = file.vault_id_hex();
        let binding = match unlock_device(&path, &file, &Unlock::Machine) {
            Ok(_) => Binding::Opens,
            Err(Error::PassphraseRequired { .. }) => Binding::MatchesPassphraseNotChecked,
            Err(Error::WrongMachine { .. }) => Binding::OtherMachine,
            Err(Error::DeviceKeyMissing { .. }) => Binding::KeyMissing,
            Err(e) => Binding::KeyFails(e.to_string()),
        };
        Ok(Status {
            path,
            key_store: slot.store,
            key_location: keystore::location(slot.store, &id),
            vault_id: id,
            format_version: VERSION,
            passphrase: slot.passphrase.is_some(),
            entries: file.entries.len(),
            binding,
        })
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vault directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The vault's random id (hex), which also names its device key.
    pub fn id(&self) -> String {
        self.file.vault_id_hex()
    }

    /// Whether opening needs a passphrase.
    pub fn has_passphrase(&self) -> bool {
        self.file.slots.device.passphrase.is_some()
    }

    /// Where the device secret is kept.
    pub fn key_store(&self) -> KeyStoreKind {
        self.file.slots.device.store
    }

    /// The value of `name`, or `None` when there is no such entry.
    pub fn get(&self, name: &str) -> Result<Option<SecretString>, Error> {
        names::validate(name)?;
        match self.file.entries.get(name) {
            None => Ok(None),
            Some(entry) => decrypt_entry(&self.path, &self.file, &self.key, name, entry).map(Some),
        }
    }

    /// Whether an entry named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.file.entries.contains_key(name)
    }

    /// Entry names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.file.entries.keys().cloned().collect()
    }

    /// Entry names and times, sorted by name. Never values.
    pub fn list(&self) -> Vec<EntryInfo> {
        self.file
            .entries
            .iter()
            .map(|(name, e)| EntryInfo {
                name: name.clone(),
                created: UNIX_EPOCH + Duration::from_secs(e.created),
                updated: UNIX_EPOCH + Duration::from_secs(e.updated),
            })
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.file.entries.len()
    }

    /// True when the vault holds no entry.
    pub fn is_empty(&self) -> bool {
        self.file.entries.is_empty()
    }

    /// Every entry decrypted, sorted by name; fails if any entry fails its integrity check.
    pub fn entries(&self) -> Result<Vec<(String, SecretString)>, Error> {
        self.file
            .entries
            .iter()
            .map(|(name, e)| {
                decrypt_entry(&self.path, &self.file, &self.key, name, e).map(|v| (name.clone(), v))
            })
            .collect()
    }

    /// Sets `name` to `value`, replacing any previous value.
    pub fn set(&mut self, name: &str, value: &SecretString) -> Result<(), Error> {
        self.put(&[(name, value)], true)
    }

    /// Adds `name`; fails with [`Error::EntryExists`] if it is already there (checked under
    /// the write lock, so two racing creators cannot both succeed).
    pub fn create(&mut self, name: &str, value: &SecretString) -> Result<(), Error> {
        self.put(&[(name, value)], false)
    }

    /// Sets several entries in one atomic write: all or none. With `replace` false, fails
    /// (writing nothing) if any name already exists.
    pub fn set_many(
        &mut self,
        items: &[(String, SecretString)],
        replace: bool,
    ) -> Result<(), Error> {
        let refs: Vec<(&str, &SecretString)> = items.iter().map(|(n, v)| (n.as_str(), v)).collect();
        self.put(&refs, replace)
    }

    fn put(&mut self, items: &[(&str, &SecretString)], replace: bool) -> Result<(), Error> {
        for (name, value) in items {
            names::validate(name)?;
            names::validate_value(name, value.expose_secret())?;
        }
        self.modify(|file, key, path| {
            if !replace
                && let Some((name, _)) = items.iter().find(|(n, _)| file.entries.contains_key(*n))
            {
                return Err(Error::EntryExists {
                    name: (*name).to_owned(),
                    path: path.to_owned(),
                });
            }
            for (name, value) in items {
                let mut record =
                    encrypt_entry(&file.vault_id, key, name, value.expose_secret().as_bytes())?;
                if let Some(old) = file.entries.get(*name) {
                    record.created = old.created;
                }
                file.entries.insert((*name).to_owned(), record);
            }
            Ok(((), true))
        })
    }

    /// Removes `name`; `Ok(false)` (and no write) when there was no such entry.
    pub fn remove(&mut self, name: &str) -> Result<bool, Error> {
        names::validate(name)?;
        self.modify(|file, _, _| {
            let removed = file.entries.remove(name).is_some();
            Ok((removed, removed))
        })
    }

    /// Re-reads the vault file (to see other processes' writes).
    pub fn reload(&mut self) -> Result<(), Error> {
        let file = read_file(&self.path)?;
        if file.vault_id != self.file.vault_id || file.slots != self.file.slots {
            return Err(Error::Conflict {
                path: self.path.clone(),
            });
        }
        self.file = file;
        Ok(())
    }

    /// The write path: lock, re-read and check the current file, apply `change` to it, and
    /// write it atomically if `change` says so.
    fn modify<T>(
        &mut self,
        change: impl FnOnce(&mut VaultFile, &Key32, &Path) -> Result<(T, bool), Error>,
    ) -> Result<T, Error> {
        let _lock = fsio::lock_exclusive(&self.home.join(LOCK_FILE))?;
        let mut current = read_file(&self.path)?;
        if current.vault_id != self.file.vault_id || current.slots != self.file.slots {
            return Err(Error::Conflict {
                path: self.path.clone(),
            });
        }
        let (out, write) = change(&mut current, &self.key, &self.path)?;
        if write {
            fsio::remove_stale_temps(&self.home);
            fsio::write_atomic(&self.path, &current.to_bytes())?;
        }
        self.file = current;
        Ok(out)
    }
}

fn read_file(path: &Path) -> Result<VaultFile, Error> {
    let bytes = fsio::read_bounded(path, MAX_FILE_BYTES)?.ok_or_else(|| Error::NoVault {
        path: path.to_owned(),
    })?;
    VaultFile::parse(path, &bytes)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key_from_bytes(bytes: &[u8]) -> Key32 {
    let mut key = Key32::zero();
    key.0.copy_from_slice(bytes);
    key
}

/// Builds the device and recovery slots wrapping `key`, storing a new device secret.
fn new_slots(
    vault_id: &[u8; 16],
    key: &Key32,
    passphrase: Option<Passphrase>,
    store: KeyStorePreference,
) -> Result<(Slots, RecoveryCode), Error> {
    let fp = machine::fingerprint()?;
    let secret = Key32::random()?;
    let store = keystore::save(store, &hex::encode(vault_id), &secret)?;
    let pw_kdf = match &passphrase {
        None => None,
        Some(_) => Some(PassphraseKdf {
            kdf: PASSPHRASE_KDF.to_owned(),
            version: 0x13,
            m_kib: crypto::ARGON2_M_KIB,
            t: crypto::ARGON2_T,
            p: crypto::ARGON2_P,
            salt: crypto::random_array()?,
        }),
    };
    let mut device = DeviceSlot {
        store,
        machine: machine::tag(vault_id, &fp),
        salt: crypto::random_array()?,
        passphrase: pw_kdf,
        sealed: SealedKey::default(),
    };
    let pw_key = match (&device.passphrase, &passphrase) {
        (Some(k), Some(p)) => Some(
            crypto::argon2id(p.expose_secret().as_bytes(), &k.salt, k.m_kib, k.t, k.p).map_err(
                |_| Error::InvalidPassphrase {
                    reason: "Argon2id could not process it",
                },
            )?,
        ),
        _ => None,
    };
    let kek = device_kek(vault_id, &device, &fp, &secret, pw_key.as_ref());
    device.sealed = seal_key(&kek, &format::device_aad(vault_id, &device), key)?;

    let code = RecoveryCode::generate()?;
    let mut recovery = RecoverySlot {
        kdf: RECOVERY_KDF.to_owned(),
        salt: crypto::random_array()?,
        sealed: SealedKey::default(),
    };
    let kek = recovery_kek(vault_id, &recovery, &code);
    recovery.sealed = seal_key(&kek, &format::recovery_aad(vault_id, &recovery), key)?;
    Ok((Slots { device, recovery }, code))
}

fn seal_key(kek: &Key32, aad: &[u8], key: &Key32) -> Result<SealedKey, Error> {
    let (nonce, ciphertext) = crypto::seal(kek, aad, &*key.0)?;
    Ok(SealedKey {
        nonce,
        ciphertext: ciphertext.try_into().expect("32-byte key + tag"),
    })
}

/// KEK of the device slot: HKDF-SHA256 over the device secret (and the Argon2id output of the
/// passphrase, if any), salted per slot, with the machine fingerprint and the slot's AAD in
/// the info.
fn device_kek(
    vault_id: &[u8; 16],
    slot: &DeviceSlot,
    fingerprint: &[u8; 32],
    secret: &Key32,
    passphrase_key: Option<&Key32>,
) -> Key32 {
    let mut ikm = Zeroizing::new(Vec::with_capacity(64));
    ikm.extend_from_slice(&*secret.0);
    if let Some(p) = passphrase_key {
        ikm.extend_from_slice(&*p.0);
    }
    let info = crypto::encode_fields(&[
        b"liberty v1 device kek",
        fingerprint,
        &format::device_aad(vault_id, slot),
    ]);
    crypto::hkdf(&slot.salt, &ikm, &info)
}

/// KEK of the recovery slot: HKDF-SHA256 over the 160-bit code (high entropy, so no slow KDF).
fn recovery_kek(vault_id: &[u8; 16], slot: &RecoverySlot, code: &RecoveryCode) -> Key32 {
    let info = crypto::encode_fields(&[
        b"liberty v1 recovery kek",
        &format::recovery_aad(vault_id, slot),
    ]);
    crypto::hkdf(&slot.salt, code.bytes(), &info)
}

fn unlock_device(path: &Path, file: &VaultFile, unlock: &Unlock) -> Result<Key32, Error> {
    let slot = &file.slots.device;
    let fp = machine::fingerprint()?;
    if machine::tag(&file.vault_id, &fp) != slot.machine {
        return Err(Error::WrongMachine {
            path: path.to_owned(),
        });
    }
    let id = file.vault_id_hex();
    let secret = keystore::load(slot.store, &id)?.ok_or_else(|| Error::DeviceKeyMissing {
        path: path.to_owned(),
        location: keystore::location(slot.store, &id),
    })?;
    let pw_key = match (&slot.passphrase, unlock) {
        (None, _) => None,
        (Some(_), Unlock::Machine) => {
            return Err(Error::PassphraseRequired {
                path: path.to_owned(),
            });
        }
        (Some(k), Unlock::Passphrase(p)) => Some(
            crypto::argon2id(p.expose_secret().as_bytes(), &k.salt, k.m_kib, k.t, k.p)
                .map_err(|reason| Error::corrupt(path, reason))?,
        ),
    };
    let kek = device_kek(&file.vault_id, slot, &fp, &secret, pw_key.as_ref());
    match crypto::open(
        &kek,
        &format::device_aad(&file.vault_id, slot),
        &slot.sealed.nonce,
        &slot.sealed.ciphertext,
    ) {
        Some(key) => Ok(key_from_bytes(&key)),
        None if slot.passphrase.is_some() => Err(Error::WrongPassphrase {
            path: path.to_owned(),
        }),
        None => Err(Error::Integrity {
            path: path.to_owned(),
            what: format!(
                "the device key slot (or the device key in {} does not belong to it)",
                keystore::location(slot.store, &id)
            ),
        }),
    }
}

fn encrypt_entry(
    vault_id: &[u8; 16],
    key: &Key32,
    name: &str,
    value: &[u8],
) -> Result<EntryRecord, Error> {
    let (nonce, ciphertext) = crypto::seal(key, &format::entry_aad(vault_id, name), value)?;
    let now = now_secs();
    Ok(EntryRecord {
        created: now,
        updated: now,
        nonce,
        ciphertext,
    })
}

fn decrypt_entry(
    path: &Path,
    file: &VaultFile,
    key: &Key32,
    name: &str,
    entry: &EntryRecord,
) -> Result<SecretString, Error> {
    let integrity = || Error::Integrity {
        path: path.to_owned(),
        what: format!("entry `{name}`"),
    };
    let plain = crypto::open(
        key,
        &format::entry_aad(&file.vault_id, name),
        &entry.nonce,
        &entry.ciphertext,
    )
    .ok_or_else(integrity)?;
    let text = std::str::from_utf8(&plain).map_err(|_| integrity())?;
    // Exact capacity, so turning it into a boxed str does not reallocate and leave a copy.
    let mut value = String::with_capacity(text.len());
    value.push_str(text);
    Ok(SecretString::from(value))
}
