//! The command line of `liberty`: clap definitions only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lockstock_cli::docs::Generate;

const ABOUT: &str =
    "Liberty keeps your secrets (API keys, tokens) encrypted and bound to this machine";

const LONG_ABOUT: &str = "\
Liberty keeps your secrets (API keys, tokens, passwords) in an encrypted vault that only \
this machine can open. Programs get them as environment variables with `liberty exec`, \
so secrets never sit in plain-text files or in your shell history.

Start with `liberty init`, write down the recovery code it prints, then `liberty add NAME`.";

const AFTER_LONG_HELP: &str = "\
Files:
  $LIBERTY_HOME/vault.json   the encrypted vault (default ~/.local/share/liberty)
  $LIBERTY_HOME/vault.lock   held by writers so concurrent changes are never lost
  $LIBERTY_KEY_DIR/ID.key    this machine's device key, when no OS keyring is available
                             (default ~/.local/state/liberty/keys)

Environment:
  LIBERTY_HOME        where the vault lives
  LIBERTY_KEY_DIR     where device key files live (keep it outside LIBERTY_HOME)
  LIBERTY_KEY_STORE   auto (default), file or keyring: where init and recover keep the device key
  LIBERTY_PASSPHRASE  the passphrase, for vaults made with `init --passphrase`

Exit status: 0 on success, 1 on an error, 2 on a usage error. `exec` exits with the \
command's own status, 127 when the command is not found and 126 when it cannot be run.

What the machine binding protects: a copy of the vault file alone (a backup, a synced \
folder, a stolen disk image without the key) cannot be opened. It does not protect against \
someone who can run programs as you on this machine: they can run liberty too. Add \
`--passphrase` at init to require a passphrase as well.";

#[derive(Debug, Parser)]
#[command(
    name = "liberty",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// The vault directory [default: $XDG_DATA_HOME/liberty, i.e. ~/.local/share/liberty]
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "LIBERTY_HOME",
        hide_env_values = true
    )]
    pub home: Option<PathBuf>,

    /// Read the vault passphrase from this open file descriptor (for scripts: `3<file`)
    #[arg(long, global = true, value_name = "FD")]
    pub passphrase_fd: Option<u32>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty vault and print its recovery code
    #[command(long_about = "\
Create a new, empty vault in the vault directory and bind it to this machine.

It prints a recovery code exactly once. Write it down and keep it somewhere safe, away from \
this machine: it is the only way to open the vault after a reinstall, on new hardware, or if \
this machine's device key is lost (`liberty recover`). Refuses to touch an existing vault.")]
    Init {
        /// Also require a passphrase to open the vault (asked for, or from --passphrase-fd or
        /// LIBERTY_PASSPHRASE)
        #[arg(long)]
        passphrase: bool,
    },

    /// Store a secret under NAME
    #[command(
        long_about = "\
Store a secret under NAME (letters, digits and _, not starting with a digit, e.g. \
OPENAI_API_KEY).

The value is read from a hidden prompt when you are at a terminal, or from standard input \
when it is piped in or VALUE is `-` (one trailing newline is dropped). Giving VALUE on the \
command line works but is discouraged: other users can see it in the process list and it \
stays in your shell history.

Replacing an existing secret asks first at a terminal; elsewhere it needs --force.",
        after_help = "Examples:\n  liberty add OPENAI_API_KEY                 # asks for the value\n  printf %s \"$KEY\" | liberty add GITHUB_TOKEN\n  liberty add --force OPENAI_API_KEY - < key.txt"
    )]
    Add {
        /// Name of the secret, e.g. OPENAI_API_KEY
        name: String,
        /// The value; `-` (or leaving it out when input is piped) reads standard input
        value: Option<String>,
        /// Replace the secret if NAME already exists
        #[arg(short, long)]
        force: bool,
    },

    /// Print a secret's value
    #[command(long_about = "\
