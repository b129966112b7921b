//! Command-line definitions of `lockstock-rotate` (clap only; no behaviour here).

use clap::{ArgGroup, Args, Parser, Subcommand};
use lockstock_cli::docs::Generate;

const ABOUT: &str = "Rotate the account key that transcripts are encrypted to";

const LONG_ABOUT: &str = "\
Rotate the account key: every agent's data keys are re-wrapped to the new key (the sealed \
transcripts themselves stay as they are), then the control plane switches to the new public \
key and drops the wrappings to the old one, then Liberty gets the new key as \
LOCKSTOCK_ACCOUNT_KEY (and its public half as LOCKSTOCK_ACCOUNT_PUBLIC_KEY).

The new key is kept in Liberty (LOCKSTOCK_ACCOUNT_KEY_NEXT) before anything changes, and both \
wrappings coexist until the switch, so an interrupted rotation loses nothing and no \
transcript is ever unreadable: run it again (or with --resume) and it finishes.";

const AFTER_LONG_HELP: &str = "\
Keys and settings (a flag wins, then the environment, then Liberty):
  LOCKSTOCK_URL           the control plane (default http://127.0.0.1:4100)
  LOCKSTOCK_API_KEY       the admin key (lsk_admin_…)
  LOCKSTOCK_ACCOUNT_KEY   the current (old) account key
Prefer --generate, or --new-key - with the key on standard input: --new-key HEX, --old-key \
and --api-key work but are visible to every user of this machine.

After a rotation, running gateways keep sealing to the old public key until they restart: \
restart them (`lockstock-gateway stop && lockstock-gateway start --native`, which reads the \
new LOCKSTOCK_ACCOUNT_PUBLIC_KEY from Liberty; containers: recreate with the new \
ACCOUNT_PUBLIC_KEY).

Exit status: 0 when the rotation is complete (or the dry run found nothing wrong); 1 on an \
error (the account and Liberty are left consistent: run again to finish); 2 on a usage error.";

#[derive(Debug, Parser)]
#[command(
    name = "lockstock-rotate",
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
    pub rotate: Rotate,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("new").required(true).args(["new_key", "generate", "resume"])))]
pub struct Rotate {
    /// The new account key: 64 hex, or `-` to read it from standard input
    #[arg(long, value_name = "HEX|-")]
    pub new_key: Option<String>,

    /// Generate the new key here (then copy it offline: `liberty show LOCKSTOCK_ACCOUNT_KEY`)
    #[arg(long)]
    pub generate: bool,

    /// Finish an interrupted rotation with the new key it kept in Liberty
    #[arg(long)]
    pub resume: bool,

    /// The current account key [default: LOCKSTOCK_ACCOUNT_KEY]
    #[arg(long, value_name = "HEX")]
    pub old_key: Option<String>,

    /// Count the agents, epochs and wrappings to re-wrap, check the old key opens them, and
    /// change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Control plane URL [default: LOCKSTOCK_URL, else http://127.0.0.1:4100]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Admin key (visible to other users: prefer LOCKSTOCK_API_KEY in Liberty)
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print shell completions or the man page.
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: Generate,
}
