//! The gateway in this process: `start --native` (foreground or `--detach`ed), the hidden
//! `serve` the container runs, and `stop`/`status` for native runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lockstock::client::InProcess;
use lockstock::config::GatewayConfig;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::cli::Start;
use crate::settings::{Resolved, Sources};

/// `$XDG_STATE_HOME/lockstock` (or `~/.local/state/lockstock`): pid file and detached logs.
pub fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::home_dir()
                .unwrap_or_default()
                .join(".local/state")
        })
        .join("lockstock")
}

fn pid_file() -> PathBuf {
    state_dir().join("gateway.pid")
}

/// A detached native gateway, from its pid file: (pid, listen address), if it is alive.
pub fn running_native() -> Option<(i32, SocketAddr)> {
    let text = std::fs::read_to_string(pid_file()).ok()?;
    let mut parts = text.split_whitespace();
    let pid: i32 = parts.next()?.parse().ok()?;
    let addr: SocketAddr = parts.next()?.parse().ok()?;
    let alive = unsafe { libc::kill(pid, 0) } == 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(17).any(|w| w == b"lockstock-gateway"));
    alive.then_some((pid, addr))
}

/// Binds, with a sentence when the address is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("{addr} is already in use: stop what listens there, or pass --listen with another address")
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {e}")
        }
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A control plane serving its API from this process, for a gateway in this process
/// (`quickstart`, `serve --control-plane-data`), which reaches it without a socket.
pub struct EmbeddedControlPlane {
    in_process: Arc<dyn InProcess>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), lockstock_cloud::Error>>,
}

impl EmbeddedControlPlane {
    /// Opens the control plane in `data` and serves its API on `listener`.
    pub fn start(data: &std::path::Path, listener: TcpListener) -> Result<Self> {
        let server = lockstock_cloud::Server::open(lockstock_cloud::ServerConfig::new(data))
            .with_context(|| format!("opening the control plane in {}", data.display()))?;
        let in_process = server.in_process();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            in_process,
            stop,
            task,
        })
    }

    pub fn in_process(&self) -> Arc<dyn InProcess> {
        self.in_process.clone()
    }

    /// Stops it once its last writes are durable. Stop the gateway first: its final stamps
    /// go here.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .context("the control plane's task")?
            .context("the control plane")
    }
}

/// Builds the gateway from its settings and serves until `shutdown`. With `embedded`, the
/// control plane is the one running in this process.
pub async fn run(
    settings: &BTreeMap<String, Zeroizing<String>>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    embedded: Option<Arc<dyn InProcess>>,
) -> Result<()> {
    let config = GatewayConfig::from_settings(settings).context("the gateway's settings")?;
    let addr = listener.local_addr()?;
    let (upstream, agents, sealing) = (
        settings
            .get(lockstock::env::UPSTREAM_URL)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default(),
        config.agents.len(),
        config.account.is_some(),
    );
    let (gateway, control_plane) = match embedded {
        None => {
            let url = config.control_plane_url.clone();
            (lockstock::proxy::Gateway::new(config)?, url)
        }
        Some(cloud) => (
            lockstock::proxy::Gateway::embedded(config, cloud)?,
            "in this process".to_owned(),
        ),
    };
    match gateway.preflight().await {
        Ok(problems) => {
            for p in problems {
                tracing::warn!("{p}");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "control plane not reachable yet; requests get 503 until it is")
        }
    }
    tracing::info!(
        listen = %addr,
        %upstream,
        agents,
        %control_plane,
        transcripts = if sealing { "sealed" } else { "off (no account key)" },
        "LockStock gateway {} ready",
        lockstock::VERSION
    );
    lockstock::server::serve(listener, gateway, shutdown).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

pub async fn start(src: &Sources, args: &Start) -> Result<()> {
    let res = Resolved::resolve(src, &args.overrides)?;
    let missing = res.missing_for_gateway();
    if !missing.is_empty() {
        bail!(
            "cannot start the gateway; missing:\n  - {}",
            missing.join("\n  - ")
        );
    }
    if let Some((pid, addr)) = running_native() {
        bail!(
            "the gateway is already running natively (pid {pid}, listening on {addr}); `lockstock-gateway stop` first"
        );
    }
    if args.detach {
        return detach(args).await;
    }
    let listener = bind(args.listen).await?;
    let settings = res.gateway_settings(args.listen);
    let detached = std::env::var_os("LOCKSTOCK_DETACHED").is_some();
    if detached {
        write_pid(args.listen)?;
    }
    let result = run(&settings, listener, shutdown_signal(), None).await;
    if detached {
        let _ = std::fs::remove_file(pid_file());
    }
    result
}

fn write_pid(listen: SocketAddr) -> Result<()> {
    let dir = state_dir();
    create_private_dir(&dir)?;
    std::fs::write(pid_file(), format!("{} {listen}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file().display()))
}

pub fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Re-runs this binary in the background (new session, output to a log file) and waits
/// until it answers `/healthz`. Secrets are read again by the child from Liberty, never
/// passed on its command line.
async fn detach(args: &Start) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let dir = state_dir();
    create_private_dir(&dir)?;
    let log_path = dir.join("gateway.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["start", "--native", "--listen", &args.listen.to_string()]);
    if let Some(u) = &args.overrides.upstream {
        cmd.args(["--upstream", u]);
    }
    if let Some(u) = &args.overrides.control_plane {
        cmd.args(["--control-plane", u]);
    }
    cmd.env("LOCKSTOCK_DETACHED", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the detached gateway")?;
    let url = format!("http://{}/healthz", args.listen);
    for _ in 0..100 {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the gateway exited ({status}) before it was ready; see {}",
                log_path.display()
            );
        }
        if crate::serve::healthy(&url).await.is_ok() {
            println!(
                "gateway running in the background (pid {}) on http://{}; logs: {}",
                child.id(),
                args.listen,
                log_path.display()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the gateway did not become healthy within 10 s; see {}",
        log_path.display()
    )
}

/// Stops a detached native gateway; true when one was running.
pub async fn stop() -> Result<bool> {
    let Some((pid, _)) = running_native() else {
        let _ = std::fs::remove_file(pid_file());
        return Ok(false);
    };
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..400 {
        if running_native().is_none() {
            let _ = std::fs::remove_file(pid_file());
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the gateway (pid {pid}) did not stop within 40 s")
}
