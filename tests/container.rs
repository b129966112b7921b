//! The gateway as a container, against the real Docker engine of this machine: the image is
//! built from the gateway binary under test (no registry), `lockstock-gateway start` runs it
//! with credentials from a real Liberty vault, the real OpenAI SDK talks through it to the
//! fixture upstream, and the control plane (SQLite in a temp dir) records the stamps.
//!
//! No engine: every test that needs one says so loudly and passes, unless
//! `LOCKSTOCK_REQUIRE_DOCKER=1` (CI), where it fails. Everything the tests create carries the
//! label `io.lockstock.test-run=<this run>` and is removed at the end, failed test or not.
//! The tests share the engine and the container name `lockstock-gateway`, so they take turns.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;
use lockstock::chain::StampKind;
use lockstock::secret::ExposeSecret;
use serde_json::Value;
use support::procs::{Sandbox, bin, free_port, repo, sdk};
use support::*;

const TEST_LABEL: &str = "io.lockstock.test";
const RUN_LABEL: &str = "io.lockstock.test-run";
const CONTAINER: &str = "lockstock-gateway";

/// Tests take turns: one engine, one container name.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The image under test, built once per run.
static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        format!("{}-{t}", std::process::id())
    })
}

fn run_label() -> String {
    format!("{RUN_LABEL}={}", run_id())
}

/// The engine, or None (after a loud message) when none answers and none is required.
async fn engine() -> Option<Docker> {
    let connect = async {
        let d = Docker::connect_with_defaults()?;
        d.negotiate_version().await
    };
    let why = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(d)) => return Some(d),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    if std::env::var(lockstock::env::LOCKSTOCK_REQUIRE_DOCKER).as_deref() == Ok("1") {
        panic!("LOCKSTOCK_REQUIRE_DOCKER=1 but no Docker engine answers: {why}");
    }
    // Written past the test harness's output capture, once, so that it is seen.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n********************************************************************\n\
             SKIPPED: no Docker engine answers ({why}).\n\
             The container tests did not run; set LOCKSTOCK_REQUIRE_DOCKER=1 to fail instead.\n\
             ********************************************************************\n"
        );
    });
    None
}

/// Removes what this run created, by label: containers (and, with `images`, images and
/// volumes), from a thread of its own so it works in `Drop` and at exit.
fn remove_labelled(images: bool) {
    let label = run_label();
    let compose = format!("com.docker.compose.project={}", compose_project());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let Ok(d) = Docker::connect_with_defaults() else {
                return;
            };
            let Ok(d) = d.negotiate_version().await else {
                return;
            };
            for l in [&label, &compose] {
                let filters = HashMap::from([("label".to_owned(), vec![l.clone()])]);
                let list = d
                    .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                        all: true,
                        filters: Some(filters.clone()),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_or_default();
                for c in list {
                    if let Some(id) = c.id {
                        let _ = d
                            .remove_container(
                                &id,
                                Some(bollard::query_parameters::RemoveContainerOptions {
                                    force: true,
                                    v: true,
                                    ..Default::default()
                                }),
                            )
                            .await;
                    }
                }
                if !images {
                    continue;
                }
                let vols = d
                    .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                        filters: Some(filters.clone()),
                    }))
                    .await
                    .ok()
                    .and_then(|v| v.volumes)
                    .unwrap_or_default();
                for v in vols {
                    let _ = d
                        .remove_volume(
                            &v.name,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
                let list = d
                    .list_images(Some(bollard::query_parameters::ListImagesOptions {
                        all: true,
                        filters: Some(filters),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_or_default();
                for i in list {
                    let _ = d
                        .remove_image(
                            &i.id,
                            Some(bollard::query_parameters::RemoveImageOptions {
                                force: true,
                                ..Default::default()
                            }),
                            None,
                        )
                        .await;
                }
            }
        });
    })
    .join()
    .ok();
}

fn compose_project() -> String {
    format!("lockstocktest{}", run_id().replace('-', ""))
}

extern "C" fn remove_everything_at_exit() {
    remove_labelled(true);
}

/// Removes this run's containers when a test ends, however it ends.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_labelled(false);
    }
}

