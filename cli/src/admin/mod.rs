//! The admin tools' library (`lockstock-audit`, `lockstock-rotate`): reading, checking and
//! decrypting an agent's ledger, and rotating the account key. Nothing here prints; the
//! binaries narrate.
//!
//! This is the only code that links the transcript decrypt path
//! ([`lockstock::seal::open`]); the gateway binary never calls into it.

pub mod audit;

pub mod keys;
pub mod ledger;
pub mod rotate;
pub mod timefmt;
pub mod transcript;
pub mod verify;

use std::future::Future;
use std::process::ExitCode;

/// The body of an admin tool's `main`: private file mode, a runtime, one place for the exit
/// status. A closed pipe (`lockstock-audit … | head`) is not an error; any other error is
/// printed once, with its causes, as `NAME: error: …`.
pub fn run_main<F>(name: &str, run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<ExitCode>>,
{
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c
            .downcast_ref::<std::io::Error>()
            .or_else(|| match c.downcast_ref() {
                Some(audit::AuditError::Output(io)) => Some(io),
                _ => None,
            });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
