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
pub mod body;
mod carrier;
pub mod chain;
pub mod client;
pub mod config;
pub mod env;
pub mod http;
pub mod jsonscan;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod refusal;
pub mod seal;
pub mod sealer;
pub mod secret;
pub mod server;
pub mod stamper;
pub mod usage;
mod usage_event;
pub mod usage_filter;

pub use agent::AgentId;

/// The version every component reports (`/healthz`, `--version`, the API).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// A recorded provider response from `tests/fixtures`, for unit tests.
#[cfg(test)]
pub(crate) fn test_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}
