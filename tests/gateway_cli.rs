//! The `lockstock-gateway` CLI through the real binary: configuration display, agents made and
//! activated from Liberty, detached native runs with stop/status, and errors as sentences.

mod support;

use lockstock::api::ProvisionRequest;
use lockstock::chain::StampKind;
use lockstock::secret::ExposeSecret;
use support::procs::Sandbox;
use support::*;

async fn sandbox_with_cloud() -> (Sandbox, Cloud, Upstream) {
    let sb = Sandbox::new();
    let cloud = Cloud::start(sb.path()).await;
    let upstream = Upstream::start().await;
    sb.vault(&[
        ("LOCKSTOCK_API_KEY", cloud.admin_key.expose_secret()),
        ("LOCKSTOCK_GATEWAY_KEY", cloud.gateway_key.expose_secret()),
        ("LOCKSTOCK_URL", &cloud.url),
        ("LOCKSTOCK_UPSTREAM_URL", &upstream.url()),
        ("OPENAI_API_KEY", "sk-test-provider-key-0123456789"),
    ]);
    (sb, cloud, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_masks_secrets_names_origins_and_fails_when_something_is_missing() {
    let (sb, cloud, _up) = sandbox_with_cloud().await;
    let out = sb.run("lockstock-gateway", &["config"], None);
    assert_eq!(out.status.code(), Some(1), "no seed and no agent yet");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("MLS_SEED") && text.contains("MISSING"),
        "{text}"
    );
    assert!(
        text.contains("lockstock-gateway provision"),
        "says how to fix it: {text}"
    );

    sb.ok("lockstock-gateway", &["provision", "--name", "cfg"], None);
    let out = sb.ok("lockstock-gateway", &["config"], None);
    let gateway_key = cloud.gateway_key.expose_secret();
    assert!(!out.contains(gateway_key), "{out}");
    assert!(out.contains(&gateway_key[..8]) && out.contains(&gateway_key[gateway_key.len() - 4..]));
    assert!(!out.contains("sk-test-provider-key-0123456789"));
    let seed = sb.ok("liberty", &["show", "MLS_SEED"], None);
    assert!(!out.contains(seed.trim()));
    assert!(out.contains("(liberty)"));

    let mut sb = sb;
    sb.set("UPSTREAM_URL", "http://127.0.0.1:1");
    let out = sb.ok(
        "lockstock-gateway",
        &["config", "--control-plane", "http://127.0.0.1:2"],
        None,
    );
    assert!(
        out.contains("http://127.0.0.1:1  (env UPSTREAM_URL)"),
        "{out}"
    );
    assert!(out.contains("http://127.0.0.1:2  (flag)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_provisioned_elsewhere_is_activated_once_with_its_token() {
    let (sb, cloud, _up) = sandbox_with_cloud().await;
    let p = cloud
        .admin()
        .provision(&ProvisionRequest {
            name: "remote".into(),
            provider: None,
        })
        .await
        .unwrap();
    let out = sb.ok(
        "lockstock-gateway",
        &[
            "activate",
            "--agent",
            p.agent_id.as_str(),
            "--token",
            &p.genesis_token,
            "--name",
            "far-away",
        ],
        None,
    );
    assert!(out.contains("LOCKSTOCK_AGENT_FAR_AWAY"), "{out}");
    assert_eq!(
        sb.ok("liberty", &["show", "LOCKSTOCK_AGENT_FAR_AWAY"], None)
            .trim(),
        p.agent_id.as_str()
    );
    let info = cloud.admin().agent(&p.agent_id).await.unwrap();
    assert!(info.activated);

    let again = sb.run(
        "lockstock-gateway",
        &[
            "activate",
            "--agent",
            p.agent_id.as_str(),
            "--token",
            &p.genesis_token,
        ],
        None,
    );
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.starts_with("error: activating"), "{err}");
    assert!(!err.contains('{'), "a sentence, not JSON: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_native_gateway_can_be_checked_and_stopped() {
    let (sb, _cloud, _up) = sandbox_with_cloud().await;
    sb.ok("lockstock-gateway", &["provision", "--name", "bg"], None);
    let port = support::procs::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = sb.ok(
        "lockstock-gateway",
        &["start", "--native", "--detach", "--listen", &listen],
        None,
    );
    assert!(out.contains("background"), "{out}");

    let status = sb.run("lockstock-gateway", &["status", "--json"], None);
    assert!(status.status.success());
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["listen"], listen);
    let pid = v["pid"].as_u64().unwrap();

    // No secret on the detached process's command line.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let seed = sb.ok("liberty", &["show", "MLS_SEED"], None);
    assert!(!cmdline.windows(16).any(|w| w == &seed.as_bytes()[..16]));

    let twice = sb.run(
        "lockstock-gateway",
        &["start", "--native", "--detach", "--listen", &listen],
        None,
    );
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already running"));

    sb.ok("lockstock-gateway", &["stop"], None);
    let status = sb.run("lockstock-gateway", &["status"], None);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stdout).contains("stopped"));
    let again = sb.ok("lockstock-gateway", &["stop"], None);
    assert!(again.contains("not running"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_are_sentences() {
    let (sb, cloud, _up) = sandbox_with_cloud().await;
    let out = sb.run(
        "lockstock-gateway",
        &["lock", "agent_deadbeef_nobody"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && !err.contains("{\""), "{err}");

    let out = sb.run(
        "lockstock-gateway",
        &["budget", "nobody", "--tokens", "5"],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent called"));

    let mut sb = sb;
    sb.set("LOCKSTOCK_URL", "http://127.0.0.1:9");
    let out = sb.run("lockstock-gateway", &["agents"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control plane"));
    drop(cloud);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_drive_the_control_plane() {
    let (sb, cloud, _up) = sandbox_with_cloud().await;
    sb.ok("lockstock-gateway", &["provision", "--name", "ops"], None);
    let agent: lockstock::AgentId = sb
        .ok("liberty", &["show", "LOCKSTOCK_AGENT_OPS"], None)
        .trim()
        .parse()
        .unwrap();
    sb.ok(
        "lockstock-gateway",
        &["lock", "ops", "--reason", "maintenance"],
        None,
    );
    assert_eq!(
        cloud
            .admin()
            .agent(&agent)
            .await
            .unwrap()
            .lock_reason
            .as_deref(),
        Some("maintenance")
    );
    let table = sb.ok("lockstock-gateway", &["agents"], None);
    assert!(table.contains("locked: maintenance"), "{table}");
    sb.ok("lockstock-gateway", &["unlock", agent.as_str()], None);
    sb.ok(
        "lockstock-gateway",
        &["budget", "ops", "--tokens", "1234"],
        None,
    );
    assert_eq!(
        cloud.admin().agent(&agent).await.unwrap().remaining,
        Some(1234)
    );
    sb.ok("lockstock-gateway", &["budget", "ops", "--unlimited"], None);
    assert_eq!(cloud.admin().agent(&agent).await.unwrap().remaining, None);
    let s = sb.ok(
        "lockstock-gateway",
        &[
            "sentinel",
            "ops",
            "--max-per-minute",
            "50",
            "--sensitivity",
            "4",
        ],
        None,
    );
    assert!(s.contains("50/min"), "{s}");
    let info = cloud.admin().agent(&agent).await.unwrap();
    assert_eq!(
        (info.sentinel.max_per_minute, info.sentinel.sensitivity),
        (Some(50), 4.0)
    );
    sb.ok("lockstock-gateway", &["sentinel", "ops", "--off"], None);
    assert!(!cloud.admin().agent(&agent).await.unwrap().sentinel.enabled);
    let json: serde_json::Value =
        serde_json::from_str(&sb.ok("lockstock-gateway", &["agents", "--json"], None)).unwrap();
    assert_eq!(json["agents"][0]["agent_id"], agent.as_str());
    assert!(
        sb.ok("lockstock-gateway", &["stamps", "ops"], None)
            .contains("no stamps")
    );
    assert!(
        sb.ok("lockstock-gateway", &["alerts"], None)
            .contains("no alerts")
    );
}

/// The README's run command: vault, control plane and gateway in one process. The gateway
/// stamps through the control plane in its own process (no socket), operators reach that
/// control plane over HTTP, and SIGTERM stops both after the last stamp is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_a_governed_gateway_and_its_control_plane_in_one_process() {
    let sb = Sandbox::new();
    let upstream = Upstream::start().await;
    let gw = format!("127.0.0.1:{}", support::procs::free_port());
    let cp = format!("127.0.0.1:{}", support::procs::free_port());
    let data = sb.path().join("cloud");
    let out = sb.path().join("quickstart.out");
    let mut child = sb
        .command(support::procs::bin("lockstock-gateway"))
        .args(["quickstart", "--listen", &gw, "--cloud-listen", &cp])
        .args(["--upstream", &upstream.url()])
        .arg("--data")
        .arg(&data)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    let http = Http::default();
    let health = format!("http://{gw}/healthz");
    let mut ready = false;
    for _ in 0..300 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "quickstart exited:\n{}",
            logs()
        );
        if matches!(http.try_send("GET", &health, &[], b"").await, Ok(r) if r.status == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "quickstart never became healthy:\n{}", logs());
    assert!(
        logs().contains("control_plane=in this process"),
        "{}",
        logs()
    );
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(
        printed.contains(&format!("export OPENAI_BASE_URL=http://{gw}/v1")),
        "{printed}"
    );

    // No agent header: the one agent quickstart provisioned is the default.
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello."}]}"#;
    let reply = http
        .post(&format!("http://{gw}/v1/chat/completions"), &[], body)
        .await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), logs());
    assert_eq!(reply.body.as_ref(), fixture("openai-chat").0.as_slice());
    assert_eq!(upstream.requests().len(), 1);

    let admin_key = lockstock::secret::SecretString::from(
        sb.ok("liberty", &["show", "LOCKSTOCK_API_KEY"], None)
            .trim()
            .to_owned(),
    );
    let admin = lockstock::client::ControlPlane::new(&format!("http://{cp}"), &admin_key).unwrap();
    let agents = admin.agents().await.unwrap().agents;
    assert_eq!(agents.len(), 1);
    let agent = agents[0].agent_id.clone();

    // Stop right away: the response stamp must still be written before the process exits.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "quickstart did not stop cleanly:\n{}",
        logs()
    );

    // The data directory is free again, and holds both stamps.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lockstock_cloud::serve(
        listener,
        lockstock_cloud::ServerConfig::new(&data),
        async {
            let _ = stopped.await;
        },
    ));
    let admin = lockstock::client::ControlPlane::new(&url, &admin_key).unwrap();
    let stamps = admin.stamps(&agent, 0, 10).await.unwrap().stamps;
    let kinds: Vec<_> = stamps.iter().map(|s| s.signed.stamp.kind).collect();
    assert_eq!(kinds, [StampKind::Request, StampKind::Response]);
    assert_eq!(stamps[1].signed.stamp.tokens_out, 12);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
