//! Shared harness of the end-to-end tests: a real control plane on a real SQLite file, the
//! fixture upstream, gateways, and an HTTP client, all on loopback port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lockstock::AgentId;
use lockstock::api::{ActivateRequest, ProvisionRequest};
use lockstock::client::ControlPlane;
use lockstock::secret::{ExposeSecret, SecretKey32, SecretString};
use tokio::sync::oneshot;

pub mod procs;

#[allow(unused_imports)]
pub use lockstock_testkit::upstream::{Upstream, fixture};

/// A control plane served in-process from a temp data dir.
pub struct Cloud {
    pub url: String,
    pub admin_key: SecretString,
    pub gateway_key: SecretString,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cloud {
    pub async fn start(dir: &Path) -> Self {
        let data_dir = dir.join("cloud");
        let keys = lockstock_cloud::Account::init(&data_dir).expect("init the control plane");
        let mut cloud = Self {
            url: String::new(),
            admin_key: keys.admin_key,
            gateway_key: keys.gateway_key,
            data_dir,
            stop: None,
            task: None,
        };
        cloud.serve(None).await;
        cloud
    }

    /// (Re)starts serving; on a fixed address when given (to come back where gateways expect).
    pub async fn serve(&mut self, addr: Option<SocketAddr>) {
        let listener =
            tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
                .await
                .expect("bind the control plane");
        self.url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let config = lockstock_cloud::ServerConfig::new(&self.data_dir);
        self.task = Some(tokio::spawn(async move {
            lockstock_cloud::serve(listener, config, async {
                let _ = rx.await;
            })
            .await
            .expect("the control plane runs");
        }));
        self.stop = Some(tx);
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.url.trim_start_matches("http://").parse().unwrap()
    }

    pub fn admin(&self) -> ControlPlane {
        ControlPlane::new(&self.url, &self.admin_key).unwrap()
    }

    pub fn gateway(&self) -> ControlPlane {
        ControlPlane::new(&self.url, &self.gateway_key).unwrap()
    }

    /// Provisions and activates an agent whose key derives from `seed`.
    pub async fn agent(&self, seed: &SecretKey32, name: &str) -> AgentId {
        let p = self
            .admin()
            .provision(&ProvisionRequest {
                name: name.into(),
                provider: None,
            })
            .await
            .expect("provision");
        let key = lockstock::agent::signing_key(seed, &p.agent_id);
        self.gateway()
            .activate(&ActivateRequest {
                agent_id: p.agent_id.clone(),
                genesis_token: p.genesis_token,
                public_key: hex::encode(key.verifying_key().to_bytes()),
            })
            .await
            .expect("activate");
        p.agent_id
    }
}

/// A gateway served in-process.
pub struct Gateway {
    pub url: String,
    pub gateway: Arc<lockstock::proxy::Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(config: lockstock::config::GatewayConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let gateway = lockstock::proxy::Gateway::new(config).expect("gateway config");
        let (tx, rx) = oneshot::channel::<()>();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            lockstock::server::serve(listener, gw, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            url,
            gateway,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

pub fn seed() -> SecretKey32 {
    lockstock::secret::random_key()
}

/// A gateway configuration with short timeouts for tests.
pub fn gateway_config(
    cloud: &Cloud,
    upstream: &str,
    seed: &SecretKey32,
    agents: &[&AgentId],
    account: Option<lockstock::seal::AccountPublicKey>,
) -> lockstock::config::GatewayConfig {
    let mut cfg = lockstock::config::GatewayConfig::from_lookup(|k| {
        let v = match k {
            "UPSTREAM_URL" => upstream.to_owned(),
            "LOCKSTOCK_URL" => cloud.url.clone(),
            "LOCKSTOCK_GATEWAY_KEY" => cloud.gateway_key.expose_secret().to_owned(),
            "MLS_SEED" => hex::encode(seed.expose_secret()),
            "LOCKSTOCK_AGENTS" => agents
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(","),
            _ => return None,
        };
        Some(zeroize::Zeroizing::new(v))
    })
    .expect("a valid test configuration");
    cfg.account = account;
    cfg.limits.verdict_timeout = Duration::from_secs(3);
    cfg.limits.shutdown_grace = Duration::from_secs(3);
    cfg
}

/// A plain HTTP client.
pub struct Http(Client<HttpConnector, Full<Bytes>>);

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Default for Http {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }
}

impl Http {
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.try_send(method, url, headers, body)
            .await
            .expect("request")
    }

    /// Like `send`, but a connection failure is an `Err` instead of a panic.
    pub async fn try_send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .0
            .request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.send("POST", url, &h, body).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send("GET", url, &[], b"").await
    }
}

/// Waits until `cond` holds (polling), or panics with `what` after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
