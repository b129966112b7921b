//! The crate's one error type. Messages name the file or entry involved, never a secret value.

use std::path::PathBuf;

/// What went wrong, coarsely: for callers that map errors to exit codes or HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No vault exists at the path.
    NoVault,
    /// `init` found a vault already there.
    VaultExists,
    /// The named entry does not exist.
    EntryNotFound,
    /// The named entry exists and replacing it was not allowed.
    EntryExists,
    /// A name, value, passphrase, recovery code or import file was not acceptable.
    InvalidInput,
    /// The vault file cannot be parsed, or is too large, or has the wrong format version.
    Corrupt,
    /// An authenticated ciphertext failed to verify: the file was modified or damaged.
    Integrity,
    /// The vault is bound to another machine, or this machine's device key is missing.
    WrongMachine,
    /// The vault needs a passphrase and none was given.
    PassphraseRequired,
    /// The passphrase or recovery code given does not open the vault.
    WrongCredential,
    /// Another process re-keyed the vault while this one was working; retry.
    Conflict,
    /// The OS keyring failed.
    KeyStore,
    /// A file-system operation failed.
    Io,
    /// The platform could not supply randomness or a machine id.
    Platform,
}

/// Everything that can fail in the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no vault at {path}\n  hint: create one with `liberty init`")]
    NoVault { path: PathBuf },

    #[error("a vault already exists at {path}; refusing to overwrite it")]
    VaultExists { path: PathBuf },

    #[error("no entry named `{name}` in {path}\n  hint: `liberty list` shows the names")]
    EntryNotFound { name: String, path: PathBuf },

    #[error("an entry named `{name}` already exists in {path}\n  hint: pass --force to replace it")]
    EntryExists { name: String, path: PathBuf },

    #[error(
        "invalid name `{name}`: names start with a letter or `_` and contain only letters, digits and `_` (like OPENAI_API_KEY)"
    )]
    InvalidName { name: String },

    #[error("invalid value for `{name}`: {reason}")]
    InvalidValue { name: String, reason: String },

    #[error("invalid passphrase: {reason}")]
    InvalidPassphrase { reason: &'static str },

    #[error("that is not a recovery code: {reason}")]
    MalformedRecoveryCode { reason: String },

    #[error("{path}:{line}: {reason}; nothing was imported")]
    Dotenv {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("{path} is not a valid vault file: {reason}; it was left unchanged")]
    Corrupt { path: PathBuf, reason: String },

    #[error(
        "{path} has vault format version {found}; this liberty reads version {supported} (upgrade liberty); it was left unchanged"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },

    #[error(
        "integrity check failed for {what} in {path}: the file was modified or damaged; it was left unchanged"
    )]
    Integrity { path: PathBuf, what: String },

    #[error(
        "the vault {path} is bound to a different machine\n  hint: on this machine, run `liberty recover` with the recovery code printed by `liberty init`"
    )]
    WrongMachine { path: PathBuf },

    #[error(
        "the device key for {path} is missing (looked in {location})\n  hint: run `liberty recover` with the recovery code printed by `liberty init`"
    )]
    DeviceKeyMissing { path: PathBuf, location: String },

    #[error("{path} needs its passphrase: set {var}, pass --passphrase-fd N, or run in a terminal to be asked", var = crate::env::LIBERTY_PASSPHRASE)]
    PassphraseRequired { path: PathBuf },

    #[error("wrong passphrase for {path}")]
    WrongPassphrase { path: PathBuf },

    #[error("that recovery code does not open {path}")]
    WrongRecoveryCode { path: PathBuf },

    #[error(
        "{path} was re-keyed by another process (liberty recover?) while this one ran; nothing was written, run the command again"
    )]
    Conflict { path: PathBuf },

    #[error("the OS keyring failed while {action}: {detail}")]
    KeyStore {
        action: &'static str,
        detail: String,
    },

    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the key directory {key_dir} is inside the vault directory {home}: copying the vault would copy its key; set LIBERTY_KEY_DIR to a directory outside it"
    )]
    KeyDirInsideVault { key_dir: PathBuf, home: PathBuf },

    #[error("cannot read this machine's id (/etc/machine-id): {detail}")]
    MachineId { detail: String },

    #[error("the operating system's random number generator failed")]
    Random,

    #[error(
        "{what} is not set, so the default location cannot be found; set {what} or {alternative}"
    )]
    NoHome {
        what: &'static str,
        alternative: &'static str,
    },
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoVault { .. } => ErrorKind::NoVault,
            Error::VaultExists { .. } => ErrorKind::VaultExists,
            Error::EntryNotFound { .. } => ErrorKind::EntryNotFound,
            Error::EntryExists { .. } => ErrorKind::EntryExists,
            Error::InvalidName { .. }
            | Error::InvalidValue { .. }
            | Error::InvalidPassphrase { .. }
            | Error::MalformedRecoveryCode { .. }
            | Error::Dotenv { .. }
            | Error::KeyDirInsideVault { .. } => ErrorKind::InvalidInput,
            Error::Corrupt { .. } | Error::UnsupportedVersion { .. } => ErrorKind::Corrupt,
            Error::Integrity { .. } => ErrorKind::Integrity,
            Error::WrongMachine { .. } | Error::DeviceKeyMissing { .. } => ErrorKind::WrongMachine,
            Error::PassphraseRequired { .. } => ErrorKind::PassphraseRequired,
            Error::WrongPassphrase { .. } | Error::WrongRecoveryCode { .. } => {
                ErrorKind::WrongCredential
            }
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::KeyStore { .. } => ErrorKind::KeyStore,
            Error::Io { .. } | Error::NoHome { .. } => ErrorKind::Io,
            Error::MachineId { .. } | Error::Random => ErrorKind::Platform,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
