//! The checked-in completions and man pages match what the binaries generate. With
//! `LOCKSTOCK_BLESS=1` the test rewrites the checked-in files instead. `lockstock-cloud` lives
//! in a crate that cannot depend on this one, so its pages are rendered here from its clap
//! definition rather than by a `generate` subcommand.

use std::path::Path;
use std::process::Command;

use clap::CommandFactory;
use lockstock_cli::docs::{Generate, render};

/// Every binary with generated docs: add one line per binary.
const BINARIES: &[(&str, &str)] = &[
    ("liberty", env!("CARGO_BIN_EXE_liberty")),
    ("lockstock-gateway", env!("CARGO_BIN_EXE_lockstock-gateway")),
    ("lockstock-audit", env!("CARGO_BIN_EXE_lockstock-audit")),
    ("lockstock-rotate", env!("CARGO_BIN_EXE_lockstock-rotate")),
];

const KINDS: [(Generate, &str); 3] = [
    (Generate::Bash, "bash"),
    (Generate::Zsh, "zsh"),
    (Generate::Man, "man"),
];

#[test]
fn completions_and_man_pages_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bless = std::env::var_os("LOCKSTOCK_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    let mut check = |bin: &str, what: Generate, rendered: Vec<u8>| {
        assert!(!rendered.is_empty(), "{bin}: {what:?} rendered nothing");
        let path = root.join(what.checked_in_path(bin));
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&rendered[..]) {
            stale.push(path.display().to_string());
        }
    };
    for &(bin, exe) in BINARIES {
        for (what, arg) in KINDS {
            let out = Command::new(exe)
                .args(["generate", arg])
                .env_clear()
                .output()
                .unwrap();
            assert!(out.status.success(), "{bin} generate {arg}: {out:?}");
            check(bin, what, out.stdout);
        }
    }
    for (what, _) in KINDS {
        let cmd = lockstock_cloud::cli::Cli::command();
        check("lockstock-cloud", what, render(cmd, what).unwrap());
    }
    assert!(
        stale.is_empty(),
        "stale generated files (regenerate with `LOCKSTOCK_BLESS=1 cargo test -p lockstock-cli --test docs_fresh`): {stale:?}"
    );
}
