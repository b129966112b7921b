//! Starting what the benchmark measures: the fixture upstream, the control plane on a real
//! SQLite file, governed agents, gateways, nginx and LiteLLM.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use lockstock::AgentId;
use lockstock::api::{AccountKeyRequest, ActivateRequest, ProvisionRequest, SentinelUpdate};
use lockstock::client::ControlPlane;
use lockstock::seal::{AccountKey, AccountPublicKey};
use lockstock::secret::{ExposeSecret, SecretKey32, SecretString};

use crate::procs::{self, Http, Proc};

/// Tokens each benchmark agent may spend: far more than any run uses.
pub const BUDGET_TOKENS: u64 = 1 << 50;

/// Sentinel stays on (every request stamp is counted, its statistics kept, the cap checked),
/// with thresholds no steady benchmark load on one machine reaches: the statistical test never
/// fires below a million requests in one second, and the hard cap is a billion a minute.
pub fn sentinel() -> SentinelUpdate {
    SentinelUpdate {
        enabled: Some(true),
        max_per_minute: Some(Some(1_000_000_000)),
        sensitivity: Some(6.0),
        min_burst: Some(1_000_000),
        warmup_secs: None,
    }
}

pub struct Upstream {
    pub proc: Proc,
    pub url: String,
}

pub fn upstream(bin: &Path, dir: &Path) -> Result<Upstream> {
    let mut proc = Proc::spawn(
        "upstream",
        Command::new(bin.join("fixture-upstream")).args(["--listen", "127.0.0.1:0"]),
        dir,
    )?;
    let url = proc.first_line(20)?;
    if !url.starts_with("http://") {
        bail!("fixture-upstream printed {url:?}");
    }
    Ok(Upstream { proc, url })
}

/// Requests the upstream has answered; with `marked`, only those that carried the load
/// generator's `x-fixture-mark` header, so requests a proxy makes on its own are not counted.
pub async fn served(http: &Http, upstream: &str, marked: bool) -> Result<u64> {
    let (_, body) = procs::get(http, &format!("{upstream}/__fixture/stats"), &[]).await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v[if marked { "marked" } else { "requests" }]
        .as_u64()
        .context("upstream stats")
}

pub struct Cloud {
    pub proc: Proc,
    pub url: String,
    pub admin: ControlPlane,
    pub gateway_key: SecretString,
    pub data: PathBuf,
}

pub async fn cloud(http: &Http, bin: &Path, dir: &Path) -> Result<Cloud> {
    cloud_named(http, bin, dir, "control-plane").await
}

/// A control plane process named `name`, with its data in `dir/name`.
pub async fn cloud_named(http: &Http, bin: &Path, dir: &Path, name: &str) -> Result<Cloud> {
    let data = dir.join(name);
    let out = Command::new(bin.join("lockstock-cloud"))
        .args(["init", "--data"])
        .arg(&data)
        .arg("--json")
        .output()
        .context("lockstock-cloud init")?;
    if !out.status.success() {
        bail!(
            "lockstock-cloud init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let key = |k: &str| -> Result<SecretString> {
        Ok(SecretString::from(
            keys[k].as_str().context("init --json")?.to_owned(),
        ))
    };
    let (admin_key, gateway_key) = (key("admin_key")?, key("gateway_key")?);
    let port = procs::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut proc = Proc::spawn(
        name,
        Command::new(bin.join("lockstock-cloud"))
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("LOCKSTOCK_LOG", "warn"),
        dir,
    )?;
    procs::wait_ok(http, &mut proc, &format!("{url}/v1/health"), &[], 30).await?;
    let admin = ControlPlane::new(&url, &admin_key)?;
    Ok(Cloud {
        proc,
        url,
        admin,
        gateway_key,
        data,
    })
}

/// The account key pair: the control plane learns the public half and the verification hash.
pub async fn account(cloud: &Cloud) -> Result<AccountPublicKey> {
    let key = AccountKey::generate();
    let public = key.public_key();
    cloud
        .admin
        .set_account_key(&AccountKeyRequest {
            public_key: public.to_hex(),
            verification_hash: key.verification_hash(),
            retire_key_id: None,
        })
        .await
        .context("setting the account key")?;
    Ok(public)
}

/// Provisions and activates an agent whose signing key derives from `seed`, with a budget
/// and Sentinel as the benchmark wants them.
pub async fn agent(cloud: &Cloud, seed: &SecretKey32, name: &str) -> Result<AgentId> {
    let p = cloud
        .admin
        .provision(&ProvisionRequest {
            name: name.into(),
            provider: None,
        })
        .await
        .context("provisioning an agent")?;
    let key = lockstock::agent::signing_key(seed, &p.agent_id);
    ControlPlane::new(&cloud.url, &cloud.gateway_key)?
        .activate(&ActivateRequest {
            agent_id: p.agent_id.clone(),
            genesis_token: p.genesis_token,
            public_key: hex::encode(key.verifying_key().to_bytes()),
        })
        .await
        .context("activating an agent")?;
    cloud
        .admin
        .set_budget(&p.agent_id, Some(BUDGET_TOKENS))
        .await?;
    cloud.admin.set_sentinel(&p.agent_id, &sentinel()).await?;
    Ok(p.agent_id)
}

/// `n` agents named `name` (and `name-2`, `name-3`… after the first), as [`agent`] makes them.
pub async fn agents(cloud: &Cloud, seed: &SecretKey32, name: &str, n: u16) -> Result<Vec<AgentId>> {
    let mut agents = Vec::with_capacity(n.into());
    for i in 1..=n {
        let name = match i {
            1 => name.to_owned(),
            i => format!("{name}-{i}"),
        };
        agents.push(agent(cloud, seed, &name).await?);
    }
    Ok(agents)
}

pub struct Gateway {
    pub proc: Proc,
    pub url: String,
    /// The agents it serves, as the connections take them in turn.
    pub agents: Vec<AgentId>,
    /// The control plane that holds the agents' ledgers.
    pub admin: ControlPlane,
}

pub fn names(agents: &[AgentId]) -> Vec<&str> {
    agents.iter().map(AgentId::as_str).collect()
}

/// A gateway process (`lockstock-gateway serve --settings FILE`), governing `agents`;
/// transcripts are sealed when `account` is given. With `embedded`, the process also runs
/// `cloud`'s control plane (stopped beforehand), on its data directory and address.
#[allow(clippy::too_many_arguments)]
pub async fn gateway(
    http: &Http,
    bin: &Path,
    dir: &Path,
    name: &str,
    cloud: &Cloud,
    upstream: &str,
    seed: &SecretKey32,
    agents: &[AgentId],
    account: Option<&AccountPublicKey>,
    embedded: bool,
) -> Result<Gateway> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let settings = dir.join(format!("{name}.settings"));
    let mut text = format!(
        "UPSTREAM_URL={upstream}\nLOCKSTOCK_URL={}\nLOCKSTOCK_GATEWAY_KEY={}\nMLS_SEED={}\n\
         LOCKSTOCK_AGENTS={}\nLOCKSTOCK_PROVIDER=openai\nLOCKSTOCK_SPOOL_DIR={}\n",
        cloud.url,
        cloud.gateway_key.expose_secret(),
        hex::encode(seed.expose_secret()),
        names(agents).join(","),
        dir.join(format!("{name}-spool")).display(),
    );
    if let Some(a) = account {
        text.push_str(&format!("ACCOUNT_PUBLIC_KEY={}\n", a.to_hex()));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&settings)?
        .write_all(text.as_bytes())?;
    let port = procs::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(bin.join("lockstock-gateway"));
    cmd.args(["serve", "--settings"])
        .arg(&settings)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("LOCKSTOCK_LOG", "warn");
    if embedded {
        cmd.arg("--control-plane-data")
            .arg(&cloud.data)
            .arg("--control-plane-listen")
            .arg(cloud.url.trim_start_matches("http://"));
    }
    let mut proc = Proc::spawn(name, &mut cmd, dir)?;
    let ready = procs::wait_ok(http, &mut proc, &format!("{url}/healthz"), &[], 30).await;
    // The gateway reads its settings once, at start; they hold the gateway key.
    let _ = std::fs::remove_file(&settings);
    ready?;
    Ok(Gateway {
        proc,
        url,
        agents: agents.to_vec(),
        admin: cloud.admin.clone(),
    })
}

