//! `liberty`: the machine-bound secrets vault. Parses the command line, runs the command,
//! and chooses the exit status in one place.

mod cli;
mod commands;
mod input;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail and touches
    // no memory. Every file liberty creates is then private even where it forgets to say so.
    unsafe {
        libc::umask(0o077);
    }
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("liberty: error: {err:#}");
            ExitCode::from(commands::exit_code(&err))
        }
    }
}

/// Writing to a closed pipe (`liberty list | head -1`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