/// Builds the image under test from the gateway binary under test, once; its removal (and
/// that of everything else labelled with this run) is registered for the process's exit.
async fn image() -> String {
    IMAGE
        .get_or_init(|| async {
            // SAFETY: registering a plain extern "C" function.
            unsafe {
                libc::atexit(remove_everything_at_exit);
            }
            let tag = format!("lockstock/gateway:test-{}", run_id());
            let sb = Sandbox::new();
            let out = sb.run(
                "lockstock-gateway",
                &[
                    "image",
                    "build",
                    "--tag",
                    &tag,
                    "--label",
                    &run_label(),
                    "--label",
                    &format!("{TEST_LABEL}=container"),
                ],
                None,
            );
            assert_ok(&out, "image build");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains(&format!("built {tag}")), "{said}");
            eprintln!("{}", said.trim());
            tag
        })
        .await
        .clone()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_ok(out: &Output, what: &str) {
    let (o, e) = text(out);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{o}\n{e}",
        out.status
    );
}

fn assert_fails(out: &Output, what: &str) -> String {
    let (o, e) = text(out);
    assert_eq!(out.status.code(), Some(1), "{what} should fail:\n{o}\n{e}");
    e
}

/// A control plane, the fixture upstream, and a vault holding every credential (the admin
/// and gateway keys, a provider key, the account key after `account init`, the MLS seed and
/// one agent after `provision`).
struct World {
    sb: Sandbox,
    cloud: Cloud,
    upstream: Upstream,
    agent: lockstock::AgentId,
    listen: String,
    image: String,
    secrets: Vec<(String, String)>,
    _cleanup: Cleanup,
}

async fn world() -> World {
    let image = image().await;
    let sb = Sandbox::new();
    let cloud = Cloud::start(sb.path()).await;
    let upstream = Upstream::start().await;
    let admin = cloud.admin_key.expose_secret().to_owned();
    let gateway = cloud.gateway_key.expose_secret().to_owned();
    let provider_key = format!("sk-test-{}", hex::encode(seed().expose_secret()));
    sb.vault(&[
        ("LOCKSTOCK_API_KEY", &admin),
        ("LOCKSTOCK_GATEWAY_KEY", &gateway),
        ("LOCKSTOCK_URL", &cloud.url),
        ("LOCKSTOCK_UPSTREAM_URL", &upstream.url()),
        ("OPENAI_API_KEY", &provider_key),
    ]);
    sb.ok("lockstock-gateway", &["provision", "--name", "ctr"], None);
    sb.ok("lockstock-gateway", &["account", "init"], None);
    let show = |name: &str| sb.ok("liberty", &["show", name], None).trim().to_owned();
    let agent = show("LOCKSTOCK_AGENT_CTR").parse().unwrap();
    let secrets = vec![
        ("gateway key".to_owned(), gateway),
        ("admin key".to_owned(), admin),
        ("MLS_SEED".to_owned(), show("MLS_SEED")),
        ("account secret".to_owned(), show("LOCKSTOCK_ACCOUNT_KEY")),
        ("provider key".to_owned(), provider_key),
    ];
    World {
        sb,
        cloud,
        upstream,
        agent,
        listen: format!("127.0.0.1:{}", free_port()),
        image,
        secrets,
        _cleanup: Cleanup,
    }
}

impl World {
    fn gw(&self, args: &[&str]) -> Output {
        self.sb.run("lockstock-gateway", args, None)
    }