pub struct Nginx {
    pub proc: Proc,
    /// Buffered (nginx's default), for plain JSON answers.
    pub url: String,
    /// `proxy_buffering off`, for streams.
    pub stream_url: String,
}

pub async fn nginx(http: &Http, exe: &Path, dir: &Path, upstream: &str) -> Result<Nginx> {
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("tmp"))?;
    let up = upstream.trim_start_matches("http://");
    let (port, stream_port) = (procs::free_port()?, procs::free_port()?);
    let tmp = root.join("tmp");
    let t = tmp.display();
    let conf = format!(
        r#"# nginx as a plain reverse proxy (generated by bench/run).
daemon off;
master_process on;
worker_processes auto;
user root;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream fixture {{
        server {up};
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fixture;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{stream_port} backlog=4096;
        location / {{
            proxy_pass http://fixture;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#,
        root = root.display(),
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut proc = Proc::spawn(
        "nginx",
        Command::new(exe)
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(root.join("error.log")),
        dir,
    )?;
    let url = format!("http://127.0.0.1:{port}");
    let stream_url = format!("http://127.0.0.1:{stream_port}");
    procs::wait_ok(http, &mut proc, &format!("{url}/v1/models"), &[], 20).await?;
    procs::wait_ok(http, &mut proc, &format!("{stream_url}/v1/models"), &[], 20).await?;
    Ok(Nginx {
        proc,
        url,
        stream_url,
    })
}

pub const LITELLM_MASTER_KEY: &str = "sk-lockstock-bench";

pub struct LiteLlm {
    pub proc: Proc,
    pub url: String,
}

/// LiteLLM's proxy, one OpenAI-compatible model pointing at the fixture upstream.
pub async fn litellm(http: &Http, exe: &Path, dir: &Path, upstream: &str) -> Result<LiteLlm> {
    let conf = dir.join("litellm.yaml");
    std::fs::write(
        &conf,
        format!(
            "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      \
             api_base: {upstream}/v1\n      api_key: sk-fixture\n"
        ),
    )?;
    let port = procs::free_port()?;
    let mut proc = Proc::spawn(
        "litellm",
        Command::new(exe)
            .arg("--config")
            .arg(&conf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("LITELLM_MASTER_KEY", LITELLM_MASTER_KEY)
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_LOG", "ERROR")
            .env("LITELLM_TELEMETRY", "False")
            .env("NO_DOCS", "True"),
        dir,
    )?;
    let url = format!("http://127.0.0.1:{port}");
    procs::wait_ok(
        http,
        &mut proc,
        &format!("{url}/health/liveliness"),
        &[],
        180,
    )
    .await?;
    Ok(LiteLlm { proc, url })
}
