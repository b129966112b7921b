//! A gateway in the control plane's own process reaches it without a socket: the same
//! checks and answers as over HTTP, one ledger for both, and a clean stop.

mod common;

use std::time::Duration;

use common::{TestAgent, new_agent};
use http::StatusCode;
use lockstock::api::Verdict;
use lockstock::chain::StampKind;
use lockstock::client::{ClientError, ControlPlane};
use lockstock::secret::SecretString;
use lockstock_cloud::{Account, Server, ServerConfig};

struct Running {
    url: String,
    keys: lockstock_cloud::InitKeys,
    in_process: std::sync::Arc<dyn lockstock::client::InProcess>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), lockstock_cloud::Error>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let keys = Account::init(dir.path()).unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.shutdown_grace = Duration::from_secs(2);
    let server = Server::open(config).unwrap();
    let in_process = server.in_process();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        url,
        keys,
        in_process,
        stop,
        task,
        _dir: dir,
    }
}

impl Running {
    fn local(&self, key: &SecretString) -> ControlPlane {
        ControlPlane::in_process(&self.url, key, self.in_process.clone()).unwrap()
    }

    fn http(&self, key: &SecretString) -> ControlPlane {
        ControlPlane::new(&self.url, key).unwrap()
    }
}

#[tokio::test]
async fn stamps_sent_in_process_land_in_the_ledger_the_http_api_reads() {
    let cp = start().await;
    let local = cp.local(&cp.keys.gateway_key);
    let admin = cp.http(&cp.keys.admin_key);
    assert!(local.health().await.is_ok());

    let mut agent: TestAgent = new_agent(&admin, &local, "inproc").await;
    let request = agent.request(100, 200);
    let answers = local.append(&[request]).await.unwrap().results;
    assert!(
        matches!(answers[0].verdict, Verdict::Ok { .. }),
        "{answers:?}"
    );
    let response = agent.response(1, 100, 150);
    let answers = local.append(&[response]).await.unwrap().results;
    assert!(
        matches!(answers[0].verdict, Verdict::Ok { .. }),
        "{answers:?}"
    );

    let page = admin.stamps(&agent.id, 0, 10).await.unwrap();
    assert_eq!(page.stamps.len(), 2);
    assert_eq!(page.stamps[0].signed.stamp.kind, StampKind::Request);
    assert_eq!(page.stamps[1].signed.stamp.tokens_out, 150);

    // A second stamp at a taken seq is a fork in-process exactly as over HTTP.
    let mut replay = TestAgent::new(agent.id.clone(), agent.key.clone());
    let again = replay.request(101, 200);
    let answers = local.append(&[again]).await.unwrap().results;
    assert_eq!(answers[0].verdict, Verdict::Fork);

    let _ = cp.stop.send(());
    cp.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_in_process_api_checks_keys_like_the_http_one() {
    let cp = start().await;
    let wrong = SecretString::from("lsk_gate_not_the_key".to_owned());
    for client in [cp.local(&wrong), cp.http(&wrong)] {
        let err = client
            .policy(&"agent_00000000_x".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    }
    // The admin routes stay closed to the gateway key in-process too.
    let err = cp.local(&cp.keys.gateway_key).agents().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    let _ = cp.stop.send(());
    cp.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stopped_control_plane_is_unreachable_in_process_and_stops_despite_the_handle() {
    let cp = start().await;
    let local = cp.local(&cp.keys.gateway_key);
    assert!(local.health().await.is_ok());
    let _ = cp.stop.send(());
    // The gateway still holds its handle: the ledger writer must stop all the same.
    tokio::time::timeout(Duration::from_secs(10), cp.task)
        .await
        .expect("the server stops while a gateway holds its in-process handle")
        .unwrap()
        .unwrap();
    let err = local.health().await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert!(matches!(&err, ClientError::Unreachable { reason, .. } if reason.contains("stopped")));
}
