//! Where every setting comes from: flags, then the environment (container names), then
//! Liberty, then defaults. `config` shows the result; `start` turns it into the gateway's
//! settings (the same names the container reads).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use liberty_vault::{ExposeSecret, SecretString, Vault};
use lockstock::AgentId;
use lockstock::env;
use lockstock::provider::Provider;
use lockstock::seal::AccountKey;
use zeroize::Zeroizing;

use crate::cli::Overrides;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(&'static str),
    Vault,
    Default,
    Derived,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Vault => f.write_str("liberty"),
            Origin::Default => f.write_str("default"),
            Origin::Derived => f.write_str("derived"),
        }
    }
}

/// A resolved value.
pub struct Value {
    pub value: Zeroizing<String>,
    pub origin: Origin,
}

/// The vault, when there is one, and why not otherwise.
pub struct Sources {
    pub vault: Option<Vault>,
    pub vault_problem: Option<String>,
}

impl Sources {
    /// Opens Liberty if it exists; a missing vault is not an error here (env may cover all).
    pub fn load() -> Self {
        let home = liberty_vault::default_home();
        if !Vault::exists(&home) {
            return Self {
                vault: None,
                vault_problem: Some(format!(
                    "no Liberty vault at {} (run `liberty init`)",
                    home.display()
                )),
            };
        }
        match Vault::open_default() {
            Ok(v) => Self {
                vault: Some(v),
                vault_problem: None,
            },
            Err(e) => Self {
                vault: None,
                vault_problem: Some(e.to_string()),
            },
        }
    }

    /// The open vault, or an error saying why there is none.
    pub fn vault_mut(&mut self) -> Result<&mut Vault> {
        match (&mut self.vault, &self.vault_problem) {
            (Some(v), _) => Ok(v),
            (None, Some(p)) => anyhow::bail!("{p}"),
            (None, None) => anyhow::bail!("no Liberty vault"),
        }
    }

    fn vault_value(&self, name: &str) -> Option<Zeroizing<String>> {
        let v = self.vault.as_ref()?.get(name).ok()??;
        Some(Zeroizing::new(v.expose_secret().to_owned()))
    }

