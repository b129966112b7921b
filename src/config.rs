//! The gateway's configuration, from the settings names of the product documentation.
//!
//! The same names work as environment variables, as lines of the container's settings file
//! (`KEY=VALUE`), and as what `lockstock-gateway` assembles from Liberty.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::AgentId;
use crate::env;
use crate::provider::Provider;
use crate::seal::{AccountKey, AccountPublicKey};
use crate::secret::{SecretKey32, SecretString};

/// Why a configuration cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("missing {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("settings line {line}: expected KEY=VALUE")]
    Syntax { line: usize },
}

/// Where requests go: scheme, host and an optional base path (`https://api.openai.com`,
/// `http://127.0.0.1:11434`, `https://example.com/openai/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: String,
    authority: String,
    base_path: String,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            name: env::UPSTREAM_URL,
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.trim().parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| invalid("no scheme; use http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(invalid("only http and https are supported"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if uri.query().is_some() {
            return Err(invalid("a query string does not belong in the base URL"));
        }
        Ok(Self {
            scheme: scheme.to_owned(),
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The URL for a (normalized) request path and query. A base ending in `/v1` absorbs the
    /// request's own `/v1`, so both `https://api.openai.com` and `…/v1` work.
    pub fn target(&self, path: &str, query: Option<&str>) -> String {
        let path = match path.strip_prefix("/v1") {
            Some(rest)
                if self.base_path.ends_with("/v1")
                    && (rest.is_empty() || rest.starts_with('/')) =>
            {
                rest
            }
            _ => path,
        };
        let mut url = format!(
            "{}://{}{}{}",
            self.scheme, self.authority, self.base_path, path
        );
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// Sizes and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted (413 above).
    pub max_request_bytes: usize,
    /// Most bytes of a response kept for its sealed transcript (the rest is cut, and marked).
    pub max_transcript_bytes: usize,
    pub connect_timeout: Duration,
    /// Until the provider's response headers arrive.
    pub response_timeout: Duration,
    /// Between two chunks of a streamed response.
    pub idle_timeout: Duration,
    /// How long a request waits for its stamp's verdict.
    pub verdict_timeout: Duration,
    /// How long each data key is used.
    pub dek_epoch: Duration,
    /// How long shutdown waits for in-flight streams and stamps.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 32 * 1024 * 1024,
            max_transcript_bytes: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            verdict_timeout: Duration::from_secs(10),
            dek_epoch: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Everything a gateway needs to run. Holds secrets; its `Debug` shows none.
pub struct GatewayConfig {
    pub upstream: Upstream,
    pub control_plane_url: String,
    pub gateway_key: SecretString,
    /// Seal transcripts to this key; `None`: stamps only, no blobs.
    pub account: Option<AccountPublicKey>,
    /// Every agent this gateway governs.
    pub agents: Vec<AgentId>,
    /// The agent of requests without an `X-D3cipher-Agent` header.
    pub default_agent: Option<AgentId>,
    /// Root of every agent's signing key (`MLS_SEED`).
    pub seed: SecretKey32,
    pub provider: Provider,
    pub openai_key: Option<SecretString>,
    pub anthropic_key: Option<SecretString>,
    pub spool_dir: Option<PathBuf>,
    pub limits: Limits,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("upstream", &self.upstream)
            .field("control_plane_url", &self.control_plane_url)
            .field("account", &self.account)
            .field("agents", &self.agents)
            .field("default_agent", &self.default_agent)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// Parses a settings file: `KEY=VALUE` per line, `#` comments, blank lines ignored.
pub fn parse_settings(text: &str) -> Result<BTreeMap<String, Zeroizing<String>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or(ConfigError::Syntax { line: i + 1 })?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ConfigError::Syntax { line: i + 1 });
        }
        out.insert(k.to_owned(), Zeroizing::new(v.trim().to_owned()));
    }
    Ok(out)
}

impl GatewayConfig {
    /// Builds the configuration from named values (settings file, environment, vault).
    ///
    /// `ACCOUNT_KEY` is accepted for compatibility, but only its public half is kept.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<Zeroizing<String>>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut missing = Vec::new();
        let upstream = get(env::UPSTREAM_URL).or_else(|| get(env::LOCKSTOCK_UPSTREAM_URL));
        if upstream.is_none() {
            missing.push(env::UPSTREAM_URL);
        }
        let gateway_key = get(env::LOCKSTOCK_GATEWAY_KEY);
        if gateway_key.is_none() {
            missing.push(env::LOCKSTOCK_GATEWAY_KEY);
        }
        let seed = get(env::MLS_SEED);
        if seed.is_none() {
            missing.push(env::MLS_SEED);
        }
        let default_agent = get(env::AGENT_ID);
        let agent_list = get(env::LOCKSTOCK_AGENTS);
        if default_agent.is_none() && agent_list.is_none() {
            missing.push(env::AGENT_ID);
        }
        if !missing.is_empty() {
            return Err(ConfigError::Missing(missing));
        }
        let (upstream, gateway_key, seed) = (
            upstream.expect("checked"),
            gateway_key.expect("checked"),
            seed.expect("checked"),
        );

