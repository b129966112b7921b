//! `start`, `stop`, `status`, `logs` and `restart` of the gateway container.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HealthConfig,
    HealthStatusEnum, HostConfig, Mount, MountType, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use lockstock::env;
use zeroize::Zeroizing;

use super::engine::{Engine, reason, status};
use super::image::{BINARY_IN_IMAGE, default_image};
use super::secrets_file::{SettingsFile, chown};
use super::{
    CONTAINER_NAME, Error, IMAGE_UID, LABEL_AGENTS, LABEL_COMPONENT, LABEL_LISTEN, LABEL_MANAGED,
    LABEL_VERSION, SETTINGS_IN_CONTAINER, SPOOL_IN_CONTAINER,
};
use crate::cli::Overrides;
use crate::settings::{Resolved, Sources};

/// Seconds the engine gives the gateway to drain on `stop` (its own grace is 30 s).
const STOP_GRACE_S: i32 = 35;

/// What `start` and `restart` need.
pub struct StartRequest {
    pub listen: SocketAddr,
    pub image: Option<String>,
    pub overrides: Overrides,
    /// Extra labels (KEY=VALUE) on the container.
    pub labels: Vec<(String, String)>,
    /// How long to wait for `/healthz`.
    pub timeout: Duration,
}

/// How `start` ended when it did not fail.
pub enum Started {
    Now {
        listen: SocketAddr,
        image: String,
        user: String,
        healthy_after: Duration,
        settings_dir: PathBuf,
    },
    Already {
        listen: String,
        uptime: Option<u64>,
    },
}

