//! `lockstock-cloud`: create an account, serve the control plane, rotate the gateway key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lockstock_cloud::{Account, ServerConfig, TlsFiles};
use secrecy::ExposeSecret;

#[derive(Debug, Parser)]
#[command(
    name = "lockstock-cloud",
    version,
    about = "LockStock control plane: the ledger every gateway stamps into"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        #[arg(long, value_name = "ADDR", default_value = lockstock_cloud::DEFAULT_LISTEN)]
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
enum KeysCommand {
    /// Replace the gateway key and print the new one; the old one stops working.
    RotateGateway {
        /// Data directory [default: $XDG_DATA_HOME/lockstock-cloud]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

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
                println!("  liberty set LOCKSTOCK_API_KEY      (the admin key)");
                println!("  liberty set LOCKSTOCK_GATEWAY_KEY  (the gateway key)");
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