    fn gw_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.sb.command(bin("lockstock-gateway"));
        c.args(args).envs(env.iter().copied());
        c.stdin(std::process::Stdio::null()).output().unwrap()
    }

    fn start_args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "start",
            "--listen",
            &self.listen,
            "--image",
            &self.image,
            "--label",
            &run_label(),
            "--label",
            &format!("{TEST_LABEL}=container"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start(&self, extra: &[&str]) -> Output {
        let args = self.start_args(extra);
        self.gw(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Panics when any secret occurs in `haystack`.
    fn assert_no_secret(&self, haystack: &str, what: &str) {
        for (name, value) in &self.secrets {
            assert!(
                !haystack.contains(value.as_str()),
                "the {name} appears in {what}"
            );
        }
    }

    fn assert_no_secret_bytes(&self, haystack: &[u8], what: &str) {
        for (name, value) in &self.secrets {
            assert!(
                !haystack.windows(value.len()).any(|w| w == value.as_bytes()),
                "the {name} appears in {what}"
            );
        }
    }

    /// No file under the runtime directories holds a secret (the sandbox itself, with its
    /// encrypted vault and the control plane's data, is not a runtime directory).
    fn assert_runtime_dirs_clean(&self) {
        for dir in runtime_dirs() {
            let mut files = Vec::new();
            walk(&dir, self.sb.path(), &mut files);
            for f in files {
                if let Ok(bytes) = std::fs::read(&f) {
                    self.assert_no_secret_bytes(&bytes, &f.display().to_string());
                }
            }
        }
    }

    /// No process's command line holds a secret.
    fn assert_no_secret_in_ps(&self) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
                self.assert_no_secret_bytes(&cmd, &format!("{}/cmdline", entry.path().display()));
            }
        }
    }
}

fn runtime_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/dev/shm"), std::env::temp_dir()];
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Regular files under `dir` smaller than 1 MiB, not under `skip`, not following links.
fn walk(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.starts_with(skip) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            walk(&p, skip, out);
        } else if meta.is_file() && meta.len() < (1 << 20) {
            out.push(p);
        }
    }
}

/// Settings directories a start leaves behind (there must be none).
fn settings_dirs() -> Vec<PathBuf> {
    runtime_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lockstock-gateway-"))
                && p.is_dir()
        })
        .collect()
}

/// The directory `start` says it handed the settings over through.
fn handover_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("settings were handed over through "))
        .unwrap_or_else(|| panic!("start did not say where the settings went:\n{stdout}"));
    PathBuf::from(
        line.trim_start_matches("settings were handed over through ")
            .trim_end_matches(" and shredded"),
    )
}

