//! Shared by the `liberty` integration tests: a private temp world (HOME, XDG dirs, vault
//! and key directories) and a cleaned environment for running the real binary.

#![allow(dead_code)] // each test file uses a different part

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_liberty");

pub struct World {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub keys: PathBuf,
    machine: Option<String>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("vault");
        let keys = dir.path().join("keys");
        for d in ["user", "data", "state", "runtime"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        World {
            dir,
            home,
            keys,
            machine: None,
        }
    }

    /// Pretend to be the machine with this id (debug builds honour the hook).
    pub fn on_machine(mut self, id: &str) -> World {
        self.machine = Some(id.to_owned());
        self
    }

    pub fn set_machine(&mut self, id: &str) {
        self.machine = Some(id.to_owned());
    }

    pub fn vault_file(&self) -> PathBuf {
        self.home.join("vault.json")
    }

    /// `liberty ARGS` with nothing of the user's environment: only PATH and our own dirs.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.program(BIN, args)
    }

    /// `sh -c SCRIPT BIN ARGS...` in the same environment as [`World::cmd`]: `$0` is the
    /// liberty binary, so scripts can set up redirections such as `3<file`.
    pub fn sh<I, S>(&self, script: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.program("sh", ["-c", script, BIN]);
        cmd.args(args);
        cmd
    }

    fn program<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        let d = self.dir.path();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", d.join("user"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_STATE_HOME", d.join("state"))
            .env("XDG_RUNTIME_DIR", d.join("runtime"))
            .env("LIBERTY_HOME", &self.home)
            .env("LIBERTY_KEY_DIR", &self.keys)
            .env("LIBERTY_KEY_STORE", "file")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(m) = &self.machine {
            cmd.env("LIBERTY_TEST_MACHINE_ID", m);
        }
        cmd
    }

    /// Runs with `stdin` piped in (or /dev/null for `None`).
    pub fn run_with(&self, mut cmd: Command, stdin: Option<&[u8]>) -> Output {
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn run<I, S>(&self, args: I, stdin: Option<&[u8]>) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with(self.cmd(args), stdin)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.run(args, None);
        assert_success(&out);
        String::from_utf8(out.stdout).unwrap()
    }

    /// `liberty init`; returns the recovery code it printed.
    pub fn init(&self) -> String {
        let out = self.ok(["init"]);
        recovery_code(&out)
    }

    pub fn add(&self, name: &str, value: &str) {
        let out = self.run(["add", name, "-"], Some(value.as_bytes()));
        assert_success(&out);
    }

    pub fn show(&self, name: &str) -> Output {
        self.run(["show", "-n", name], None)
    }

    /// Every file under the test's private directory (vault, lock, keys, temp files).
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "liberty failed ({:?}): {}",
        out.status,
        stderr(out)
    );
}

/// The `XXXX-XXXX-...` code in `init` or `recover` output.
pub fn recovery_code(stdout: &str) -> String {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 39 && l.split('-').count() == 8)
        .unwrap_or_else(|| panic!("no recovery code in: {stdout}"))
        .to_owned()
}

pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
