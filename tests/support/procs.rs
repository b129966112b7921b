//! Running the real binaries in a sandbox: temp HOME and XDG dirs, a private Liberty vault,
//! and none of the user's LockStock, Liberty or provider variables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn bin(name: &str) -> PathBuf {
    match name {
        "liberty" => PathBuf::from(env!("CARGO_BIN_EXE_liberty")),
        "lockstock-gateway" => PathBuf::from(env!("CARGO_BIN_EXE_lockstock-gateway")),
        "lockstock-audit" => PathBuf::from(env!("CARGO_BIN_EXE_lockstock-audit")),
        "lockstock-rotate" => PathBuf::from(env!("CARGO_BIN_EXE_lockstock-rotate")),
        other => panic!("unknown binary {other}"),
    }
}

/// Variables a test must not inherit from the developer's shell.
const SCRUB_PREFIXES: &[&str] = &["LIBERTY_", "LOCKSTOCK_", "OPENAI_", "ANTHROPIC_", "XDG_"];
const SCRUB: &[&str] = &[
    "AGENT_ID",
    "UPSTREAM_URL",
    "ACCOUNT_KEY",
    "ACCOUNT_PUBLIC_KEY",
    "MLS_SEED",
];

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let vars = vec![
            ("HOME".to_owned(), p("home")),
            ("XDG_DATA_HOME".to_owned(), p("data")),
            ("XDG_STATE_HOME".to_owned(), p("state")),
            ("XDG_CONFIG_HOME".to_owned(), p("config")),
            ("LIBERTY_HOME".to_owned(), p("vault")),
            ("LIBERTY_KEY_DIR".to_owned(), p("keys")),
            ("LOCKSTOCK_LOG".to_owned(), "info".to_owned()),
        ];
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self { dir, vars }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(name, _)| name != k);
        self.vars.push((k.to_owned(), v.to_owned()));
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            if SCRUB.contains(&k.as_str()) || SCRUB_PREFIXES.iter().any(|p| k.starts_with(p)) {
                c.env_remove(&k);
            }
        }
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs a binary to completion, feeding `stdin` when given.
    pub fn run(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.command(bin(name));
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = c.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs a binary and insists it succeeds; returns stdout.
    pub fn ok(&self, name: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(name, args, stdin);
        assert!(
            out.status.success(),
            "{name} {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `liberty init` and the entries given.
    pub fn vault(&self, entries: &[(&str, &str)]) {
        self.ok("liberty", &["init"], None);
        for (k, v) in entries {
            self.ok("liberty", &["add", "--force", k], Some(v));
        }
    }

    /// Starts `lockstock-gateway start --native` on a free port and waits for `/healthz`.
    pub async fn gateway(&self, extra: &[&str]) -> GatewayProcess {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = self.path().join(format!("gateway-{port}.log"));
        let mut args = vec!["start", "--native", "--listen", &listen];
        args.extend_from_slice(extra);
        let child = self
            .command(bin("lockstock-gateway"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(log.with_extension("err")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut gw = GatewayProcess {
            child,
            url: format!("http://{listen}"),
            log,
        };
        let http = super::Http::default();
        for _ in 0..200 {
            if let Some(status) = gw.child.try_wait().unwrap() {
                panic!("gateway exited ({status}):\n{}", gw.logs());
            }
            let url = format!("{}/healthz", gw.url);
            let probe = http.try_send("GET", &url, &[], b"");
            let ok = tokio::time::timeout(Duration::from_millis(500), probe).await;
            if matches!(ok, Ok(Ok(r)) if r.status == 200) {
                return gw;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway never became healthy:\n{}", gw.logs());
    }
}

/// A gateway process, killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub url: String,
    log: PathBuf,
}

impl GatewayProcess {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
    }

    /// SIGTERM and wait; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python with the SDKs: `LOCKSTOCK_PYTHON`, else the repository's `.venv`, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKSTOCK_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Runs cases of tests/sdk/clients.py (`name` or `name=arg`) in one interpreter against a
/// gateway; returns one JSON result per case.
pub async fn sdk_many(
    cases: &[&str],
    gateway_url: &str,
    agent: Option<&str>,
) -> Vec<serde_json::Value> {
    let mut c = tokio::process::Command::new(python());
    c.arg(repo().join("tests/sdk/clients.py")).args(cases);
    c.env("OPENAI_BASE_URL", format!("{gateway_url}/v1"))
        .env("ANTHROPIC_BASE_URL", gateway_url)
        .env("OPENAI_API_KEY", "lockstock")
        .env("ANTHROPIC_API_KEY", "lockstock")
        .env("FIXTURES", repo().join("tests/fixtures"))
        .env_remove("LOCKSTOCK_AGENT");
    if let Some(a) = agent {
        c.env("LOCKSTOCK_AGENT", a);
    }
    let out = c.output().await.expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        panic!(
            "the SDK tests need the openai and anthropic packages: run `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` (or set LOCKSTOCK_PYTHON)\n{stderr}"
        );
    }
    assert!(
        out.status.success(),
        "clients.py {cases:?} failed:\n{stderr}"
    );
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("clients.py printed: {l}")))
        .collect();
    assert_eq!(results.len(), cases.len(), "one result per case");
    results
}

/// Runs one case; see [`sdk_many`].
pub async fn sdk(case: &str, gateway_url: &str, agent: Option<&str>) -> serde_json::Value {
    sdk_many(&[case], gateway_url, agent).await.remove(0)
}

/// Parses Prometheus text with the reference Python parser; returns (name, labels, value).
pub fn prometheus_samples(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(repo().join("tests/sdk/metrics_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, serde_json::Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}
