//! Every environment variable LockStock reads, in one place.
//!
//! Container names follow the product documentation; vault names are what operators keep in
//! Liberty. The gateway accepts either spelling where both exist.

/// Base URL of the control plane (`http://127.0.0.1:4100` by default).
pub const LOCKSTOCK_URL: &str = "LOCKSTOCK_URL";
/// Admin key (`lsk_admin_…`), vault name.
pub const LOCKSTOCK_API_KEY: &str = "LOCKSTOCK_API_KEY";
/// Gateway key (`lsk_gateway_…`), vault and container name.
pub const LOCKSTOCK_GATEWAY_KEY: &str = "LOCKSTOCK_GATEWAY_KEY";
/// Upstream provider base URL, vault name.
pub const LOCKSTOCK_UPSTREAM_URL: &str = "LOCKSTOCK_UPSTREAM_URL";
/// Upstream provider base URL, container name.
pub const UPSTREAM_URL: &str = "UPSTREAM_URL";
/// Account key (64 hex), vault name. Only the admin tools ever read the secret.
pub const LOCKSTOCK_ACCOUNT_KEY: &str = "LOCKSTOCK_ACCOUNT_KEY";
/// Public half of the account key, vault name (what a native gateway seals to).
pub const LOCKSTOCK_ACCOUNT_PUBLIC_KEY: &str = "LOCKSTOCK_ACCOUNT_PUBLIC_KEY";
/// The account key a rotation is moving to, kept in the vault until the rotation finishes.
pub const LOCKSTOCK_ACCOUNT_KEY_NEXT: &str = "LOCKSTOCK_ACCOUNT_KEY_NEXT";
/// Account key, container name. The gateway derives the public half and drops the secret.
pub const ACCOUNT_KEY: &str = "ACCOUNT_KEY";
/// Public half of the account key (64 hex): all the gateway needs to seal transcripts.
pub const ACCOUNT_PUBLIC_KEY: &str = "ACCOUNT_PUBLIC_KEY";
/// Default agent when a request carries no `X-D3cipher-Agent` header.
pub const AGENT_ID: &str = "AGENT_ID";
/// Comma-separated list of every agent registered with this gateway.
pub const LOCKSTOCK_AGENTS: &str = "LOCKSTOCK_AGENTS";
/// Prefix of the vault names that hold agent ids: `LOCKSTOCK_AGENT_<NAME>`.
pub const LOCKSTOCK_AGENT_PREFIX: &str = "LOCKSTOCK_AGENT_";
/// Root seed (64 hex) from which every agent's signing key is derived.
pub const MLS_SEED: &str = "MLS_SEED";
/// Provider keys the gateway adds when a request carries no credential of its own.
pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
pub const ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
/// Provider flavour of the upstream: `openai`, `anthropic-native` or `ollama`.
pub const LOCKSTOCK_PROVIDER: &str = "LOCKSTOCK_PROVIDER";
/// Address the gateway listens on (`127.0.0.1:4000` by default).
pub const LOCKSTOCK_LISTEN: &str = "LOCKSTOCK_LISTEN";
/// Directory where sealed blobs wait while the control plane is unreachable.
pub const LOCKSTOCK_SPOOL_DIR: &str = "LOCKSTOCK_SPOOL_DIR";
/// `tracing` filter for logs (`info` by default).
pub const LOCKSTOCK_LOG: &str = "LOCKSTOCK_LOG";
/// Registry credentials for `lockstock-gateway image pull`, vault names.
pub const LOCKSTOCK_REGISTRY_USER: &str = "LOCKSTOCK_REGISTRY_USER";
pub const LOCKSTOCK_REGISTRY_TOKEN: &str = "LOCKSTOCK_REGISTRY_TOKEN";
/// Where the Docker engine listens (`unix:///var/run/docker.sock` when unset).
pub const DOCKER_HOST: &str = "DOCKER_HOST";
/// Tests that need Docker fail instead of skipping when this is `1`.
pub const LOCKSTOCK_REQUIRE_DOCKER: &str = "LOCKSTOCK_REQUIRE_DOCKER";

/// Default control-plane address.
pub const DEFAULT_LOCKSTOCK_URL: &str = "http://127.0.0.1:4100";
/// Default gateway listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
