//! Where every setting comes from: flags, then the environment (container names), then
//! Liberty, then defaults. `config` shows the result; `start` turns it into the gateway's
//! settings (the same names the container reads).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use liberty_vault::SecretString;
use lockstock::AgentId;
use lockstock::env;
use lockstock::provider::Provider;
use lockstock::seal::AccountKey;
use zeroize::Zeroizing;

use crate::cli::Overrides;

pub use lockstock_cli::config::{Origin, Sources};

/// A resolved value.
pub struct Value {
    pub value: Zeroizing<String>,
    pub origin: Origin,
}

/// First of: the environment variables (in order), then the vault entry.
pub fn lookup(
    src: &Sources,
    env_names: &[&'static str],
    vault_name: Option<&'static str>,
) -> Result<Option<Value>> {
    Ok(src
        .first_of(env_names, vault_name)?
        .map(|(value, origin)| Value { value, origin }))
}

/// Finds an agent by id or by the name it is kept under, with a hint when there is none.
pub fn resolve_agent(src: &Sources, given: &str) -> Result<AgentId> {
    src.resolve_agent(given).with_context(|| {
        format!("no agent called {given:?}: give its id (agent_XXXXXXXX_name) or see `lockstock-gateway agents`")
    })
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
        let openai_key = lookup(src, &[env::OPENAI_API_KEY], Some(env::OPENAI_API_KEY))?;
        let anthropic_key = lookup(src, &[env::ANTHROPIC_API_KEY], Some(env::ANTHROPIC_API_KEY))?;
        let provider = match lookup(
            src,
            &[env::LOCKSTOCK_PROVIDER],
            Some(env::LOCKSTOCK_PROVIDER),
        )? {
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
                origin: Origin::Flag("--upstream"),
            },
            None => lookup(
                src,
                &[env::UPSTREAM_URL, env::LOCKSTOCK_UPSTREAM_URL],
                Some(env::LOCKSTOCK_UPSTREAM_URL),
            )?
            .unwrap_or_else(|| Value {
                value: Zeroizing::new(default_upstream(provider.0).to_owned()),
                origin: Origin::Default,
            }),
        };
        let control_plane =
            match &flags.control_plane {
                Some(u) => Value {
                    value: Zeroizing::new(u.clone()),
                    origin: Origin::Flag("--control-plane"),
                },
                None => lookup(src, &[env::LOCKSTOCK_URL], Some(env::LOCKSTOCK_URL))?
                    .unwrap_or_else(|| Value {
                        value: Zeroizing::new(env::DEFAULT_LOCKSTOCK_URL.to_owned()),
                        origin: Origin::Default,
                    }),
            };
        let account_secret = lookup(src, &[], Some(env::LOCKSTOCK_ACCOUNT_KEY))?;
        let account_public = lookup(
            src,
            &[env::ACCOUNT_PUBLIC_KEY],
            Some(env::LOCKSTOCK_ACCOUNT_PUBLIC_KEY),
        )?
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
            admin_key: lookup(src, &[env::LOCKSTOCK_API_KEY], Some(env::LOCKSTOCK_API_KEY))?,
            gateway_key: lookup(
                src,
                &[env::LOCKSTOCK_GATEWAY_KEY],
                Some(env::LOCKSTOCK_GATEWAY_KEY),
            )?,
            upstream,
            provider,
            account_public,
            account_secret_present: account_secret.is_some(),
            seed: lookup(src, &[env::MLS_SEED], Some(env::MLS_SEED))?,
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
        Some(v) => format!(
            "{}  ({})",
            lockstock::secret::mask(&v.value),
            v.origin.short()
        ),
        None => "MISSING".to_owned(),
    };
    let optional = |v: &Option<Value>| match v {
        Some(v) => format!(
            "{}  ({})",
            lockstock::secret::mask(&v.value),
            v.origin.short()
        ),
        None => "not set".to_owned(),
    };
    let plain = |v: &Value| format!("{}  ({})", v.value.as_str(), v.origin.short());
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
            src.vault()
                .map(|v| v.path().display().to_string())
                .or_else(|| src.problem().map(str::to_owned))
                .unwrap_or_default(),
        ),
        (env::LOCKSTOCK_URL, plain(&res.control_plane)),
        (env::LOCKSTOCK_API_KEY, optional(&res.admin_key)),
        (env::LOCKSTOCK_GATEWAY_KEY, mask(&res.gateway_key)),
        (env::UPSTREAM_URL, plain(&res.upstream)),
        (
            env::LOCKSTOCK_PROVIDER,
            format!("{}  ({})", res.provider.0.as_str(), res.provider.1.short()),
        ),
        (
            env::ACCOUNT_PUBLIC_KEY,
            match &res.account_public {
                Some(v) => format!("{}  ({})", v.value.as_str(), v.origin.short()),
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