async fn inspect(d: &Docker) -> Option<Value> {
    d.inspect_container(
        CONTAINER,
        None::<bollard::query_parameters::InspectContainerOptions>,
    )
    .await
    .ok()
    .map(|c| serde_json::to_value(c).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_serves_sdk_traffic_keeps_secrets_out_and_stops() {
    let Some(d) = engine().await else { return };
    let _turn = TURN.lock().await;
    let w = world().await;
    let before = settings_dirs();

    // start: healthy, and the hand-over directory is gone already.
    let out = w.start(&[]);
    assert_ok(&out, "start");
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("gateway running in container lockstock-gateway"),
        "{stdout}"
    );
    let handover = handover_dir(&stdout);
    assert!(!handover.exists(), "{} still exists", handover.display());
    if Path::new("/dev/shm").is_dir() {
        assert!(handover.starts_with("/dev/shm"), "{}", handover.display());
    }
    assert_eq!(
        settings_dirs(),
        before,
        "a settings directory was left behind"
    );
    w.assert_no_secret(&stdout, "start's output");
    w.assert_no_secret(&stderr, "start's errors");

    // What the engine knows about the container holds no secret, anywhere.
    let c = inspect(&d).await.expect("the container exists");
    w.assert_no_secret(&c.to_string(), "docker inspect");
    let img = d.inspect_image(&w.image).await.unwrap();
    w.assert_no_secret(&serde_json::to_string(&img).unwrap(), "the image");
    assert_eq!(c["Config"]["User"], "65534:65534", "root runs it as nobody");
    assert_eq!(c["HostConfig"]["NetworkMode"], "host");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(c["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(c["Config"]["Labels"]["io.lockstock.managed"], "true");
    assert_eq!(c["Config"]["Labels"][RUN_LABEL], run_id());
    assert_eq!(c["Config"]["Labels"]["io.lockstock.listen"], w.listen);
    let mounts = c["Mounts"].as_array().unwrap();
    let settings_mount = mounts
        .iter()
        .find(|m| m["Destination"] == "/run/lockstock/settings")
        .expect("the settings file is mounted");
    assert_eq!(settings_mount["RW"], false, "mounted read-only");
    assert!(
        Path::new(settings_mount["Source"].as_str().unwrap()).starts_with(&handover),
        "the mount is the file start shredded"
    );
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e.as_str().unwrap().contains("KEY") && !e.as_str().unwrap().contains("SEED"))
    );
    w.assert_no_secret_in_ps();
    w.assert_runtime_dirs_clean();

    // The real OpenAI SDK through the container to the fixture upstream.
    let got = sdk("openai_chat", &w.url(), Some(w.agent.as_str())).await;
    let chat: Value = serde_json::from_slice(&fixture("openai-chat").0).unwrap();
    assert_eq!(
        got["content"], chat["choices"][0]["message"]["content"],
        "{got}"
    );
    assert_eq!(got["usage"][0], chat["usage"]["prompt_tokens"]);
    let seen = w.upstream.requests();
    assert_eq!(
        seen.iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/chat/completions"))
            .count(),
        1,
        "the provider saw the request once: {seen:?}"
    );
    // Stamps in the control plane, and the sealed transcript delivered.
    let admin = w.cloud.admin();
    eventually(10, "the response stamp and its transcript", || async {
        let s = admin.stamps(&w.agent, 0, 100).await.unwrap().stamps;
        s.iter()
            .any(|r| r.signed.stamp.kind == StampKind::Response && r.has_blob)
    })
    .await;
    let stamps = admin.stamps(&w.agent, 0, 100).await.unwrap().stamps;
    let resp = stamps
        .iter()
        .find(|r| r.signed.stamp.kind == StampKind::Response)
        .unwrap();
    assert_eq!(
        [resp.signed.stamp.tokens_in, resp.signed.stamp.tokens_out],
        [
            chat["usage"]["prompt_tokens"].as_u64().unwrap(),
            chat["usage"]["completion_tokens"].as_u64().unwrap()
        ]
    );
    assert_eq!(resp.signed.stamp.status, 200);
    assert!(
        stamps
            .iter()
            .any(|r| r.signed.stamp.kind == StampKind::Request)
    );

    // status: healthy, exit 0, JSON with the container's facts and a masked configuration.
    let out = w.gw(&["status"]);
    assert_ok(&out, "status");
    let (stdout, _) = text(&out);
    assert!(
        stdout.starts_with("running: container lockstock-gateway is running"),
        "{stdout}"
    );
    w.assert_no_secret(&stdout, "status");
    let out = w.gw(&["status", "--json"]);
    assert_ok(&out, "status --json");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["state"], "running");
    assert_eq!(s["healthy"], true);
    assert_eq!(s["mode"], "container");
    assert_eq!(s["listen"], w.listen);
    assert_eq!(s["container"]["image"], w.image);
    assert_eq!(s["container"]["user"], "65534:65534");
    assert!(s["container"]["uptime_seconds"].as_u64().is_some());
    assert_eq!(s["agents"][0], w.agent.as_str());
    assert_eq!(s["config"]["upstream"], w.upstream.url());
    assert!(s["config"]["gateway_key"].as_str().unwrap().contains('…'));
    w.assert_no_secret(&s.to_string(), "status --json");

    // logs: the gateway's own lines, no secret.
    let out = w.gw(&["logs", "--tail", "50"]);
    assert_ok(&out, "logs");
    let (o, e) = text(&out);
    assert!(format!("{o}{e}").contains("ready"), "{o}{e}");
    w.assert_no_secret(&format!("{o}{e}"), "the container's logs");

    // logs -f follows until the container stops.
    let mut follow =
        w.sb.command(bin("lockstock-gateway"))
            .args(["logs", "-f", "--tail", "5"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let follow_err = follow.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(follow_err)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("logs -f prints the log");
    w.assert_no_secret(&first, "logs -f");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f keeps following"
    );

    // start again: already running, nothing new.
    let id = c["Id"].clone();
    let out = w.start(&[]);
    assert_ok(&out, "second start");
    assert!(text(&out).0.contains("already running"), "{:?}", text(&out));
    assert_eq!(inspect(&d).await.unwrap()["Id"], id);

    // stop twice, status stopped.
    let out = w.gw(&["stop"]);
    assert_ok(&out, "stop");
    assert!(
        text(&out)
            .0
            .contains("stopped and removed the gateway container")
    );
    assert!(inspect(&d).await.is_none(), "stop removes the container");
    let mut followed = None;
    for _ in 0..100 {
        followed = follow.try_wait().unwrap();
        if followed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = follow.kill();
    assert!(
        followed.is_some_and(|s| s.success()),
        "logs -f ends with the container: {followed:?}"
    );
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("gateway stopped")),
        "{rest:?}"
    );
    let out = w.gw(&["stop"]);
    assert_ok(&out, "second stop");
    assert!(text(&out).0.contains("not running"));
    let out = w.gw(&["status"]);
    assert_fails(&out, "status after stop");
    assert!(text(&out).0.starts_with("stopped"), "{:?}", text(&out));
    let out = w.gw(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["state"].as_str(), s["healthy"].as_bool()),
        (Some("stopped"), Some(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_starts_explain_why_shred_the_settings_and_leave_no_container() {
    let Some(d) = engine().await else { return };
    let _turn = TURN.lock().await;
    let w = world().await;
    let before = settings_dirs();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let check = |out: &Output, case: &str, why: &str| {
        let e = assert_fails(out, case);
        assert!(e.contains(why), "{case}: expected {why:?} in:\n{e}");
        w.assert_no_secret(&e, case);
        w.assert_no_secret(&text(out).0, case);
        assert_eq!(
            settings_dirs(),
            before,
            "{case}: a settings directory was left"
        );
        e
    };

    // The control plane refuses the key: found after the container ran with the file.
    let out = w.gw_env(
        &w.start_args(&[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[(
            "LOCKSTOCK_GATEWAY_KEY",
            "lsk_gateway_0000000000000000000000000000000000000000",
        )],
    );
    let e = check(&out, "bad gateway key", "refused the gateway key");
    assert!(e.contains("the settings file was shredded"), "{e}");
    assert!(e.contains("liberty add LOCKSTOCK_GATEWAY_KEY"), "{e}");
    assert!(
        inspect(&d).await.is_none(),
        "the failed container is removed"
    );

    // An upstream that does not answer.
    let out = w.start(&["--upstream", &closed]);
    let e = check(&out, "upstream down", "does not answer");
    assert!(e.contains(&closed) && e.contains("shredded"), "{e}");
    assert!(inspect(&d).await.is_none());

    // The container itself exits (it cannot listen there): its last log lines are shown.
    let out = w.start_args(&[]);
    let mut args: Vec<&str> = out.iter().map(String::as_str).collect();
    args[2] = "192.0.2.1:4000";
    let out = w.gw(&args);
    let e = check(
        &out,
        "container exits",
        "exited (code 1) before it was healthy",
    );
    assert!(
        e.contains("last lines of the gateway container's log"),
        "{e}"
    );
    assert!(e.contains("192.0.2.1:4000"), "{e}");
    assert!(inspect(&d).await.is_none());

    // The port is taken.
    let taken = std::net::TcpListener::bind(&w.listen).unwrap();
    let out = w.start(&[]);
    check(
        &out,
        "port taken",
        &format!("{} is already in use", w.listen),
    );
    drop(taken);

    // An upstream that is not a URL the gateway takes.
    let out = w.start(&["--upstream", "ftp://example.com"]);
    check(&out, "bad upstream", "only http and https");

    // No image.
    let out = w.gw(&[
        "start",
        "--listen",
        &w.listen,
        "--image",
        "lockstock/gateway:nope",
    ]);
    check(&out, "no image", "lockstock-gateway image build");

    // Nothing configured; then keys but no agent.
    let bare = Sandbox::new();
    let out = bare.run("lockstock-gateway", &["start", "--image", &w.image], None);
    let e = assert_fails(&out, "no vault");
    assert!(
        e.contains("missing") && e.contains("LOCKSTOCK_GATEWAY_KEY"),
        "{e}"
    );
    bare.vault(&[
        ("LOCKSTOCK_GATEWAY_KEY", w.cloud.gateway_key.expose_secret()),
        ("LOCKSTOCK_URL", &w.cloud.url),
        ("MLS_SEED", &w.secrets[2].1),
    ]);
    let out = bare.run("lockstock-gateway", &["start", "--image", &w.image], None);
    let e = assert_fails(&out, "no agent");
    assert!(e.contains("lockstock-gateway provision --name NAME"), "{e}");
    assert!(inspect(&d).await.is_none());
    w.assert_runtime_dirs_clean();

    // After all that, a good start works.
    assert_ok(&w.start(&[]), "start after failures");
    assert_ok(&w.gw(&["stop"]), "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recreates_the_container_with_fresh_settings() {
    let Some(d) = engine().await else { return };
    let _turn = TURN.lock().await;
    let w = world().await;
    assert_ok(&w.start(&[]), "start");
    let first = inspect(&d).await.unwrap();
    let out = w.gw(&["restart", "--label", &run_label()]);
    assert_ok(&out, "restart");
    let (stdout, _) = text(&out);
    assert!(stdout.contains("stopped the gateway container"), "{stdout}");
    assert!(!handover_dir(&stdout).exists());
    let second = inspect(&d).await.unwrap();
    assert_ne!(first["Id"], second["Id"], "a new container");
    assert_eq!(
        second["Config"]["Labels"]["io.lockstock.listen"], w.listen,
        "same address"
    );
    assert_eq!(second["Config"]["Image"], w.image, "same image");
    assert_ok(&w.gw(&["status"]), "status after restart");
    let got = sdk("openai_chat", &w.url(), Some(w.agent.as_str())).await;
    assert!(got["content"].is_string(), "{got}");

    // Why the restart policy is "no": once the settings file is shredded, the engine itself
    // cannot bring the container back; the gateway stays down, visibly, until `restart`.
    let err = d
        .restart_container(
            CONTAINER,
            None::<bollard::query_parameters::RestartContainerOptions>,
        )
        .await
        .expect_err("an engine restart cannot find the shredded settings");
    assert!(err.to_string().contains("/run/lockstock/settings"), "{err}");
    let out = w.gw(&["status"]);
    assert_fails(&out, "status after an engine restart");
    assert!(text(&out).0.starts_with("stopped"), "{:?}", text(&out));
    assert_ok(
        &w.gw(&["restart", "--label", &run_label()]),
        "restart after that",
    );
    assert_ok(&w.gw(&["status"]), "status after restart");
    assert_ok(&w.gw(&["stop"]), "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_from_scratch_small_non_root_and_matches_deploy_dockerfile() {
    let Some(d) = engine().await else { return };
    let _turn = TURN.lock().await;
    let image = image().await;
    let i = serde_json::to_value(d.inspect_image(&image).await.unwrap()).unwrap();
    let cfg = &i["Config"];
    assert_eq!(cfg["User"], "65534:65534");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/lockstock-gateway"]));
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["serve", "--settings", "/run/lockstock/settings"])
    );
    assert_eq!(
        cfg["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/lockstock-gateway", "healthcheck"])
    );
    assert_eq!(cfg["Labels"]["io.lockstock.managed"], "true");
    assert_eq!(cfg["Labels"]["io.lockstock.version"], lockstock::VERSION);
    // One layer of files, nothing but the binary and the libraries it loads. (The size
    // target, < 30 MB, is for the release binary: bench/container.sh measures it.)
    let size = i["Size"].as_u64().unwrap();
    assert!(size < 60_000_000, "the test image is {size} bytes");
    let _cleanup = Cleanup;
    let c = d
        .create_container(
            Some(bollard::query_parameters::CreateContainerOptions {
                name: None,
                ..Default::default()
            }),
            bollard::models::ContainerCreateBody {
                image: Some(image.clone()),
                labels: Some(HashMap::from([(RUN_LABEL.to_owned(), run_id().to_owned())])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    use futures_util::StreamExt;
    let mut tar = Vec::new();
    let mut s = d.export_container(&c.id);
    while let Some(chunk) = s.next().await {
        tar.extend_from_slice(&chunk.unwrap());
    }
    let mut files = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type().is_file() && e.header().size().unwrap() > 0 {
            files.push(e.path().unwrap().display().to_string());
        }
    }
    files.sort();
    let expected_libs =
        |f: &String| f == "lockstock-gateway" || f.starts_with("lib/") || f.starts_with("lib64/");
    assert!(
        files.iter().all(expected_libs),
        "unexpected files: {files:?}"
    );
    assert!(files.contains(&"lockstock-gateway".to_owned()));

    // deploy/Dockerfile's runtime stage gives the image the same user, health check,
    // entry point and command.
    let df = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let runtime = df.split("FROM scratch").nth(1).expect("a scratch stage");
    for line in [
        "USER 65534:65534",
        r#"CMD ["/lockstock-gateway", "healthcheck"]"#,
        r#"ENTRYPOINT ["/lockstock-gateway"]"#,
        r#"CMD ["serve", "--settings", "/run/lockstock/settings"]"#,
    ] {
        assert!(runtime.contains(line), "deploy/Dockerfile lacks {line}");
    }
    assert!(
        df.contains("+crt-static"),
        "deploy/Dockerfile builds a static binary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_fails_in_one_sentence_and_writes_nothing_to_docker_config() {
    if engine().await.is_none() {
        return;
    }
    let sb = Sandbox::new();
    let token = &format!("registry-token-{}", hex::encode(seed().expose_secret()));
    sb.vault(&[
        ("LOCKSTOCK_REGISTRY_USER", "robot"),
        ("LOCKSTOCK_REGISTRY_TOKEN", token.as_str()),
    ]);
    let reference = format!("127.0.0.1:{}/lockstock/gateway:0.0.0", free_port());
    let out = sb.run("lockstock-gateway", &["image", "pull", &reference], None);
    let e = assert_fails(&out, "image pull");
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one sentence: {e}");
    assert!(
        lines[0].starts_with(&format!("error: failed to pull {reference}")),
        "{e}"
    );
    assert!(lines[0].contains("lockstock-gateway image build"), "{e}");
    assert!(!e.contains(token) && !text(&out).0.contains(token));
    assert!(
        !sb.path().join("home/.docker").exists(),
        "nothing under ~/.docker"
    );
    // Only one of the two credentials: refused before any network.
    let half = Sandbox::new();
    half.vault(&[("LOCKSTOCK_REGISTRY_USER", "robot")]);
    let e = assert_fails(
        &half.run("lockstock-gateway", &["image", "pull", &reference], None),
        "half credentials",
    );
    assert!(e.contains("LOCKSTOCK_REGISTRY_TOKEN"), "{e}");
}

#[test]
fn without_an_engine_every_container_command_says_so_in_one_sentence() {
    let sb = {
        let mut sb = Sandbox::new();
        sb.set("DOCKER_HOST", "unix:///nonexistent/lockstock-test.sock");
        sb
    };
    sb.vault(&[
        ("LOCKSTOCK_GATEWAY_KEY", "lsk_gateway_x"),
        ("MLS_SEED", &"ab".repeat(32)),
        ("LOCKSTOCK_AGENT_X", "agent_0123abcd_x"),
    ]);
    // `stop` reached its goal: with no engine, no container runs.
    let out = sb.run("lockstock-gateway", &["stop"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DOCKER_HOST"));
    for args in [
        &["start"][..],
        &["status"],
        &["logs"],
        &["restart"],
        &["image", "build"],
        &["image", "pull"],
    ] {
        let out = sb.run("lockstock-gateway", args, None);
        let e = assert_fails(&out, &format!("{args:?}"));
        let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one sentence: {e}");
        assert!(
            lines[0].starts_with(
                "error: no Docker engine answers at unix:///nonexistent/lockstock-test.sock"
            ) && lines[0].contains("DOCKER_HOST"),
            "{args:?}: {e}"
        );
    }
    let mut tcp = Sandbox::new();
    tcp.set("DOCKER_HOST", &format!("tcp://127.0.0.1:{}", free_port()));
    let e = assert_fails(&tcp.run("lockstock-gateway", &["status"], None), "tcp");
    assert!(
        e.contains("no Docker engine answers at tcp://127.0.0.1:"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_file_is_valid_and_runs_the_gateway() {
    let Some(_d) = engine().await else { return };
    let compose = repo().join("deploy/compose.yaml");
    let Some(tool) = compose_tool() else {
        if std::env::var(lockstock::env::LOCKSTOCK_REQUIRE_DOCKER).as_deref() == Ok("1") {
            panic!("neither `docker compose` nor `docker-compose` is installed");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: compose_file_is_valid_and_runs_the_gateway: no docker compose tool"
        );
        return;
    };
    let _turn = TURN.lock().await;
    let w = world().await;
    // The settings file, as an operator would write it for compose (owned by the image's user).
    let settings = w.sb.path().join("gateway.settings");
    let mut body = String::new();
    for (k, v) in [
        ("LOCKSTOCK_URL", w.cloud.url.clone()),
        ("LOCKSTOCK_GATEWAY_KEY", w.secrets[0].1.clone()),
        ("UPSTREAM_URL", w.upstream.url()),
        ("MLS_SEED", w.secrets[2].1.clone()),
        ("AGENT_ID", w.agent.to_string()),
        ("LOCKSTOCK_SPOOL_DIR", "/var/spool/lockstock".into()),
    ] {
        body.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&settings, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&settings, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::os::unix::fs::chown(&settings, Some(65534), Some(65534)).unwrap();

    let project = compose_project();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(&tool[0]);
        c.args(&tool[1..])
            .args(["-f", compose.to_str().unwrap(), "-p", &project])
            .args(args)
            .env("LOCKSTOCK_IMAGE", &w.image)
            .env("LOCKSTOCK_LISTEN", &w.listen)
            .env("LOCKSTOCK_SETTINGS", &settings);
        c.output().unwrap()
    };
    let out = run(&["config"]);
    assert_ok(&out, "compose config");
    let cfg = text(&out).0;
    assert!(
        cfg.contains(&w.image) && cfg.contains("network_mode: host"),
        "{cfg}"
    );
    assert!(
        cfg.contains("read_only: true") && cfg.contains("65534:65534"),
        "{cfg}"
    );
    w.assert_no_secret(&cfg, "compose config");

    let out = run(&["up", "-d"]);
    assert_ok(&out, "compose up");
    let http = Http::default();
    let url = format!("{}/healthz", w.url());
    eventually(20, "the compose gateway's /healthz", || async {
        matches!(http.try_send("GET", &url, &[], b"").await, Ok(r) if r.status == 200)
    })
    .await;
    let got = sdk("openai_chat", &w.url(), Some(w.agent.as_str())).await;
    assert!(got["content"].is_string(), "{got}");
    assert_ok(&run(&["down", "-v"]), "compose down");
}

fn compose_tool() -> Option<Vec<String>> {
    let works = |cmd: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if works(&["docker-compose"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

#[test]
fn kubernetes_manifests_have_what_matters() {
    let dir = repo().join("deploy/k8s");
    let mut docs: Vec<Value> = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            docs.push(v);
        }
    }
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).cloned();
    let dep = kind("Deployment").expect("a Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(
        c["image"]
            .as_str()
            .unwrap()
            .starts_with("lockstock/gateway:")
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(c["resources"]["limits"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65534);
    // The settings come from a Secret, mounted as the file `serve --settings` reads.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = args[args.iter().position(|a| *a == "--settings").unwrap() + 1];
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"].is_object())
        .expect("a Secret volume");
    let secret_name = vol["secret"]["secretName"].as_str().unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == vol["name"])
        .expect("the Secret is mounted");
    assert_eq!(mount["readOnly"], true);
    let path = vol["secret"]["items"][0]["path"].as_str().unwrap();
    assert_eq!(
        format!("{}/{path}", mount["mountPath"].as_str().unwrap()),
        file,
        "the Secret lands where --settings points"
    );
    assert!(c["env"].is_null(), "no settings in the environment");
    let example = kind("Secret").expect("an example Secret");
    assert_eq!(example["metadata"]["name"], secret_name);
    let settings = example["stringData"][vol["secret"]["items"][0]["key"].as_str().unwrap()]
        .as_str()
        .unwrap();
    let parsed = lockstock::config::parse_settings(settings).unwrap();
    for k in [
        "LOCKSTOCK_URL",
        "LOCKSTOCK_GATEWAY_KEY",
        "UPSTREAM_URL",
        "MLS_SEED",
    ] {
        assert!(parsed.contains_key(k), "the example Secret lacks {k}");
    }
    assert!(!parsed.contains_key("ACCOUNT_KEY") && !parsed.contains_key("LOCKSTOCK_ACCOUNT_KEY"));
    // The Service reaches the container's port.
    let svc = kind("Service").expect("a Service");
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let target = &svc["spec"]["ports"][0]["targetPort"];
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == *target || p["containerPort"] == *target),
        "Service targetPort {target} is not a container port"
    );
}
