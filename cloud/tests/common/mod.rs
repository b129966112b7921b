//! Shared test harness: an in-process control plane on 127.0.0.1:0 with a real SQLite file in
//! a temp dir and a manual clock, typed clients, and agents that sign their own chains.
#![allow(dead_code)]

use std::time::Duration;

use ed25519_dalek::SigningKey;
use lockstock::AgentId;
use lockstock::api::{ActivateRequest, ProvisionRequest};
use lockstock::chain::{Head, STAMP_VERSION, SignedStamp, Stamp, StampKind};
use lockstock::client::ControlPlane;
use lockstock::secret::{ExposeSecret, SecretString};
use lockstock_cloud::{Account, ManualClock, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// 2023-11-14T22:13:20Z: far from any epoch edge.
pub const T0: u64 = 1_700_000_000_000;

pub struct Server {
    pub url: String,
    pub admin_key: SecretString,
    pub gateway_key: SecretString,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    config: ServerConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), lockstock_cloud::Error>>>,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Account::init(dir.path()).unwrap();
        let clock = ManualClock::new(T0);
        let mut config = ServerConfig::new(dir.path());
        config.clock = std::sync::Arc::new(clock.clone());
        config.shutdown_grace = Duration::from_secs(2);
        tune(&mut config);
        let mut server = Self {
            url: String::new(),
            admin_key: keys.admin_key,
            gateway_key: keys.gateway_key,
            clock,
            dir,
            config,
            stop: None,
            task: None,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.task = Some(tokio::spawn(lockstock_cloud::serve(
            listener,
            config,
            async {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
    }

    /// Stops gracefully and starts again on the same data dir (new port).
    pub async fn restart(&mut self) {
        self.shutdown().await;
        self.launch().await;
    }

    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn admin(&self) -> ControlPlane {
        ControlPlane::new(&self.url, &self.admin_key).unwrap()
    }

    pub fn gateway(&self) -> ControlPlane {
        ControlPlane::new(&self.url, &self.gateway_key).unwrap()
    }

    pub fn client_with(&self, key: &str) -> ControlPlane {
        ControlPlane::new(&self.url, &SecretString::from(key.to_owned())).unwrap()
    }

    /// Provisions and activates an agent with a fresh key.
    pub async fn agent(&self, name: &str) -> TestAgent {
        new_agent(&self.admin(), &self.gateway(), name).await
    }

    pub fn admin_key(&self) -> &str {
        self.admin_key.expose_secret()
    }

    pub fn gateway_key(&self) -> &str {
        self.gateway_key.expose_secret()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Provisions (admin) and activates (gateway) an agent with a fresh key.
pub async fn new_agent(admin: &ControlPlane, gateway: &ControlPlane, name: &str) -> TestAgent {
    let provisioned = admin
        .provision(&ProvisionRequest {
            name: name.into(),
            provider: None,
        })
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&lockstock::secret::random_array());
    gateway
        .activate(&ActivateRequest {
            agent_id: provisioned.agent_id.clone(),
            genesis_token: provisioned.genesis_token,
            public_key: hex::encode(key.verifying_key().as_bytes()),
        })
        .await
        .unwrap();
    TestAgent::new(provisioned.agent_id, key)
}

/// An agent that builds its own chain; `head` advances as stamps are made.
pub struct TestAgent {
    pub id: AgentId,
    pub key: SigningKey,
    pub head: Head,
}

impl TestAgent {
    pub fn new(id: AgentId, key: SigningKey) -> Self {
        let head = Head::genesis(&id);
        Self { id, key, head }
    }

    pub fn stamp(&self, kind: StampKind) -> Stamp {
        Stamp {
            version: STAMP_VERSION,
            agent_id: self.id.clone(),
            seq: self.head.seq + 1,
            prev_hash: self.head.hash,
            kind,
            time_ms: T0,
            model: "gpt-4o-mini".into(),
            tokens_in: 0,
            tokens_out: 0,
            ref_seq: 0,
            flags: 0,
            status: 0,
            blob_hash: None,
        }
    }

    /// Signs `stamp` and moves the local head onto it.
    pub fn sign(&mut self, stamp: Stamp) -> SignedStamp {
        let signed = stamp.sign(&self.key);
        self.head = Head {
            seq: signed.stamp.seq,
            hash: signed.stamp.hash(),
        };
        signed
    }

    pub fn request(&mut self, tokens_in: u64, cap: u64) -> SignedStamp {
        let mut s = self.stamp(StampKind::Request);
        s.tokens_in = tokens_in;
        s.tokens_out = cap;
        self.sign(s)
    }

    pub fn response(&mut self, ref_seq: u64, tokens_in: u64, tokens_out: u64) -> SignedStamp {
        let mut s = self.stamp(StampKind::Response);
        s.ref_seq = ref_seq;
        s.tokens_in = tokens_in;
        s.tokens_out = tokens_out;
        s.status = 200;
        self.sign(s)
    }
}

/// Sends raw bytes to the server and returns (status, body as JSON value or Null).
pub async fn raw(
    url: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let client = lockstock::http::client(Default::default());
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = client
        .request(req.body(lockstock::http::full(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, value)
}

/// The error message of an error body.
pub fn message(v: &serde_json::Value) -> &str {
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}
