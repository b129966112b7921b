//! `lockstock-gateway`: run and operate the LockStock gateway.

mod admin;
mod agents;
mod cli;
mod container;
mod native;
mod quickstart;
mod serve;
mod settings;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{AccountCommand, Cli, Command};
use settings::{Resolved, Sources};

fn main() -> ExitCode {
    // Files this tool creates (pid files, logs, the vault) are for this user only.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Serve(_) | Command::Quickstart(_) | Command::Start(_)
    );
    init_logs(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn init_logs(default: &str) {
    let filter =
        std::env::var(lockstock::env::LOCKSTOCK_LOG).unwrap_or_else(|_| default.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let ok = ExitCode::SUCCESS;
    match cli.command {
        Command::Quickstart(args) => quickstart::quickstart(args).await.map(|_| ok),
        Command::Config(flags) => {
            let src = Sources::load();
            let res = Resolved::resolve(&src, &flags)?;
            Ok(if settings::show(&res, &src)? {
                ok
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Provision(args) => agents::provision(&mut Sources::load(), args)
            .await
            .map(|_| ok),
        Command::Activate(args) => agents::activate(&mut Sources::load(), args)
            .await
            .map(|_| ok),
        Command::Setup => {
            if agents::setup(&mut Sources::load())? {
                println!("generated MLS_SEED into Liberty");
            } else {
                println!("MLS_SEED is already in Liberty");
            }
            Ok(ok)
        }
        Command::Account(AccountCommand::Init(flags)) => {
            agents::account_init(&mut Sources::load(), &flags)
                .await
                .map(|_| ok)
        }
        Command::Start(args) => {
            let src = Sources::load();
            if args.native {
                native::start(&src, &args).await.map(|_| ok)
            } else {
                container::commands::start(&src, &args).await
            }
        }
        Command::Stop => container::commands::stop().await,
        Command::Status(args) => status(args.json).await,
        Command::Logs(args) => container::commands::logs(&args).await,
        Command::Restart(args) => container::commands::restart(&args).await,
        Command::Image(cmd) => container::commands::image(&cmd).await,
        Command::Agents(args) => admin::agents(&admin_client()?, args.json).await.map(|_| ok),
        Command::Lock(args) => {
            let (src, cp) = admin_ctx()?;
            admin::lock(&cp, &settings::resolve_agent(&src, &args.agent)?, &args)
                .await
                .map(|_| ok)
        }
        Command::Unlock(args) => {
            let (src, cp) = admin_ctx()?;
            admin::unlock(&cp, &settings::resolve_agent(&src, &args.agent)?)
                .await
                .map(|_| ok)
        }
        Command::Budget(args) => {
            let (src, cp) = admin_ctx()?;
            admin::set_budget(&cp, &settings::resolve_agent(&src, &args.agent)?, &args)
                .await
                .map(|_| ok)
        }
        Command::Sentinel(args) => {
            let (src, cp) = admin_ctx()?;
            admin::sentinel(&cp, &settings::resolve_agent(&src, &args.agent)?, &args)
                .await
                .map(|_| ok)
        }
        Command::Stamps(args) => {
            let (src, cp) = admin_ctx()?;
            admin::stamps(&cp, &settings::resolve_agent(&src, &args.agent)?, &args)
                .await
                .map(|_| ok)
        }
        Command::Alerts(args) => admin::alerts(&admin_client()?, args.json).await.map(|_| ok),
        Command::Serve(args) => serve::serve(&args).await.map(|_| ok),
        Command::Healthcheck(args) => Ok(match serve::healthcheck(&args.url).await {
            Ok(()) => ok,
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                ExitCode::FAILURE
            }
        }),
        Command::Generate(args) => {
            use clap::CommandFactory;
            use std::io::Write;
            let out = lockstock_cli::docs::render(Cli::command(), args.what)?;
            std::io::stdout().write_all(&out)?;
            Ok(ok)
        }
    }
}

fn admin_ctx() -> Result<(Sources, lockstock::client::ControlPlane)> {
    let src = Sources::load();
    let cp = Resolved::resolve(&src, &cli::Overrides::default())?.admin()?;
    Ok((src, cp))
}

fn admin_client() -> Result<lockstock::client::ControlPlane> {
    admin_ctx().map(|(_, cp)| cp)
}

async fn status(json: bool) -> Result<ExitCode> {
    let native = native::running_native();
    let (state, healthy, detail) = match native {
        Some((pid, addr)) => match serve::healthcheck(&format!("http://{addr}")).await {
            Ok(()) => (
                "running",
                true,
                format!("native, pid {pid}, listening on http://{addr}"),
            ),
            Err(e) => (
                "unhealthy",
                false,
                format!("native, pid {pid}, on http://{addr}: {e:#}"),
            ),
        },
        None => return container::commands::status(json).await,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"state": state, "healthy": healthy, "mode": native.map(|_| "native"), "detail": detail,
                "pid": native.map(|n| n.0), "listen": native.map(|n| n.1.to_string())})
        );
    } else {
        println!("{state}: {detail}");
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
