//! `lockstock-cloud`: create an account, serve the control plane, rotate the gateway key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use lockstock_cloud::cli::{Cli, Command, KeysCommand};
use lockstock_cloud::{Account, ServerConfig, TlsFiles};
use secrecy::ExposeSecret;

fn data_dir(data: Option<PathBuf>) -> Result<PathBuf> {
    data.or_else(lockstock_cloud::default_data_dir)
        .context("no data directory: pass --data DIR (neither XDG_DATA_HOME nor HOME is set)")
}

fn main() -> ExitCode {
    // Everything this process creates is private to its user.
    // SAFETY: umask only changes this process's file-creation mask; no memory is involved.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstock-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { data, json } => {
            let dir = data_dir(data)?;
            let keys = Account::init(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "admin_key": keys.admin_key.expose_secret(),
                        "gateway_key": keys.gateway_key.expose_secret(),
                        "account_id": keys.account_id,
                    })
                );
            } else {
                println!("Account {} created in {}.", keys.account_id, dir.display());
                println!();
                println!("Admin key:   {}", keys.admin_key.expose_secret());
                println!("Gateway key: {}", keys.gateway_key.expose_secret());
                println!();
                println!(
                    "These keys are shown once and stored only as hashes. Keep them in Liberty:"
                );
                println!("  liberty add LOCKSTOCK_API_KEY      (the admin key)");
                println!("  liberty add LOCKSTOCK_GATEWAY_KEY  (the gateway key)");
            }
            Ok(())
        }
        Command::Serve {
            data,
            listen,
            tls_cert,
            tls_key,
            reservation_ttl,
            default_output_cap,
        } => {
            init_logging();
            let mut config = ServerConfig::new(data_dir(data)?);
            config.tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| TlsFiles { cert, key });
            config.reservation_ttl =
                std::time::Duration::from_secs(reservation_ttl.saturating_mul(60));
            config.default_output_cap = default_output_cap;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                lockstock_cloud::serve(listener, config, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Keys {
            command: KeysCommand::RotateGateway { data },
        } => {
            let key = Account::rotate_gateway_key(&data_dir(data)?)?;
            println!("{}", key.expose_secret());
            Ok(())
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(lockstock::env::LOCKSTOCK_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