Print the value of the secret NAME followed by a newline on standard output, e.g. \
`export TOKEN=$(liberty show TOKEN)`. Prefer `liberty exec`, which never puts the value \
where another program can read it.")]
    Show {
        /// Name of the secret
        name: String,
        /// Do not print the trailing newline
        #[arg(short = 'n')]
        no_newline: bool,
    },

    /// List the names of the stored secrets (never their values)
    #[command(long_about = "\
List the stored secrets' names with the times they were created and last changed (UTC). \
Values are never shown.")]
    List {
        /// Print JSON instead: a list of {"name", "created", "updated"} objects
        #[arg(long)]
        json: bool,
    },

    /// Delete a secret
    #[command(
        visible_alias = "remove",
        long_about = "Delete the secret NAME from the vault. Programs started with `liberty exec` \
after this no longer get it. Fails (exit 1) if there is no such secret."
    )]
    Rm {
        /// Name of the secret to delete
        name: String,
    },

    /// Run a command with the secrets in its environment
    #[command(
        override_usage = "liberty exec [--only NAME]... -- CMD [ARGS]...",
        long_about = "\
Run CMD with every secret (or only those named with --only) added to its environment, \
under the secret's name. Liberty replaces itself with CMD: standard input and output, \
signals and the exit status are CMD's own, and no secret ever appears on a command line. \
LIBERTY_PASSPHRASE is removed from CMD's environment.",
        after_help = "Examples:\n  liberty exec -- python agent.py\n  liberty exec --only OPENAI_API_KEY -- curl -H @headers.txt https://...\n  liberty exec -- sh -c 'echo \"key is ${#OPENAI_API_KEY} characters\"'"
    )]
    Exec {
        /// Pass only this secret (repeat for several)
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
        /// The command to run, after `--`
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<String>,
    },

    /// Add secrets from a .env file
    #[command(long_about = "\
Add every NAME=value line of a dotenv file to the vault, in one step: if any line is \
malformed, nothing is imported and the error names the file and line.

Syntax: `NAME=value`, optional `export ` prefix, 'single quotes' (literal), \"double \
quotes\" (with \\n \\t \\\" \\\\ \\$ escapes), # comments and blank lines. No variable \
expansion. Existing names are replaced only with --force.

Delete the plain-text file afterwards.")]
    Import {
        /// The dotenv file
        file: PathBuf,
        /// Replace secrets that already exist
        #[arg(short, long)]
        force: bool,
    },

    /// Print all secrets in plain text as a .env file (needs --plaintext)
    #[command(long_about = "\
Print every secret as NAME=value lines (dotenv syntax that `liberty import` reads back \
exactly). This writes your secrets in plain text, where any program or backup can read \
them, so it only runs with --plaintext.")]
    Export {
        /// Acknowledge that the output contains every secret in plain text
        #[arg(long)]
        plaintext: bool,
    },

    /// Re-bind the vault to this machine with the recovery code
    #[command(long_about = "\
Open the vault with its recovery code and bind it to this machine: use it after reinstalling \
the OS, moving to new hardware, or losing the device key. All secrets are re-encrypted under \
a new key and a NEW recovery code is printed; the old code stops working.

The code is asked for at a terminal, or read from standard input. If the vault had a \
passphrase, give the passphrase it should have from now on, or pass --no-passphrase.")]
    Recover {
        /// Require a passphrase from now on (asked for, or --passphrase-fd, or LIBERTY_PASSPHRASE)
        #[arg(long, conflicts_with = "no_passphrase")]
        passphrase: bool,
        /// Stop requiring a passphrase
        #[arg(long)]
        no_passphrase: bool,
    },

    /// Show where the vault is and whether this machine can open it
    #[command(long_about = "\
Show the vault's path, where this machine's device key is kept (OS keyring or key file), \
whether a passphrase is required, how many secrets it holds, and whether this machine can \
open it. Never shows a secret. Exits 1 when the vault cannot be opened here.")]
    Status,

    /// Print shell completions or the man page
    #[command(hide = true)]
    Generate {
        /// What to print
        #[arg(value_enum)]
        what: Generate,
    },
}
