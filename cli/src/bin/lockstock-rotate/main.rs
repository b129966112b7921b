//! `lockstock-rotate`: rotate the account key. Parses the command line, runs the rotation
//! (the order and its crash safety live in `lockstock_cli::admin::rotate`), narrates it on
//! stderr, and chooses the exit status in one place.

mod cli;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use lockstock::env;
use lockstock::seal::AccountKey;
use lockstock_cli::admin::rotate::{Event, NewKey, Outcome, rotate};
use lockstock_cli::config::{LOCKSTOCK_ACCOUNT_KEY_NEXT, Sources, argv_warning};
use zeroize::Zeroizing;

use cli::{Cli, Command, Rotate};

/// Debug builds only: SIGKILL this process once this many wrappings are uploaded (tests use it
/// to interrupt a rotation halfway).
#[cfg(debug_assertions)]
const TEST_KILL_AFTER: &str = "LOCKSTOCK_TEST_ROTATE_KILL_AFTER";

fn main() -> ExitCode {
    let cli = Cli::parse();
    lockstock_cli::admin::run_main("lockstock-rotate", run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(Command::Generate(g)) = cli.command {
        use clap::CommandFactory;
        let out = lockstock_cli::docs::render(Cli::command(), g.what)?;
        std::io::stdout().write_all(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    rotate_cmd(cli.rotate).await.map(|()| ExitCode::SUCCESS)
}

fn read_stdin_key() -> Result<AccountKey> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the new key from standard input")?;
    AccountKey::from_hex(line.trim())
        .context("the new key on standard input is not 64 hex characters")
}

async fn rotate_cmd(args: Rotate) -> Result<()> {
    for (flag, value, name) in [
        ("--api-key", &args.api_key, env::LOCKSTOCK_API_KEY),
        ("--old-key", &args.old_key, env::LOCKSTOCK_ACCOUNT_KEY),
    ] {
        if value.is_some() {
            eprintln!("{}", argv_warning(flag, name));
        }
    }
    let new = match (&args.new_key, args.generate) {
        (Some(v), _) if v.trim() == "-" => NewKey::Given(read_stdin_key()?),
        (Some(v), _) => {
            eprintln!(
                "warning: --new-key on the command line is visible to other users of this machine (ps, /proc/PID/cmdline); prefer --generate, or --new-key - with the key on standard input"
            );
            NewKey::Given(AccountKey::from_hex(v).context("--new-key is not 64 hex characters")?)
        }
        (None, true) => NewKey::Generate,
        (None, false) => NewKey::Resume,
    };
    let mut src = Sources::load();
    let cp = src.admin_client(args.url.as_deref(), args.api_key.as_deref())?;
    let (old, _) = src.account_key(args.old_key.as_deref().map(|k| ("--old-key", k)))?;

    #[cfg(debug_assertions)]
    let kill_after: Option<usize> = std::env::var(TEST_KILL_AFTER)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut on = |ev: Event| {
        match &ev {
            Event::Resuming { key_id } => eprintln!(
                "resuming the interrupted rotation to key {key_id} (kept in Liberty as {LOCKSTOCK_ACCOUNT_KEY_NEXT})"
            ),
            Event::KeptNext { key_id } => eprintln!(
                "kept the new key {key_id} in Liberty as {LOCKSTOCK_ACCOUNT_KEY_NEXT} until the rotation is complete"
            ),
            Event::Planned(c) => {
                eprintln!(
                    "{} agent(s), {} data key(s) wrapped to the old key: {} to re-wrap, {} already re-wrapped",
                    c.agents, c.data_keys, c.to_add, c.present
                );
                if c.foreign > 0 {
                    eprintln!(
                        "note: {} data key(s) are wrapped only to other account keys (neither old nor new); they are left as they are",
                        c.foreign
                    );
                }
            }
            Event::Uploaded { done, total } => {
                eprintln!("uploaded {done}/{total} new wrapping(s)");
                #[cfg(debug_assertions)]
                if kill_after.is_some_and(|n| *done >= n) {
                    // SAFETY: signalling this very process; it does not return.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGKILL);
                    }
                }
            }
            Event::Again => {
                eprintln!("a gateway added data keys meanwhile; re-wrapping those too")
            }
            Event::Switched { retired, key_id } => eprintln!(
                "switched the account to key {key_id}; the wrappings to the old key {retired} are deleted"
            ),
            Event::Stored => eprintln!(
                "Liberty: {} and {} now hold the new key",
                env::LOCKSTOCK_ACCOUNT_KEY,
                lockstock_cli::config::LOCKSTOCK_ACCOUNT_PUBLIC_KEY
            ),
        }
    };
    let outcome = rotate(&cp, &mut src, old, new, args.dry_run, &mut on).await?;
    report(&outcome)
}

fn report(o: &Outcome) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let c = &o.counts;
    if o.dry_run {
        writeln!(out, "agents: {}", c.agents)?;
        writeln!(out, "data keys wrapped to the old key: {}", c.data_keys)?;
        writeln!(out, "wrappings to add: {}", c.to_add)?;
        writeln!(out, "already re-wrapped: {}", c.present)?;
        writeln!(out, "wrapped only to other keys: {}", c.foreign)?;
        writeln!(out, "dry run: nothing was changed")?;
        return Ok(());
    }
    if o.was_switched {
        writeln!(
            out,
            "the account was already on key {}; Liberty now holds it too: the rotation is complete",
            o.new_public.key_id()
        )?;
    } else {
        writeln!(
            out,
            "rotated from key {} to key {}: {} data key(s) of {} agent(s) re-wrapped",
            o.old_key_id,
            o.new_public.key_id(),
            c.to_add + c.present,
            c.agents
        )?;
    }
    if o.generated.is_some() {
        eprintln!(
            "\nThe new account key is the only way to read transcripts from now on: make an offline copy\n(`liberty show {}`).",
            env::LOCKSTOCK_ACCOUNT_KEY
        );
    }
    eprintln!(
        "\nRunning gateways keep sealing to the old public key (key {}) until they restart, and\nthe control plane no longer keeps wrappings to it: restart them now.\n  native:    lockstock-gateway stop && lockstock-gateway start --native\n             (reads the new {} from Liberty)\n  container: recreate it with ACCOUNT_PUBLIC_KEY={}",
        o.old_key_id,
        lockstock_cli::config::LOCKSTOCK_ACCOUNT_PUBLIC_KEY,
        o.new_public.to_hex()
    );
    Ok(())
}