/// Parses `KEY=VALUE` labels given on the command line.
pub fn parse_labels(given: &[String]) -> Result<Vec<(String, String)>, String> {
    given
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(format!("--label {l:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// The address to probe from the host for a listen address (a wildcard means loopback).
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// The container, or None when there is none.
pub async fn inspect(engine: &Engine) -> Result<Option<ContainerInspectResponse>, Error> {
    match engine
        .docker
        .inspect_container(
            CONTAINER_NAME,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(c) => Ok(Some(c)),
        Err(e) if status(&e) == Some(404) => Ok(None),
        Err(e) => Err(Error::Inspect {
            name: CONTAINER_NAME.into(),
            reason: reason(&e),
        }),
    }
}

fn label<'a>(c: &'a ContainerInspectResponse, key: &str) -> Option<&'a str> {
    c.config
        .as_ref()?
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn is_ours(c: &ContainerInspectResponse) -> bool {
    label(c, LABEL_MANAGED) == Some("true")
}

fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

/// Seconds since an RFC 3339 UTC timestamp as the engine writes it
/// (`2026-05-07T21:09:36.123456789Z`).
pub fn seconds_since(ts: &str) -> Option<u64> {
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+', '.']).next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if y < 1971 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let then = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    u64::try_from(now - then).ok()
}

/// "a, b, c", or "none".
pub fn list_or_none(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The last `n` lines of the container's output.
pub async fn last_logs(engine: &Engine, n: usize) -> Vec<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: n.to_string(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut stream = engine.docker.logs(CONTAINER_NAME, Some(options));
    while let Some(Ok(chunk)) = stream.next().await {
        let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
        out.extend(text.lines().map(str::to_owned));
    }
    let skip = out.len().saturating_sub(n);
    out.split_off(skip)
}

async fn remove(engine: &Engine) -> Result<(), Error> {
    match engine
        .docker
        .remove_container(
            CONTAINER_NAME,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if status(&e) == Some(404) => Ok(()),
        Err(e) => Err(Error::Remove {
            name: CONTAINER_NAME.into(),
            reason: reason(&e),
        }),
    }
}

/// Who the container runs as: nobody when the operator is root (files are chowned to it),
/// else the operator, so that it can read the operator's 0600 file.
fn container_user() -> (u32, u32, bool) {
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        (IMAGE_UID, IMAGE_UID, true)
    } else {
        (uid, gid, false)
    }
}

/// `start` in container mode.
pub async fn start(src: &Sources, req: &StartRequest) -> Result<Started, Error> {
    let res =
        Resolved::resolve(src, &req.overrides).map_err(|e| Error::Invalid(format!("{e:#}")))?;
    let missing = res.missing_for_gateway();
    if !missing.is_empty() {
        return Err(Error::Missing(missing));
    }
    let mut settings = res.gateway_settings(req.listen);
    settings.insert(
        env::LOCKSTOCK_SPOOL_DIR.to_owned(),
        Zeroizing::new(SPOOL_IN_CONTAINER.to_owned()),
    );
    // The check the gateway makes when it starts, made before anything reaches Docker.
    if let Err(e) = lockstock::config::GatewayConfig::from_settings(&settings) {
        return Err(Error::Invalid(e.to_string()));
    }
    if let Some((pid, listen)) = crate::native::running_native() {
        return Err(Error::NativeRunning { pid, listen });
    }
    let engine = Engine::connect().await?;
    if let Some(c) = inspect(&engine).await? {
        if !is_ours(&c) {
            return Err(Error::Foreign {
                name: CONTAINER_NAME.into(),
            });
        }
        if is_running(&c) {
            return Ok(Started::Already {
                listen: label(&c, LABEL_LISTEN).unwrap_or("?").to_owned(),
                uptime: c
                    .state
                    .as_ref()
                    .and_then(|s| s.started_at.as_deref())
                    .and_then(seconds_since),
            });
        }
        // A stopped or failed one: its settings are gone, so it can only be replaced.
        remove(&engine).await?;
    }
    let image = req.image.clone().unwrap_or_else(default_image);
    match engine.docker.inspect_image(&image).await {
        Ok(_) => {}
        Err(e) if status(&e) == Some(404) => return Err(Error::ImageMissing { image }),
        Err(e) => {
            return Err(Error::InspectImage {
                image,
                reason: reason(&e),
            });
        }
    }
    // Fail early and clearly when the address is taken (the container would exit on it).
    match std::net::TcpListener::bind(req.listen) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(Error::PortTaken { listen: req.listen });
        }
        _ => {}
    }

    let (uid, gid, chowned) = container_user();
    let spool = crate::native::state_dir().join("spool");
    crate::native::create_private_dir(&spool)
        .map_err(|e| Error::Files(std::io::Error::other(format!("{e:#}"))))?;
    if chowned {
        chown(&spool, uid, gid).map_err(Error::Files)?;
    }
    // From here on the guard shreds the file on every way out.
    let mut file =
        SettingsFile::create(&settings, chowned.then_some((uid, gid))).map_err(Error::Files)?;
    drop(settings);
    if !file.in_memory {
        tracing::warn!(
            dir = %file.dir().display(),
            "no tmpfs for the settings file: it sits on disk until the gateway is up, then it is overwritten and removed"
        );
    }
    let settings_dir = file.dir().to_owned();

    let mut labels: HashMap<String, String> = req.labels.iter().cloned().collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_COMPONENT.into(), "gateway".into());
    labels.insert(LABEL_VERSION.into(), lockstock::VERSION.into());
    labels.insert(LABEL_LISTEN.into(), req.listen.to_string());
    labels.insert(
        LABEL_AGENTS.into(),
        res.agents
            .iter()
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let secs = |s: i64| s * 1_000_000_000;
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        user: Some(format!("{uid}:{gid}")),
        cmd: Some(vec![
            "serve".into(),
            "--settings".into(),
            SETTINGS_IN_CONTAINER.into(),
            "--listen".into(),
            req.listen.to_string(),
        ]),
        // Only the log filter, never a secret.
        env: std::env::var(env::LOCKSTOCK_LOG)
            .ok()
            .map(|v| vec![format!("{}={v}", env::LOCKSTOCK_LOG)]),
        labels: Some(labels),
        healthcheck: Some(HealthConfig {
            test: Some(vec![
                "CMD".into(),
                BINARY_IN_IMAGE.into(),
                "healthcheck".into(),
                "--url".into(),
                format!("http://{}", probe_addr(req.listen)),
            ]),
            interval: Some(secs(10)),
            timeout: Some(secs(3)),
            retries: Some(3),
            start_period: Some(secs(5)),
            // Engines with API >= 1.44 probe every second while starting; older ones ignore it.
            start_interval: Some(secs(1)),
        }),
        stop_timeout: Some(STOP_GRACE_S as i64),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            mounts: Some(vec![
                Mount {
                    target: Some(SETTINGS_IN_CONTAINER.into()),
                    source: Some(file.path().display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                },
                Mount {
                    target: Some(SPOOL_IN_CONTAINER.into()),
                    source: Some(spool.display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(false),
                    ..Default::default()
                },
            ]),
            // The settings file is gone once the gateway runs: an engine restart could not
            // re-read its secrets, so it would come back broken. `restart` re-creates it.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(4096),
            ..Default::default()
        }),
        ..Default::default()
    };
    let outcome = launch(&engine, &res, req, body).await;
    // Success or failure, the file goes now.
    let shred = file.shred();
    match outcome {
        Ok(healthy_after) => {
            shred.map_err(|e| {
                Error::Files(std::io::Error::other(format!(
                    "the gateway runs, but shredding {} failed: {e}",
                    settings_dir.display()
                )))
            })?;
            Ok(Started::Now {
                listen: req.listen,
                image,
                user: format!("{uid}:{gid}"),
                healthy_after,
                settings_dir,
            })
        }
        Err(Failed { why, logs }) => {
            if !logs.is_empty() {
                eprintln!("last lines of the gateway container's log:");
                for l in &logs {
                    eprintln!("  {l}");
                }
            }
            let _ = remove(&engine).await;
            let shredded = match shred {
                Ok(()) => "the settings file was shredded",
                Err(_) => "shredding the settings file FAILED (see above)",
            };
            Err(Error::Unhealthy {
                why: format!("{why} (the container was removed; {shredded})"),
            })
        }
    }
}

