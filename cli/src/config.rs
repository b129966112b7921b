//! Where the command-line tools get their settings and keys: a flag (secrets given as flags
//! are warned about, since argv is readable by every user of the machine), then the
//! environment (so `liberty exec -- …` works), then Liberty, then a default.
//!
//! `lockstock-gateway`, `lockstock-audit` and `lockstock-rotate` all read through [`Sources`].

use liberty_vault::{ExposeSecret, SecretString, Vault};
use lockstock::AgentId;
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
    /// Computed from another setting (a public key from its secret, a provider from its key).
    Derived,
}

impl Origin {
    /// The short form used in tables: `flag`, `env NAME`, `liberty`, `default`.
    pub fn short(&self) -> String {
        match self {
            Origin::Flag(_) => "flag".into(),
            Origin::Env(name) => format!("env {name}"),
            Origin::Liberty(_) => "liberty".into(),
            Origin::Stdin => "stdin".into(),
            Origin::Default => "default".into(),
            Origin::Derived => "derived".into(),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "the {name} flag"),
            Origin::Env(name) => write!(f, "the environment variable {name}"),
            Origin::Liberty(name) => write!(f, "Liberty entry {name}"),
            Origin::Stdin => f.write_str("standard input"),
            Origin::Default => f.write_str("the default"),
            Origin::Derived => f.write_str("a derived value"),
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

    /// The open vault, if any.
    pub fn vault(&self) -> Option<&Vault> {
        self.vault.as_ref()
    }

    /// Why there is no open vault.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// First of: the environment variables (in order), then the Liberty entry.
    pub fn first_of(
        &self,
        env_names: &[&'static str],
        vault_name: Option<&'static str>,
    ) -> Result<Option<(Zeroizing<String>, Origin)>, ConfigError> {
        for name in env_names {
            if let Ok(v) = std::env::var(name)
                && !v.trim().is_empty()
            {
                return Ok(Some((
                    Zeroizing::new(v.trim().to_owned()),
                    Origin::Env(name),
                )));
            }
        }
        let Some(name) = vault_name else {
            return Ok(None);
        };
        Ok(self.vault_get(name)?.map(|v| (v, Origin::Liberty(name))))
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
        self.first_of(&[name], Some(name))
    }

    /// Agents registered with this machine's gateway: Liberty's `LOCKSTOCK_AGENT_<NAME>`
    /// entries, plus the environment's `AGENT_ID` and `LOCKSTOCK_AGENTS`. Sorted by id.
    pub fn agents(&self) -> Vec<(String, AgentId)> {
        let mut out: Vec<(String, AgentId)> = Vec::new();
        if let Some(vault) = &self.vault {
            for name in vault.names() {
                let Some(short) = name.strip_prefix(env::LOCKSTOCK_AGENT_PREFIX) else {
                    continue;
                };
                let id = vault
                    .get(&name)
                    .ok()
                    .flatten()
                    .and_then(|v| v.expose_secret().trim().parse::<AgentId>().ok());
                if let Some(id) = id {
                    out.push((short.to_owned(), id));
                }
            }
        }
        for var in [env::AGENT_ID, env::LOCKSTOCK_AGENTS] {
            if let Ok(list) = std::env::var(var) {
                for id in list
                    .split(',')
                    .filter_map(|s| s.trim().parse::<AgentId>().ok())
                {
                    if !out.iter().any(|(_, a)| a == &id) {
                        out.push((id.name().to_owned(), id));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// An agent by id, or by the name it is kept under in Liberty (case-insensitive).
    pub fn resolve_agent(&self, given: &str) -> Option<AgentId> {
        if let Ok(id) = given.parse::<AgentId>() {
            return Some(id);
        }
        let wanted = lockstock::agent::vault_name_for(given);
        self.agents()
            .into_iter()
            .find(|(short, id)| {
                lockstock::agent::vault_name_for(short) == wanted
                    || id.name().eq_ignore_ascii_case(given)
            })
            .map(|(_, id)| id)
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
    ) -> Result<crate::admin::ledger::Pages, ConfigError> {
        let (url, _) = self.url(url_flag)?;
        let (key, _) = self.admin_key(key_flag)?;
        let cp = ControlPlane::new(&url, &key)?;
        Ok(crate::admin::ledger::Pages::new(cp, &key)?)
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