    /// First of: the environment variables (in order), then the vault entry.
    pub fn lookup(&self, env_names: &[&'static str], vault_name: Option<&str>) -> Option<Value> {
        for name in env_names {
            if let Ok(v) = std::env::var(name)
                && !v.trim().is_empty()
            {
                return Some(Value {
                    value: Zeroizing::new(v),
                    origin: Origin::Env(name),
                });
            }
        }
        let v = self.vault_value(vault_name?)?;
        (!v.trim().is_empty()).then_some(Value {
            value: v,
            origin: Origin::Vault,
        })
    }

    /// Agents registered with this gateway: `LOCKSTOCK_AGENT_<NAME>` entries, plus the
    /// environment's AGENT_ID and LOCKSTOCK_AGENTS.
    pub fn agents(&self) -> Vec<(String, AgentId)> {
        let mut out: Vec<(String, AgentId)> = Vec::new();
        if let Some(vault) = &self.vault {
            for name in vault.names() {
                let Some(short) = name.strip_prefix(env::LOCKSTOCK_AGENT_PREFIX) else {
                    continue;
                };
                if let Some(id) = self
                    .vault_value(&name)
                    .and_then(|v| v.trim().parse::<AgentId>().ok())
                {
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

    /// Finds an agent by id, or by the name it is kept under (case-insensitive).
    pub fn resolve_agent(&self, given: &str) -> Result<AgentId> {
        if let Ok(id) = given.parse::<AgentId>() {
            return Ok(id);
        }
        let wanted = lockstock::agent::vault_name_for(given);
        self.agents()
            .into_iter()
            .find(|(short, id)| {
                lockstock::agent::vault_name_for(short) == wanted || id.name().eq_ignore_ascii_case(given)
            })
            .map(|(_, id)| id)
            .with_context(|| format!("no agent called {given:?}: give its id (agent_XXXXXXXX_name) or see `lockstock-gateway agents`"))
    }
}

/// Every setting of a gateway, resolved.
pub struct Resolved {
    pub control_plane: Value,
    pub admin_key: Option<Value>,
    pub gateway_key: Option<Value>,
    pub upstream: Value,
    pub provider: (Provider, Origin),
    pub account_public: Option<Value>,
    pub account_secret_present: bool,
    pub seed: Option<Value>,
    pub agents: Vec<(String, AgentId)>,
    pub default_agent: Option<AgentId>,
    pub openai_key: Option<Value>,
    pub anthropic_key: Option<Value>,
}

fn default_upstream(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "https://api.openai.com",
        Provider::Anthropic => "https://api.anthropic.com",
        Provider::Ollama => "http://127.0.0.1:11434",
    }
}

impl Resolved {
    pub fn resolve(src: &Sources, flags: &Overrides) -> Result<Self> {
        let openai_key = src.lookup(&[env::OPENAI_API_KEY], Some(env::OPENAI_API_KEY));
        let anthropic_key = src.lookup(&[env::ANTHROPIC_API_KEY], Some(env::ANTHROPIC_API_KEY));
        let provider = match src.lookup(&[env::LOCKSTOCK_PROVIDER], Some(env::LOCKSTOCK_PROVIDER)) {
            Some(v) => (
                v.value.parse::<Provider>().map_err(anyhow::Error::msg)?,
                v.origin,
            ),
            None if anthropic_key.is_some() && openai_key.is_none() => {
                (Provider::Anthropic, Origin::Derived)
            }
            None => (Provider::OpenAi, Origin::Default),
        };
        let upstream = match &flags.upstream {
            Some(u) => Value {
                value: Zeroizing::new(u.clone()),
                origin: Origin::Flag,
            },
            None => src
                .lookup(
                    &[env::UPSTREAM_URL, env::LOCKSTOCK_UPSTREAM_URL],
                    Some(env::LOCKSTOCK_UPSTREAM_URL),
                )
                .unwrap_or_else(|| Value {
                    value: Zeroizing::new(default_upstream(provider.0).to_owned()),
                    origin: Origin::Default,
                }),
        };
        let control_plane = match &flags.control_plane {
            Some(u) => Value {
                value: Zeroizing::new(u.clone()),
                origin: Origin::Flag,
            },
            None => src
                .lookup(&[env::LOCKSTOCK_URL], Some(env::LOCKSTOCK_URL))
                .unwrap_or_else(|| Value {
                    value: Zeroizing::new(env::DEFAULT_LOCKSTOCK_URL.to_owned()),
                    origin: Origin::Default,
                }),
        };
        let account_secret = src.lookup(&[], Some(env::LOCKSTOCK_ACCOUNT_KEY));
        let account_public = src
            .lookup(
                &[env::ACCOUNT_PUBLIC_KEY],
                Some(env::LOCKSTOCK_ACCOUNT_PUBLIC_KEY),
            )
            .or_else(|| {
                // Older vaults hold only the secret: derive its public half, keep nothing else.
                let key = AccountKey::from_hex(&account_secret.as_ref()?.value).ok()?;
                Some(Value {
                    value: Zeroizing::new(key.public_key().to_hex()),
                    origin: Origin::Derived,
                })
            });
        let agents = src.agents();
        let default_agent = match std::env::var(env::AGENT_ID)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            Some(a) => Some(a),
            None if agents.len() == 1 => Some(agents[0].1.clone()),
            None => None,
        };
        Ok(Self {
            control_plane,
            admin_key: src.lookup(&[env::LOCKSTOCK_API_KEY], Some(env::LOCKSTOCK_API_KEY)),
            gateway_key: src.lookup(
                &[env::LOCKSTOCK_GATEWAY_KEY],
                Some(env::LOCKSTOCK_GATEWAY_KEY),
            ),
            upstream,
            provider,
            account_public,
            account_secret_present: account_secret.is_some(),
            seed: src.lookup(&[env::MLS_SEED], Some(env::MLS_SEED)),
            agents,
            default_agent,
            openai_key,
            anthropic_key,
        })
    }

    /// What `start` cannot run without, by name.
    pub fn missing_for_gateway(&self) -> Vec<String> {
        let mut m = Vec::new();
        if self.gateway_key.is_none() {
            m.push(format!(
                "{} (the gateway key printed by `lockstock-cloud init`)",
                env::LOCKSTOCK_GATEWAY_KEY
            ));
        }
        if self.seed.is_none() {
            m.push(format!("{} (run `lockstock-gateway setup`)", env::MLS_SEED));
        }
        if self.agents.is_empty() {
            m.push("an agent (run `lockstock-gateway provision --name NAME`)".to_owned());
        }
        m
    }

    /// The settings the gateway runs with, under the container's names. Never the account
    /// secret: only its public half.
    pub fn gateway_settings(
        &self,
        listen: std::net::SocketAddr,
    ) -> BTreeMap<String, Zeroizing<String>> {
        let mut s = BTreeMap::new();
        let mut put = |k: &str, v: &Zeroizing<String>| {
            s.insert(k.to_owned(), v.clone());
        };
        put(env::LOCKSTOCK_URL, &self.control_plane.value);
        put(env::UPSTREAM_URL, &self.upstream.value);
        put(
            env::LOCKSTOCK_PROVIDER,
            &Zeroizing::new(self.provider.0.as_str().to_owned()),
        );
        put(env::LOCKSTOCK_LISTEN, &Zeroizing::new(listen.to_string()));
        for (k, v) in [
            (env::LOCKSTOCK_GATEWAY_KEY, &self.gateway_key),
            (env::MLS_SEED, &self.seed),
            (env::ACCOUNT_PUBLIC_KEY, &self.account_public),
            (env::OPENAI_API_KEY, &self.openai_key),
            (env::ANTHROPIC_API_KEY, &self.anthropic_key),
        ] {
            if let Some(v) = v {
                put(k, &v.value);
            }
        }
        let ids: Vec<&str> = self.agents.iter().map(|(_, a)| a.as_str()).collect();
        put(env::LOCKSTOCK_AGENTS, &Zeroizing::new(ids.join(",")));
        if let Some(d) = &self.default_agent {
            put(env::AGENT_ID, &Zeroizing::new(d.as_str().to_owned()));
        }
        s
    }

    /// A client of the control plane with the admin key.
    pub fn admin(&self) -> Result<lockstock::client::ControlPlane> {
        let key = self.admin_key.as_ref().with_context(|| {
            format!(
                "{} is not set: store the admin key with `liberty add {}`",
                env::LOCKSTOCK_API_KEY,
                env::LOCKSTOCK_API_KEY
            )
        })?;
        Ok(lockstock::client::ControlPlane::new(
            &self.control_plane.value,
            &secret(&key.value),
        )?)
    }

    /// A client of the control plane with the gateway key.
    pub fn gateway(&self) -> Result<lockstock::client::ControlPlane> {
        let key = self.gateway_key.as_ref().with_context(|| {
            format!(
                "{} is not set: store the gateway key with `liberty add {}`",
                env::LOCKSTOCK_GATEWAY_KEY,
                env::LOCKSTOCK_GATEWAY_KEY
            )
        })?;
        Ok(lockstock::client::ControlPlane::new(
            &self.control_plane.value,
            &secret(&key.value),
        )?)
    }
}

pub fn secret(v: &str) -> SecretString {
    SecretString::from(v.to_owned())
}

/// `config`: one line per setting, secrets masked; Err when something required is missing.
pub fn show(res: &Resolved, src: &Sources) -> Result<bool> {
    let mask = |v: &Option<Value>| match v {
        Some(v) => format!("{}  ({})", lockstock::secret::mask(&v.value), v.origin),
        None => "MISSING".to_owned(),
    };
    let optional = |v: &Option<Value>| match v {
        Some(v) => format!("{}  ({})", lockstock::secret::mask(&v.value), v.origin),
        None => "not set".to_owned(),
    };
    let plain = |v: &Value| format!("{}  ({})", v.value.as_str(), v.origin);
    let agents = if res.agents.is_empty() {
        "MISSING".to_owned()
    } else {
        res.agents
            .iter()
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "vault",
            src.vault
                .as_ref()
                .map(|v| v.path().display().to_string())
                .or_else(|| src.vault_problem.clone())
                .unwrap_or_default(),
        ),
        (env::LOCKSTOCK_URL, plain(&res.control_plane)),
        (env::LOCKSTOCK_API_KEY, optional(&res.admin_key)),
        (env::LOCKSTOCK_GATEWAY_KEY, mask(&res.gateway_key)),
        (env::UPSTREAM_URL, plain(&res.upstream)),
        (
            env::LOCKSTOCK_PROVIDER,
            format!("{}  ({})", res.provider.0.as_str(), res.provider.1),
        ),
        (
            env::ACCOUNT_PUBLIC_KEY,
            match &res.account_public {
                Some(v) => format!("{}  ({})", v.value.as_str(), v.origin),
                None => {
                    "not set (stamps only, no transcripts; run `lockstock-gateway account init`)"
                        .to_owned()
                }
            },
        ),
        (
            env::LOCKSTOCK_ACCOUNT_KEY,
            if res.account_secret_present {
                "present in liberty (never given to the gateway)".to_owned()
            } else {
                "not set".to_owned()
            },
        ),
        (env::MLS_SEED, mask(&res.seed)),
        ("agents", agents),
        (
            env::AGENT_ID,
            res.default_agent
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "none (requests must send X-D3cipher-Agent)".into()),
        ),
        (env::OPENAI_API_KEY, optional(&res.openai_key)),
        (env::ANTHROPIC_API_KEY, optional(&res.anthropic_key)),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
    let missing = res.missing_for_gateway();
    if !missing.is_empty() {
        eprintln!("\nmissing for the gateway to start:");
        for m in &missing {
            eprintln!("  - {m}");
        }
    }
    Ok(missing.is_empty())
}
