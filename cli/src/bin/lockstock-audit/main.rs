//! `lockstock-audit`: read an agent's transcripts with the account key, and verify audit
//! chains. Parses the command line, runs, and chooses the exit status in one place.

mod cli;
mod output;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use lockstock::env;
use lockstock_cli::admin::audit::{AuditError, Auditor, Options};
use lockstock_cli::admin::keys::check_account;
use lockstock_cli::admin::ledger::{parse_public_key, resolve_agent};
use lockstock_cli::admin::timefmt::{now_ms, parse_time};
use lockstock_cli::admin::verify::{VerifyOptions, verify_agent};
use lockstock_cli::config::{Origin, Sources, argv_warning};

use cli::{Cli, Command, Connection, Format, Read, Verify};

fn main() -> ExitCode {
    let cli = Cli::parse();
    lockstock_cli::admin::run_main("lockstock-audit", run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Generate(g)) => {
            use clap::CommandFactory;
            let out = lockstock_cli::docs::render(Cli::command(), g.what)?;
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify(v)) => verify(&cli.conn, v).await,
        None => read(&cli.conn, cli.read).await,
    }
}

fn warn_argv(conn: &Connection) {
    if conn.api_key.is_some() {
        eprintln!("{}", argv_warning("--api-key", env::LOCKSTOCK_API_KEY));
    }
    if conn.account_key.is_some() {
        eprintln!(
            "{}",
            argv_warning("--account-key", env::LOCKSTOCK_ACCOUNT_KEY)
        );
    }
}

async fn read(conn: &Connection, args: Read) -> Result<ExitCode> {
    warn_argv(conn);
    let src = Sources::load();
    let pages = src.admin_reader(conn.url.as_deref(), conn.api_key.as_deref())?;
    let cp = pages.control_plane().clone();
    let (account, origin) =
        src.account_key(conn.account_key.as_deref().map(|k| ("--account-key", k)))?;
    let now = now_ms();
    let time = |flag: &str, v: &Option<String>| -> Result<Option<u64>> {
        v.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(anyhow::Error::msg)
            .with_context(|| flag.to_owned())
    };
    let opts = Options {
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
        follow: args.follow,
        poll: Duration::from_millis(args.poll_ms.max(50)),
        concurrency: args.concurrency.max(1),
        ..Options::default()
    };
    let agent = resolve_agent(&cp, args.agent_id.as_deref().unwrap_or_default()).await?;
    let mut auditor = match Auditor::open(pages.clone(), agent.clone(), account).await {
        Err(AuditError::WrongAccountKey(wrong)) if !matches!(origin, Origin::Flag(_)) => {
            // A rotation interrupted after the switch leaves the new key only in …_NEXT.
            let next = src.pending_rotation_key()?;
            let info = cp.account().await?;
            match next.filter(|k| check_account(&info, k).is_ok()) {
                Some(next) => {
                    eprintln!(
                        "note: using {}: a key rotation was interrupted after the switch; run `lockstock-rotate --resume` to finish it",
                        lockstock_cli::config::LOCKSTOCK_ACCOUNT_KEY_NEXT
                    );
                    Auditor::open(pages, agent.clone(), next).await?
                }
                None => return Err(AuditError::WrongAccountKey(wrong).into()),
            }
        }
        other => other?,
    };

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let follow = args.follow;
    let format = args.format;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = auditor
        .run(
            &opts,
            |ex| {
                match format {
                    Format::Json => output::exchange_json(&mut out, ex)?,
                    Format::Text => output::exchange_text(&mut out, ex)?,
                }
                if follow {
                    out.flush()?;
                }
                Ok(())
            },
            stop,
        )
        .await?;
    out.flush()?;
    drop(out);

    for (seq, problem) in &summary.outside_problems {
        eprintln!(
            "note: seq {seq} (outside the time window) does not verify: {problem}; run `lockstock-audit verify --agent-id {agent}`"
        );
    }
    if summary.unavailable > 0 && format == Format::Text {
        eprintln!(
            "note: {} transcript(s) not available (see the `blob not available` lines)",
            summary.unavailable
        );
    }
    if summary.refused.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (seq, reason) in &summary.refused {
        eprintln!("lockstock-audit: seq {seq}: {reason}");
    }
    eprintln!(
        "lockstock-audit: {} of {} exchange(s) had refused entries\n  hint: `lockstock-audit verify --agent-id {agent}` checks the whole chain",
        summary.refused.len(),
        summary.exchanges
    );
    Ok(ExitCode::FAILURE)
}

async fn verify(conn: &Connection, args: Verify) -> Result<ExitCode> {
    warn_argv(conn);
    let src = Sources::load();
    let pages = src.admin_reader(conn.url.as_deref(), conn.api_key.as_deref())?;
    let cp = pages.control_plane().clone();
    let info = cp.account().await.context("reading the account")?;
    let explicit = conn.account_key.is_some();
    let account = match src
        .account_key_opt(conn.account_key.as_deref().map(|k| ("--account-key", k)))?
    {
        Some((key, origin)) => match check_account(&info, &key) {
            Ok(()) => Some(Arc::new(key)),
            Err(wrong) if explicit => return Err(wrong.into()),
            Err(wrong) => {
                let next = src
                    .pending_rotation_key()?
                    .filter(|k| check_account(&info, k).is_ok());
                if next.is_none() {
                    eprintln!(
                        "note: the account key from {origin} is not the account's key ({}); wrapped data keys are not opened",
                        wrong.ours
                    );
                }
                next.map(Arc::new)
            }
        },
        None => {
            eprintln!(
                "note: no account key ({}); wrapped data keys are not opened (only the account key can tell an altered one)",
                env::LOCKSTOCK_ACCOUNT_KEY
            );
            None
        }
    };
    let public_key = match &args.public_key {
        Some(hex) => Some(parse_public_key(hex).with_context(|| {
            format!("--public-key {hex:?} is not an Ed25519 public key (64 hex)")
        })?),
        None => None,
    };
    let agents = if args.all {
        cp.agents().await.context("listing the agents")?.agents
    } else {
        let id = resolve_agent(&cp, args.agent_id.as_deref().unwrap_or_default()).await?;
        vec![
            cp.agent(&id)
                .await
                .with_context(|| format!("reading agent {id}"))?,
        ]
    };
    let opts = VerifyOptions {
        public_key,
        account,
        concurrency: args.concurrency.max(1),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    for a in &agents {
        let report = verify_agent(&pages, a, &info, &opts).await?;
        if !report.ok() {
            failed += 1;
        }
        match args.format {
            Format::Text => output::report_text(&mut out, &report)?,
            Format::Json => output::report_json(&mut out, &report)?,
        }
        out.flush()?;
    }
    if failed > 0 {
        eprintln!(
            "lockstock-audit: {failed} of {} agent(s) did not verify",
            agents.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
