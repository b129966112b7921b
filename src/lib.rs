//! LockStock gateway core.
//!
//! An agent changes only its base URL; the gateway identifies it, stamps the request into the
//! control plane's ledger, enforces lock, budget and breaker verdicts, clamps output caps,
//! seals the transcript to the customer's account key and forwards to the provider, streaming
//! the answer back untouched.
//!
//! This crate also carries what the gateway and the control plane share: the stamp format
//! ([`chain`]), the wire types ([`api`]) and the envelope encryption ([`seal`]).

pub mod agent;
pub mod api;
pub mod chain;
pub mod env;
pub mod seal;
pub mod secret;

pub use agent::AgentId;

/// The version every component reports (`/healthz`, `--version`, the API).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
