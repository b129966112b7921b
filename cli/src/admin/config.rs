//! Where the admin tools get the control plane's address and their keys: a flag (with a
//! warning, since argv is readable by every user of the machine), then the environment (so
//! `liberty exec -- lockstock-audit …` works), then Liberty, then the default address.
//!
//! The gateway CLI resolves its own settings the same way (`lockstock-gateway`'s
//! `settings.rs`); this module is the part both could share.

use liberty_vault::{ExposeSecret, SecretString, Vault};
use lockstock::client::ControlPlane;
use lockstock::env;
use lockstock::seal::AccountKey;
use zeroize::Zeroizing;

pub use lockstock::env::{LOCKSTOCK_ACCOUNT_KEY_NEXT, LOCKSTOCK_ACCOUNT_PUBLIC_KEY};

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    Liberty(&'static str),
    Stdin,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "the {name} flag"),
            Origin::Env(name) => write!(f, "the environment variable {name}"),
            Origin::Liberty(name) => write!(f, "Liberty entry {name}"),
            Origin::Stdin => f.write_str("standard input"),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// What can go wrong finding settings and keys.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no admin key: {}\n  hint: store it with `liberty add {}` (it is printed by `lockstock-cloud init`)",
        .vault_note, env::LOCKSTOCK_API_KEY
    )]
    MissingAdminKey { vault_note: String },
    #[error(
        "no account key: {}\n  hint: it is kept in Liberty as {} by `lockstock-gateway account init`; restore your offline copy with `liberty add {}`",
        .vault_note, env::LOCKSTOCK_ACCOUNT_KEY, env::LOCKSTOCK_ACCOUNT_KEY
    )]
    MissingAccountKey { vault_note: String },
    #[error("the account key from {origin} is not 64 hex characters")]
    BadAccountKey { origin: Origin },
    #[error("cannot read Liberty entry {name}: {source}")]
    VaultRead {
        name: &'static str,
        #[source]
        source: liberty_vault::Error,
    },
    #[error("cannot write Liberty entry {name}: {source}")]
    VaultWrite {
        name: &'static str,
        #[source]
        source: liberty_vault::Error,
    },
    #[error(
        "{problem}\n  hint: the admin tools keep keys in Liberty; create a vault with `liberty init`"
    )]
    NoVault { problem: String },
    #[error(transparent)]
    Client(#[from] lockstock::client::ClientError),
}

/// A warning for a secret given on the command line.
pub fn argv_warning(flag: &str, vault_name: &str) -> String {
    format!(
        "warning: {flag} on the command line is visible to other users of this machine (ps, /proc/PID/cmdline) and may be kept in your shell history; keep it in Liberty instead (`liberty add {vault_name}`)"
    )
}

/// Liberty, when it can be opened, and why not otherwise.
pub struct Sources {
    vault: Option<Vault>,
    problem: Option<String>,
}

impl Sources {
    /// Opens Liberty if there is one. A missing vault is not an error here: flags and the
    /// environment may cover everything.
    pub fn load() -> Self {
        let home = liberty_vault::default_home();
        if !Vault::exists(&home) {
            return Self {
                vault: None,
                problem: Some(format!("no Liberty vault at {}", home.display())),
            };
        }
        match Vault::open_default() {
            Ok(v) => Self {
                vault: Some(v),
                problem: None,
            },
            Err(e) => Self {
                vault: None,
                problem: Some(format!("Liberty cannot be opened: {e}")),
            },
        }
    }

    /// Sources with no vault (for tests and for callers that must not touch Liberty).
    pub fn without_vault(reason: &str) -> Self {
        Self {
            vault: None,
            problem: Some(reason.to_owned()),
        }
    }

    /// The open vault, or why there is none.
    pub fn vault_mut(&mut self) -> Result<&mut Vault, ConfigError> {
        match &mut self.vault {
            Some(v) => Ok(v),
            None => Err(ConfigError::NoVault {
                problem: self
                    .problem
                    .clone()
                    .unwrap_or_else(|| "no Liberty vault".to_owned()),
            }),
        }
    }

    fn vault_note(&self, name: &str) -> String {
        match &self.problem {
            Some(p) => format!("no flag, no {name} in the environment, and {p}"),
            None => format!("no flag, no {name} in the environment, and no {name} in Liberty"),
        }
    }

    /// One Liberty entry; `Ok(None)` when there is no vault or no such entry.
    pub fn vault_get(&self, name: &'static str) -> Result<Option<Zeroizing<String>>, ConfigError> {
        let Some(vault) = &self.vault else {
            return Ok(None);
        };
        let v = vault
            .get(name)
            .map_err(|source| ConfigError::VaultRead { name, source })?;
        Ok(
            v.map(|s| Zeroizing::new(s.expose_secret().trim().to_owned()))
                .filter(|s| !s.is_empty()),
        )
    }