        let parse_agent = |s: &str| {
            s.trim()
                .parse::<AgentId>()
                .map_err(|e| ConfigError::Invalid {
                    name: env::AGENT_ID,
                    reason: e.to_string(),
                })
        };
        let default_agent = default_agent
            .as_deref()
            .map(|s| parse_agent(s))
            .transpose()?;
        let mut agents: Vec<AgentId> = agent_list
            .as_deref()
            .map(|l| {
                l.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(parse_agent)
                    .collect::<Result<_, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        if let Some(d) = &default_agent
            && !agents.contains(d)
        {
            agents.push(d.clone());
        }
        agents.sort();
        agents.dedup();

        let account = match (get(env::ACCOUNT_PUBLIC_KEY), get(env::ACCOUNT_KEY)) {
            (Some(public), _) => {
                Some(
                    AccountPublicKey::from_hex(&public).map_err(|e| ConfigError::Invalid {
                        name: env::ACCOUNT_PUBLIC_KEY,
                        reason: e.to_string(),
                    })?,
                )
            }
            (None, Some(secret)) => {
                tracing::warn!(
                    "ACCOUNT_KEY holds the account secret; the gateway needs only ACCOUNT_PUBLIC_KEY"
                );
                let key = AccountKey::from_hex(&secret).map_err(|e| ConfigError::Invalid {
                    name: env::ACCOUNT_KEY,
                    reason: e.to_string(),
                })?;
                Some(key.public_key())
            }
            (None, None) => None,
        };
        let provider = get(env::LOCKSTOCK_PROVIDER)
            .map(|p| p.parse::<Provider>())
            .transpose()
            .map_err(|reason| ConfigError::Invalid {
                name: env::LOCKSTOCK_PROVIDER,
                reason,
            })?
            .unwrap_or_default();
        let secret = |k: &str| get(k).map(|v| SecretString::from(v.as_str().to_owned()));
        Ok(Self {
            upstream: Upstream::parse(&upstream)?,
            control_plane_url: get(env::LOCKSTOCK_URL)
                .map(|u| u.as_str().to_owned())
                .unwrap_or_else(|| env::DEFAULT_LOCKSTOCK_URL.to_owned()),
            gateway_key: SecretString::from(gateway_key.as_str().to_owned()),
            account,
            agents,
            default_agent,
            seed: crate::secret::key_from_hex(&seed).ok_or(ConfigError::Invalid {
                name: env::MLS_SEED,
                reason: "expected 64 hex characters".into(),
            })?,
            provider,
            openai_key: secret(env::OPENAI_API_KEY),
            anthropic_key: secret(env::ANTHROPIC_API_KEY),
            spool_dir: get(env::LOCKSTOCK_SPOOL_DIR).map(|p| PathBuf::from(p.as_str())),
            limits: Limits::default(),
        })
    }

    /// From a parsed settings file.
    pub fn from_settings(
        settings: &BTreeMap<String, Zeroizing<String>>,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup(|k| settings.get(k).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, Zeroizing<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string())))
            .collect()
    }

    #[test]
    fn upstream_paths_join_without_doubling_v1() {
        let u = Upstream::parse("https://api.openai.com").unwrap();
        assert_eq!(
            u.target("/v1/chat/completions", None),
            "https://api.openai.com/v1/chat/completions"
        );
        let u = Upstream::parse("http://h:1/openai/v1/").unwrap();
        assert_eq!(
            u.target("/v1/chat/completions", Some("a=1")),
            "http://h:1/openai/v1/chat/completions?a=1"
        );
        assert_eq!(u.target("/v1beta/x", None), "http://h:1/openai/v1/v1beta/x");
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("nonsense").is_err());
    }

    #[test]
    fn missing_fields_are_all_named() {
        let err = GatewayConfig::from_settings(&settings(&[])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing(vec![
                "UPSTREAM_URL",
                "LOCKSTOCK_GATEWAY_KEY",
                "MLS_SEED",
                "AGENT_ID"
            ])
        );
    }

    #[test]
    fn a_full_settings_file_parses_and_debug_hides_secrets() {
        let text = format!(
            "# written by lockstock-gateway\nUPSTREAM_URL=http://127.0.0.1:9\nLOCKSTOCK_GATEWAY_KEY=lsk_gateway_{k}\nMLS_SEED={s}\nAGENT_ID=agent_0000000a_a\nLOCKSTOCK_AGENTS=agent_0000000b_b,agent_0000000a_a\nOPENAI_API_KEY=sk-secret-value\n",
            k = "1".repeat(64),
            s = "2".repeat(64)
        );
        let cfg = GatewayConfig::from_settings(&parse_settings(&text).unwrap()).unwrap();
        assert_eq!(cfg.agents.len(), 2);
        assert_eq!(
            cfg.default_agent.as_ref().unwrap().as_str(),
            "agent_0000000a_a"
        );
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("sk-secret-value") && !debug.contains(&"1".repeat(64)),
            "{debug}"
        );
        assert!(parse_settings("no equals sign").is_err());
        assert!(parse_settings("BAD KEY=1").is_err());
    }

    #[test]
    fn account_secret_is_reduced_to_its_public_half() {
        let secret = AccountKey::generate();
        let cfg = GatewayConfig::from_settings(&settings(&[
            ("UPSTREAM_URL", "http://x"),
            ("LOCKSTOCK_GATEWAY_KEY", "k"),
            ("MLS_SEED", &"3".repeat(64)),
            ("AGENT_ID", "agent_0000000a_a"),
            ("ACCOUNT_KEY", &secret.to_hex()),
        ]))
        .unwrap();
        assert_eq!(cfg.account, Some(secret.public_key()));
    }
}
