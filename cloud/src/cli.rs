//! The `lockstock-cloud` command line, defined in the library so the completions and man page
//! can be generated from it (by `lockstock-cli`'s docs test) without a second copy.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lockstock-cloud",
    version,
    about = "LockStock control plane: the ledger every gateway stamps into"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the account and print its admin and gateway keys (once).
    Init {
        /// Data directory [default: $XDG_DATA_HOME/lockstock-cloud]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Print {"admin_key","gateway_key","account_id"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the /v1 API.
    Serve {
        /// Data directory [default: $XDG_DATA_HOME/lockstock-cloud]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = crate::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// TLS certificate chain (PEM); serve HTTPS.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Minutes a granted request's reservation waits for its response stamp.
        #[arg(long, value_name = "MINUTES", default_value_t = 10)]
        reservation_ttl: u64,
        /// Output grant for requests that ask for no cap, when a budget is set.
        #[arg(long, value_name = "TOKENS", default_value_t = 4096)]
        default_output_cap: u64,
    },
    /// Manage the account's API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Replace the gateway key and print the new one; the old one stops working.
    RotateGateway {
        /// Data directory [default: $XDG_DATA_HOME/lockstock-cloud]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}
