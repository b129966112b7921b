//! `fixture-upstream`: the provider stand-in of [`lockstock_testkit::upstream`] as a process,
//! for benchmarks. It counts requests instead of keeping them (`GET /__fixture/stats`), so
//! its memory stays flat over long runs.
//!
//! ```text
//! fixture-upstream [--listen 127.0.0.1:0] [--threads N]
//! ```
//!
//! Prints `http://ADDR` on the first line of stdout once it listens; stops on SIGTERM or
//! Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "fixture-upstream",
    about = "Serve the recorded provider fixtures"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixture-upstream: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("the async runtime")?;
    rt.block_on(async {
        let upstream = lockstock_testkit::upstream::Upstream::start_with(args.listen, false).await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", upstream.url())?;
        out.flush()?;
        drop(out);
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "fixture-upstream: stopping after {} requests",
            upstream.served()
        );
        Ok(())
    })
}
