//! Helpers that run the real `lockstock-cloud` binary (tests only: they need
//! `CARGO_BIN_EXE_lockstock-cloud`).
#![allow(dead_code)]

use std::time::Duration;

use lockstock::client::ControlPlane;
use lockstock::secret::SecretString;

/// The real `lockstock-cloud` binary, with a clean environment.
pub fn cloud_bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lockstock-cloud"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOCKSTOCK_LOG", "info");
    cmd
}

/// `lockstock-cloud ARGS… --data DIR`, which must succeed: its stdout.
pub fn run_ok(args: &[&str], dir: &std::path::Path) -> Vec<u8> {
    let out = cloud_bin()
        .args(args)
        .arg("--data")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `lockstock-cloud init --data DIR --json`: (admin key, gateway key).
pub fn init_with_binary(dir: &std::path::Path) -> (String, String) {
    let stdout = run_ok(&["init", "--json"], dir);
    let v: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    (
        v["admin_key"].as_str().unwrap().to_owned(),
        v["gateway_key"].as_str().unwrap().to_owned(),
    )
}

/// A running `lockstock-cloud serve`; killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT` (or https).
    pub url: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Starts `serve --data DIR --listen 127.0.0.1:0 EXTRA…` and waits until it listens.
    pub fn serve(dir: &std::path::Path, extra: &[&str], scheme: &str) -> Self {
        use std::io::BufRead;
        let mut child = cloud_bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                {
                    let _ = tx.send(addr.to_owned());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start:\n{}", stderr.lock().unwrap());
            }
        };
        Self {
            child,
            url: format!("{scheme}://{addr}"),
            stderr,
        }
    }

    pub fn client(&self, key: &str) -> ControlPlane {
        ControlPlane::new(&self.url, &SecretString::from(key.to_owned()))
            .unwrap()
            .with_timeout(Duration::from_secs(10))
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