struct Failed {
    why: String,
    logs: Vec<String>,
}

impl Failed {
    fn new(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            logs: Vec::new(),
        }
    }
}

/// Creates and starts the container, waits for `/healthz`, and checks what `/healthz` does
/// not: that the control plane takes the gateway key, and that the upstream answers.
async fn launch(
    engine: &Engine,
    res: &Resolved,
    req: &StartRequest,
    body: ContainerCreateBody,
) -> Result<Duration, Failed> {
    let create = CreateContainerOptions {
        name: Some(CONTAINER_NAME.into()),
        ..Default::default()
    };
    engine
        .docker
        .create_container(Some(create), body)
        .await
        .map_err(|e| {
            Failed::new(
                Error::Create {
                    name: CONTAINER_NAME.into(),
                    reason: reason(&e),
                }
                .to_string(),
            )
        })?;
    let started = Instant::now();
    engine
        .docker
        .start_container(
            CONTAINER_NAME,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| {
            Failed::new(
                Error::Start {
                    name: CONTAINER_NAME.into(),
                    reason: reason(&e),
                }
                .to_string(),
            )
        })?;
    let healthy_after = wait_healthy(engine, req, started).await;
    let healthy_after = match healthy_after {
        Ok(d) => d,
        Err(why) => {
            return Err(Failed {
                why,
                logs: last_logs(engine, 20).await,
            });
        }
    };
    if let Err(why) = verify(res).await {
        return Err(Failed {
            why,
            logs: last_logs(engine, 20).await,
        });
    }
    Ok(healthy_after)
}

