//! The `lockstock-cloud` binary: init, serve (HTTP and HTTPS), key rotation, signals, files.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use binary::{Proc, cloud_bin, init_with_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_prints_keys_once_and_refuses_a_second_time() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cloud-data");
    let out = cloud_bin()
        .args(["init", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Admin key:   lsk_admin_"), "{text}");
    assert!(text.contains("Gateway key: lsk_gateway_"), "{text}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ledger.db")), 0o600);
    // Only hashes are stored.
    let admin = text
        .split_whitespace()
        .find(|w| w.starts_with("lsk_admin_"))
        .unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(admin.len()).any(|w| w == admin.as_bytes()),
            "the admin key is on disk in plaintext"
        );
    }

    let again = cloud_bin()
        .args(["init", "--json", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    let err = String::from_utf8(again.stderr).unwrap();
    assert!(err.contains("already exists"), "{err}");

    let json_dir = parent.path().join("json");
    let (admin, gateway) = init_with_binary(&json_dir);
    assert!(admin.starts_with("lsk_admin_") && gateway.starts_with("lsk_gateway_"));
    assert_eq!(admin.len(), "lsk_admin_".len() + 64);
}

/// Runs `serve` expecting it to refuse; returns its stderr.
fn serve_refusal(dir: &std::path::Path) -> String {
    let out = cloud_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn serve_refuses_without_an_account_and_a_second_server_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_refusal(dir.path());
    assert!(err.contains("lockstock-cloud init"), "{err}");

    init_with_binary(dir.path());
    let _first = Proc::serve(dir.path(), &[], "http");
    let err = serve_refusal(dir.path());
    assert!(err.contains("already using"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_gateway_from_the_cli_retires_the_old_key_in_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, old) = init_with_binary(dir.path());
    let server = Proc::serve(dir.path(), &[], "http");
    server
        .client(&old)
        .policy(&"agent_00000000_none".parse().unwrap())
        .await
        .unwrap_err();
    server.client(&admin).agents().await.unwrap();
    server.client(&old).append(&[]).await.unwrap_err();

    let stdout = binary::run_ok(&["keys", "rotate-gateway"], dir.path());
    let new = String::from_utf8(stdout).unwrap().trim().to_owned();
    assert!(new.starts_with("lsk_gateway_") && new != old);

    // The running server picks the change up within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = server.client(&old).health().await;
        assert!(e.is_ok(), "health is public");
        let status = server
            .client(&old)
            .policy(&"agent_00000000_none".parse().unwrap())
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16());
        if status == Some(401) {
            break;
        }
        assert!(Instant::now() < deadline, "the old gateway key still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = server
        .client(&new)
        .policy(&"agent_00000000_none".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        e.status().map(|s| s.as_u16()),
        Some(404),
        "the new key is accepted"
    );

    let log = server.log();
    for secret in [&admin, &old, &new] {
        assert!(!log.contains(secret.as_str()), "a key reached the log");
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _) = init_with_binary(dir.path());
    let mut server = Proc::serve(dir.path(), &[], "http");
    server.client(&admin).agents().await.unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
    // WAL and shared-memory files, if left, are private too.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    init_with_binary(dir.path());
    let cert = fixtures.join("test-cert.pem");
    let key = fixtures.join("test-key.pem");
    let server = Proc::serve(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "https",
    );
    let addr = server.url.trim_start_matches("https://").to_owned();

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in
        rustls::pki_types::CertificateDer::pem_file_iter(fixtures.join("test-ca.pem")).unwrap()
    {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.unwrap_or_default();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"status\":\"ok\""), "{resp}");

    // Plain HTTP to the TLS port gets no answer.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    init_with_binary(dir.path());
    let missing = dir.path().join("nope.pem");
    let out = cloud_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("TLS certificate") && err.contains("nope.pem"),
        "{err}"
    );
}
