//! Command-line definitions of `lockstock-audit` (clap only; no behaviour here).

use clap::{Args, Parser, Subcommand, ValueEnum};
use lockstock_cli::docs::Generate;

const ABOUT: &str =
    "Read an agent's encrypted transcripts, and verify audit chains, offline with your account key";

const LONG_ABOUT: &str = "\
Read an agent's transcripts: every request it sent and every answer it got, decrypted on \
this machine with your account key. The control plane only ever stores them sealed; this \
tool fetches the stamps, the sealed blobs and the wrapped data keys with the admin key, \
checks each stamp and each blob's hash before decrypting, and prints the exchanges. \
Nothing is sent back to the control plane.

`lockstock-audit verify` checks the audit chains themselves (hashes, signatures, links, blob \
hashes); it needs no account key.";

const AFTER_LONG_HELP: &str = "\
Keys and settings (a flag wins, then the environment, then Liberty):
  LOCKSTOCK_URL           the control plane (default http://127.0.0.1:4100)
  LOCKSTOCK_API_KEY       the admin key (lsk_admin_…)
  LOCKSTOCK_ACCOUNT_KEY   the account key (64 hex), made by `lockstock-gateway account init`
Keep keys in Liberty (`liberty add NAME`) or pass them with `liberty exec -- lockstock-audit …`: \
--api-key and --account-key work but are visible to every user of this machine.

Times (--since, --until): RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01, UTC), \
@UNIX_SECONDS, or an age such as 30m, 2h, 7d.

An entry that cannot be trusted (its stamp does not verify, its blob does not match the \
stamp, its data key does not open) is refused with the reason and the others are still \
shown. A transcript that was never sealed (the gateway ran without an account key) shows as \
`blob not available` with the reason; that is not an error.

Exit status: 0 when everything shown was decrypted or legitimately unavailable; 1 when an \
entry was refused, the chain does not verify (verify), or on an error (a wrong account key \
is refused before anything is printed); 2 on a usage error.";

#[derive(Debug, Parser)]
#[command(
    name = "lockstock-audit",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub read: Read,
    #[command(flatten)]
    pub conn: Connection,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable: chat messages one per line, streamed answers reassembled.
    Text,
    /// One JSON object per line: an exchange (audit) or an agent's report (verify).
    Json,
}

/// Reading transcripts.
#[derive(Debug, Args)]
pub struct Read {
    /// The agent: its id (agent_XXXXXXXX_name), or its name when that is unique
    #[arg(long, value_name = "ID", required = true)]
    pub agent_id: Option<String>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Only exchanges from this time on
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// Only exchanges up to this time
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,

    /// Keep running and show new exchanges as they are stamped (Ctrl-C stops)
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Blobs fetched at once
    #[arg(long, value_name = "N", default_value_t = 16, hide = true)]
    pub concurrency: usize,

    /// How often --follow polls, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1000, hide = true)]
    pub poll_ms: u64,
}

/// Where the control plane is and which keys to use.
#[derive(Debug, Args)]
pub struct Connection {
    /// Control plane URL [default: LOCKSTOCK_URL, else http://127.0.0.1:4100]
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,

    /// Admin key (visible to other users: prefer LOCKSTOCK_API_KEY in Liberty)
    #[arg(long, global = true, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Account key, 64 hex (visible to other users: prefer LOCKSTOCK_ACCOUNT_KEY in Liberty)
    #[arg(long, global = true, value_name = "HEX")]
    pub account_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify audit chains: each stamp's hash, signature and link, each blob's hash against
    /// its stamp, the chain's end against the agent's head. Exit 0 only when everything
    /// verifies. With the account key, wrapped data keys are opened too.
    Verify(Verify),
    /// Print shell completions or the man page.
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct Verify {
    /// The agent: its id, or its name when that is unique
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub agent_id: Option<String>,

    /// Every agent of the control plane
    #[arg(long)]
    pub all: bool,

    /// The agent's Ed25519 public key (hex) from a copy you trust, instead of the control
    /// plane's
    #[arg(long, value_name = "HEX", requires = "agent_id")]
    pub public_key: Option<String>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Blobs fetched at once
    #[arg(long, value_name = "N", default_value_t = 16, hide = true)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: Generate,
}