/// Polls the container's state and `/healthz` (from the host: host networking) until healthy.
async fn wait_healthy(
    engine: &Engine,
    req: &StartRequest,
    started: Instant,
) -> Result<Duration, String> {
    let url = format!("http://{}/healthz", probe_addr(req.listen));
    let client = lockstock::http::client(lockstock::http::ClientOptions {
        connect_timeout: Duration::from_secs(1),
        pool_max_idle_per_host: 0,
        ..Default::default()
    });
    let mut last;
    loop {
        match inspect(engine).await {
            Ok(Some(c)) if is_running(&c) => {}
            Ok(Some(c)) => {
                let st = c.state.unwrap_or_default();
                let mut why = format!(
                    "the gateway container exited (code {}) before it was healthy",
                    st.exit_code.unwrap_or(-1)
                );
                if let Some(e) = st.error.filter(|e| !e.is_empty()) {
                    why.push_str(&format!(": {e}"));
                } else if let Some(line) = last_logs(engine, 1).await.pop() {
                    let line = line.trim();
                    why.push_str(&format!(
                        ": {}",
                        line.strip_prefix("error: ").unwrap_or(line)
                    ));
                }
                return Err(why);
            }
            Ok(None) => return Err("the gateway container vanished while starting".into()),
            Err(e) => return Err(e.to_string()),
        }
        let probe = async {
            let req = http::Request::get(&url).body(lockstock::http::full(bytes::Bytes::new()))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        match tokio::time::timeout(Duration::from_secs(3), probe).await {
            Ok(Ok((s, _))) if s.is_success() => {
                let healthy_after = started.elapsed();
                // Still ours and running (not someone else answering on the port)?
                return match inspect(engine).await {
                    Ok(Some(c)) if is_running(&c) => Ok(healthy_after),
                    _ => Err("the gateway container stopped right after starting".into()),
                };
            }
            Ok(Ok((s, body))) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                last = match v["reason"].as_str() {
                    Some(r) => format!("/healthz answers {s}: {r}"),
                    None => format!("/healthz answers {s}"),
                };
            }
            Ok(Err(e)) => last = format!("{url} does not answer ({e})"),
            Err(_) => last = format!("{url} did not answer within 3 s"),
        }
        if started.elapsed() > req.timeout {
            return Err(format!(
                "the gateway was not healthy within {} s: {last}",
                req.timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What `/healthz` does not prove: the control plane accepts the gateway key (read an
/// agent's policy, which the gateway key may do), and the upstream answers HTTP at all.
async fn verify(res: &Resolved) -> Result<(), String> {
    let cp = res.gateway().map_err(|e| format!("{e:#}"))?;
    let cp_url = res.control_plane.value.as_str();
    if let Some((_, agent)) = res.agents.first() {
        match cp.policy(agent).await {
            Ok(policy) => {
                let ours = res
                    .seed
                    .as_ref()
                    .and_then(|s| lockstock::secret::key_from_hex(&s.value))
                    .map(|seed| {
                        hex::encode(
                            lockstock::agent::signing_key(&seed, agent)
                                .verifying_key()
                                .to_bytes(),
                        )
                    });
                match (&policy.public_key, ours) {
                    (None, _) => eprintln!(
                        "warning: {agent} is not activated yet: run `lockstock-gateway activate`"
                    ),
                    (Some(k), Some(o)) if *k != o => eprintln!(
                        "warning: {agent} was activated with another key than this MLS_SEED gives; its requests will be refused"
                    ),
                    _ => {}
                }
            }
            Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) => {
                return Err(format!(
                    "the control plane at {cp_url} refused the gateway key ({e}): store the right one with `liberty add {}`",
                    env::LOCKSTOCK_GATEWAY_KEY
                ));
            }
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {
                eprintln!("warning: the control plane does not know {agent}");
            }
            Err(e) => {
                return Err(format!(
                    "the control plane at {cp_url} did not answer for {agent}: {e}"
                ));
            }
        }
    }
    let upstream = res.upstream.value.as_str();
    let client = lockstock::http::client(lockstock::http::ClientOptions {
        connect_timeout: Duration::from_secs(3),
        pool_max_idle_per_host: 0,
        ..Default::default()
    });
    let request = http::Request::get(upstream)
        .body(lockstock::http::full(bytes::Bytes::new()))
        .map_err(|e| format!("the upstream URL {upstream:?} is not a URL: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let mut detail = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                detail = format!("{detail}: {s}");
                src = s.source();
            }
            Err(format!(
                "the upstream {upstream} does not answer ({detail}): fix {} in Liberty or pass --upstream",
                env::LOCKSTOCK_UPSTREAM_URL
            ))
        }
        Err(_) => Err(format!(
            "the upstream {upstream} did not answer within 5 s: fix {} in Liberty or pass --upstream",
            env::LOCKSTOCK_UPSTREAM_URL
        )),
    }
}

/// `stop`: stops and removes the container; Ok(false) when there was none.
pub async fn stop(engine: &Engine) -> Result<bool, Error> {
    let Some(c) = inspect(engine).await? else {
        return Ok(false);
    };
    if !is_ours(&c) {
        return Err(Error::Foreign {
            name: CONTAINER_NAME.into(),
        });
    }
    if is_running(&c) {
        match engine
            .docker
            .stop_container(
                CONTAINER_NAME,
                Some(StopContainerOptions {
                    t: Some(STOP_GRACE_S),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => {}
            // 304: already stopped; 404: removed meanwhile.
            Err(e) if matches!(status(&e), Some(304 | 404)) => {}
            Err(e) => {
                return Err(Error::Stop {
                    name: CONTAINER_NAME.into(),
                    reason: reason(&e),
                });
            }
        }
    }
    remove(engine).await?;
    Ok(true)
}

/// What `status` reports about the container.
pub struct Report {
    pub json: serde_json::Value,
    pub text: Vec<String>,
    pub healthy: bool,
}

/// `status` of the container (the configuration summary is added by the caller).
pub async fn status_report(engine: &Engine) -> Result<Report, Error> {
    let Some(c) = inspect(engine).await? else {
        return Ok(Report {
            json: serde_json::json!({"state": "stopped", "healthy": false, "mode": null,
                "detail": "no gateway is running"}),
            text: vec!["stopped: no gateway is running".into()],
            healthy: false,
        });
    };
    let st = c.state.clone().unwrap_or_default();
    let state = st
        .status
        .map(|s| match s {
            ContainerStateStatusEnum::EMPTY => "unknown".to_owned(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "unknown".into());
    let engine_health = st
        .health
        .as_ref()
        .and_then(|h| h.status)
        .map(|h| match h {
            HealthStatusEnum::EMPTY => "none".to_owned(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "none".into());
    let listen = label(&c, LABEL_LISTEN).map(str::to_owned);
    let uptime = if is_running(&c) {
        st.started_at.as_deref().and_then(seconds_since)
    } else {
        None
    };
    let image = c.config.as_ref().and_then(|cfg| cfg.image.clone());
    let agents: Vec<String> = label(&c, LABEL_AGENTS)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let (probe_ok, probe_detail) = match (is_running(&c), listen.as_deref()) {
        (true, Some(l)) => match l.parse::<SocketAddr>() {
            Ok(addr) => {
                match crate::serve::healthcheck(&format!("http://{}", probe_addr(addr))).await {
                    Ok(()) => (true, "ok".to_owned()),
                    Err(e) => (false, format!("{e:#}")),
                }
            }
            Err(_) => (false, format!("bad listen label {l:?}")),
        },
        (true, None) => (false, "no listen address recorded".into()),
        (false, _) => (false, "not running".into()),
    };
    let healthy = is_running(&c) && probe_ok;
    let summary = if healthy {
        "running"
    } else if is_running(&c) {
        "unhealthy"
    } else {
        "stopped"
    };
    let mut text = vec![format!(
        "{summary}: container {CONTAINER_NAME} is {state}{}",
        if is_running(&c) {
            format!(" (engine health: {engine_health})")
        } else {
            format!(" (exit code {})", st.exit_code.unwrap_or(0))
        }
    )];
    let row = |k: &str, v: String| format!("  {k:<9} {v}");
    if let Some(i) = &image {
        text.push(row("image", i.clone()));
    }
    if let Some(l) = &listen {
        text.push(row(
            "listen",
            format!("http://{l}  (/healthz: {probe_detail})"),
        ));
    }
    if let Some(u) = uptime {
        text.push(row("uptime", human_duration(u)));
    }
    if let Some(user) = c.config.as_ref().and_then(|cfg| cfg.user.clone()) {
        text.push(row("user", user));
    }
    text.push(row("agents", list_or_none(&agents)));
    let json = serde_json::json!({
        "state": summary,
        "healthy": healthy,
        "mode": "container",
        "container": {
            "name": CONTAINER_NAME,
            "id": c.id,
            "state": state,
            "engine_health": engine_health,
            "exit_code": st.exit_code,
            "started_at": st.started_at,
            "uptime_seconds": uptime,
            "image": image,
            "image_id": c.image,
            "user": c.config.as_ref().and_then(|cfg| cfg.user.clone()),
            "version": label(&c, LABEL_VERSION),
        },
        "listen": listen,
        "healthz": probe_detail,
        "agents": agents,
        "engine": engine.endpoint,
    });
    Ok(Report {
        json,
        text,
        healthy,
    })
}

/// `logs`: the container's output, optionally followed.
pub async fn logs(engine: &Engine, follow: bool, tail: Option<u64>) -> Result<bool, Error> {
    use std::io::Write;
    if inspect(engine).await?.is_none() {
        return Ok(false);
    }
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        tail: tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
        ..Default::default()
    };
    let mut stream = engine.docker.logs(CONTAINER_NAME, Some(options));
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Logs {
            name: CONTAINER_NAME.into(),
            reason: reason(&e),
        })?;
        let written = match chunk {
            bollard::container::LogOutput::StdErr { message } => err.write_all(&message),
            other => out.write_all(&other.into_bytes()).and_then(|_| out.flush()),
        };
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(Error::Logs {
                name: CONTAINER_NAME.into(),
                reason: e.to_string(),
            });
        }
    }
    Ok(true)
}

/// The listen address and image of the current container, for `restart`.
pub async fn current(engine: &Engine) -> Result<(Option<SocketAddr>, Option<String>), Error> {
    Ok(match inspect(engine).await? {
        Some(c) => (
            label(&c, LABEL_LISTEN).and_then(|l| l.parse().ok()),
            c.config.as_ref().and_then(|cfg| cfg.image.clone()),
        ),
        None => (None, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_parses_engine_timestamps() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // 2024-02-29T12:00:00Z is 1709208000.
        let s = seconds_since("2024-02-29T12:00:00.123456789Z").unwrap();
        assert!((now - 1_709_208_000).abs_diff(s) <= 2, "{s}");
        assert!(seconds_since("0001-01-01T00:00:00Z").is_none());
        assert!(seconds_since("garbage").is_none());
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:4000".parse().unwrap()),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:4000".parse().unwrap()),
            "[::1]:4000".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.0.0.2:4000".parse().unwrap()),
            "10.0.0.2:4000".parse().unwrap()
        );
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(
            parse_labels(&["a=b".into(), "c=".into()]).unwrap(),
            vec![("a".into(), "b".into()), ("c".into(), "".into())]
        );
        assert!(parse_labels(&["nokey".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
    }
}