    /// First of: the flag, the environment variable, the Liberty entry (same name).
    fn lookup(
        &self,
        flag: Option<(&'static str, &str)>,
        name: &'static str,
    ) -> Result<Option<(Zeroizing<String>, Origin)>, ConfigError> {
        if let Some((flag, v)) = flag {
            return Ok(Some((
                Zeroizing::new(v.trim().to_owned()),
                Origin::Flag(flag),
            )));
        }
        if let Ok(v) = std::env::var(name)
            && !v.trim().is_empty()
        {
            return Ok(Some((
                Zeroizing::new(v.trim().to_owned()),
                Origin::Env(name),
            )));
        }
        Ok(self.vault_get(name)?.map(|v| (v, Origin::Liberty(name))))
    }

    /// The control plane's base URL: `--url`, `LOCKSTOCK_URL` (environment, then Liberty), or
    /// the default.
    pub fn url(&self, flag: Option<&str>) -> Result<(String, Origin), ConfigError> {
        Ok(
            match self.lookup(flag.map(|f| ("--url", f)), env::LOCKSTOCK_URL)? {
                Some((v, origin)) => (v.to_string(), origin),
                None => (env::DEFAULT_LOCKSTOCK_URL.to_owned(), Origin::Default),
            },
        )
    }

    /// The admin key (`lsk_admin_…`).
    pub fn admin_key(&self, flag: Option<&str>) -> Result<(SecretString, Origin), ConfigError> {
        match self.lookup(flag.map(|f| ("--api-key", f)), env::LOCKSTOCK_API_KEY)? {
            Some((v, origin)) => Ok((SecretString::from(v.to_string()), origin)),
            None => Err(ConfigError::MissingAdminKey {
                vault_note: self.vault_note(env::LOCKSTOCK_API_KEY),
            }),
        }
    }

    /// The account key, when one can be found. `flag` is `(flag name, value)`.
    pub fn account_key_opt(
        &self,
        flag: Option<(&'static str, &str)>,
    ) -> Result<Option<(AccountKey, Origin)>, ConfigError> {
        let Some((v, origin)) = self.lookup(flag, env::LOCKSTOCK_ACCOUNT_KEY)? else {
            return Ok(None);
        };
        let key = AccountKey::from_hex(&v).map_err(|_| ConfigError::BadAccountKey { origin })?;
        Ok(Some((key, origin)))
    }

    /// The account key; an error saying where it was looked for when there is none.
    pub fn account_key(
        &self,
        flag: Option<(&'static str, &str)>,
    ) -> Result<(AccountKey, Origin), ConfigError> {
        self.account_key_opt(flag)?
            .ok_or_else(|| ConfigError::MissingAccountKey {
                vault_note: self.vault_note(env::LOCKSTOCK_ACCOUNT_KEY),
            })
    }

    /// The key an interrupted rotation was moving to, when Liberty holds one.
    pub fn pending_rotation_key(&self) -> Result<Option<AccountKey>, ConfigError> {
        match self.vault_get(LOCKSTOCK_ACCOUNT_KEY_NEXT)? {
            Some(v) => AccountKey::from_hex(&v)
                .map(Some)
                .map_err(|_| ConfigError::BadAccountKey {
                    origin: Origin::Liberty(LOCKSTOCK_ACCOUNT_KEY_NEXT),
                }),
            None => Ok(None),
        }
    }

    /// A client of the control plane with the admin key.
    pub fn admin_client(
        &self,
        url_flag: Option<&str>,
        key_flag: Option<&str>,
    ) -> Result<ControlPlane, ConfigError> {
        let (url, _) = self.url(url_flag)?;
        let (key, _) = self.admin_key(key_flag)?;
        Ok(ControlPlane::new(&url, &key)?)
    }

    /// A reader of the control plane with the admin key: the client, and its stamp-page
    /// reader.
    pub fn admin_reader(
        &self,
        url_flag: Option<&str>,
        key_flag: Option<&str>,
    ) -> Result<super::ledger::Pages, ConfigError> {
        let (url, _) = self.url(url_flag)?;
        let (key, _) = self.admin_key(key_flag)?;
        let cp = ControlPlane::new(&url, &key)?;
        Ok(super::ledger::Pages::new(cp, &key)?)
    }

    /// Writes Liberty entries in one atomic write.
    pub fn vault_set(&mut self, items: &[(&'static str, &str)]) -> Result<(), ConfigError> {
        let name = items.first().map_or("", |(n, _)| *n);
        let vault = self.vault_mut()?;
        let items: Vec<(String, SecretString)> = items
            .iter()
            .map(|(n, v)| ((*n).to_owned(), SecretString::from((*v).to_owned())))
            .collect();
        vault
            .set_many(&items, true)
            .map_err(|source| ConfigError::VaultWrite { name, source })
    }

    /// Removes a Liberty entry (no error when it is not there).
    pub fn vault_remove(&mut self, name: &'static str) -> Result<(), ConfigError> {
        let vault = self.vault_mut()?;
        vault
            .remove(name)
            .map(|_| ())
            .map_err(|source| ConfigError::VaultWrite { name, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_well() {
        assert_eq!(
            Origin::Liberty("LOCKSTOCK_API_KEY").to_string(),
            "Liberty entry LOCKSTOCK_API_KEY"
        );
        assert_eq!(Origin::Flag("--api-key").to_string(), "the --api-key flag");
        assert!(argv_warning("--api-key", "LOCKSTOCK_API_KEY").contains("liberty add"));
    }

    #[test]
    fn flags_win_and_are_trimmed() {
        let src = Sources::without_vault("no vault in this test");
        let (url, origin) = src.url(Some(" http://example.test:1 ")).unwrap();
        assert_eq!(
            (url.as_str(), origin),
            ("http://example.test:1", Origin::Flag("--url"))
        );
        let err = src
            .account_key_opt(Some(("--account-key", "zz")))
            .unwrap_err();
        assert!(err.to_string().contains("--account-key"), "{err}");
    }
}
