//! `install.sh --prefix DIR` builds the workspace in release mode and installs binaries,
//! completions and man pages; running it twice is fine; `--uninstall` removes it all.
//! Slow the first time (a release build); it reuses CARGO_TARGET_DIR when set.

use std::path::Path;
use std::process::Command;

fn install(root: &Path, prefix: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new("sh")
        .arg(root.join("install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .args(extra)
        .env("XDG_DATA_HOME", prefix.join("xdg-data"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh {extra:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn install_sh_installs_binaries_completions_and_man_pages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();

    let out = install(root, prefix, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("is not on your PATH"), "{said}");

    let liberty = prefix.join("bin/liberty");
    let version = Command::new(&liberty).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("liberty {}", env!("CARGO_PKG_VERSION"))
    );
    let installed = [
        "share/bash-completion/completions/liberty",
        "share/zsh/site-functions/_liberty",
        "share/man/man1/liberty.1",
    ];
    for file in installed {
        let path = prefix.join(file);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|_| panic!("{file} missing"))
            .len();
        assert!(len > 100, "{file} is empty");
    }
    let man = std::fs::read_to_string(prefix.join("share/man/man1/liberty.1")).unwrap();
    assert_eq!(
        man,
        std::fs::read_to_string(root.join("man/liberty.1")).unwrap()
    );

    // Idempotent: a second run succeeds and leaves the same files.
    install(root, prefix, &[]);
    assert!(liberty.exists());

    install(root, prefix, &["--uninstall"]);
    assert!(!liberty.exists());
    for file in installed {
        assert!(!prefix.join(file).exists(), "{file} left behind");
    }
    install(root, prefix, &["--uninstall"]);
}
