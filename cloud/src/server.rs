//! `serve`: the control plane on an already-bound listener until a shutdown future resolves.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::checkpoint::{Checkpointer, Thresholds};
use crate::clock::{Clock, SystemClock};
use crate::ledger::{Ledger, LedgerConfig};
use crate::read::ReadPool;
use crate::routes::{App, Inner, router};
use crate::state::State;
use crate::verify::Verifier;
use crate::{Error, db};

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the server runs. [`ServerConfig::new`] gives the defaults.
#[derive(Clone)]
pub struct ServerConfig {
    /// Holds `ledger.db`; `init` must have created the account there.
    pub data_dir: PathBuf,
    /// Every time the server reads (stamp records, expiry, Sentinel); tests inject their own.
    pub clock: Arc<dyn Clock>,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// How long a granted request's reservation waits for its response stamp.
    pub reservation_ttl: Duration,
    /// The grant for a request that asked for no output cap, when a budget is set.
    pub default_output_cap: u64,
    /// How long open requests may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            clock: Arc::new(SystemClock),
            tls: None,
            reservation_ttl: Duration::from_secs(600),
            default_output_cap: 4096,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field("tls", &self.tls)
            .field("reservation_ttl", &self.reservation_ttl)
            .field("default_output_cap", &self.default_output_cap)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |reason: String| Error::Tls {
        what: "certificate",
        path: files.cert.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| Error::Tls {
        what: "private key",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| cert_err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| cert_err(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve_connection<I>(io: I, svc: TowerToHyperService<axum::Router>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then lets open requests finish
/// (up to [`ServerConfig::shutdown_grace`]) and stops the ledger writer after its last commit.
///
/// Refuses to start when the data directory has no account or another server holds it.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    Server::open(config)?.serve(listener, shutdown).await
}

/// A control plane opened on its data directory (ledger writer and verifier running), not
/// yet serving. [`Server::in_process`] lets a gateway in this process reach it without a socket.
pub struct Server {
    config: ServerConfig,
    _dir_lock: db::DirLock,
    tls: Option<TlsAcceptor>,
    app: App,
    router: axum::Router,
    local: Arc<RwLock<Option<axum::Router>>>,
    writer: std::thread::JoinHandle<()>,
    verifier: std::thread::JoinHandle<()>,
    checkpointer: Checkpointer,
    account_id: String,
    agents: usize,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the data directory. Refuses when it has no account or another server holds it.
    pub fn open(config: ServerConfig) -> Result<Self, Error> {
        let dir = config.data_dir.clone();
        if !db::db_path(&dir).exists() {
            return Err(Error::NoAccount(dir));
        }
        let dir_lock = db::lock_dir(&dir)?;
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let mut conn = db::open_rw(&dir, false)?;
        let (account_id, hashes) =
            db::load_account(&conn)?.ok_or_else(|| Error::NoAccount(dir.clone()))?;
        let ledger_cfg = LedgerConfig {
            reservation_ttl_ms: u64::try_from(config.reservation_ttl.as_millis())
                .unwrap_or(u64::MAX),
            default_output_cap: config.default_output_cap,
        };
        let state = State::load(&conn, config.clock.now_ms(), ledger_cfg.reservation_ttl_ms)?;
        let keys: HashMap<_, _> = state
            .agents
            .values()
            .filter_map(|a| a.key.map(|k| (a.id.clone(), k)))
            .collect();
        let agents = state.agents.len();
        // Commits skip their own fsync; the ledger's syncer fdatasyncs the WAL before answering.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let checkpointer = Checkpointer::start(
            db::open_checkpointer(&db::db_path(&dir))?,
            Thresholds::default(),
        )?;
        checkpointer.attach(&mut conn)?;
        let wal = dir.join(format!("{}-wal", db::DB_FILE));
        let (ledger, writer) = Ledger::start(conn, state, config.clock.clone(), ledger_cfg, wal)
            .map_err(Error::Listen)?;
        let (verifier, verifier_thread) = Verifier::start(ledger.clone()).map_err(Error::Listen)?;
        let app = App(Arc::new(Inner {
            ledger,
            verifier,
            reads: ReadPool::new(db::db_path(&dir)),
            keys: RwLock::new(keys),
            auth: RwLock::new(hashes),
        }));
        let router = router(app.clone());
        Ok(Self {
            config,
            _dir_lock: dir_lock,
            tls,
            app,
            local: Arc::new(RwLock::new(Some(router.clone()))),
            router,
            writer,
            verifier: verifier_thread,
            checkpointer,
            account_id,
            agents,
        })
    }

    /// A handle for a gateway in this process: requests go straight to the API's router,
    /// with the same authentication and answers as over HTTP. After [`Server::serve`]
    /// returns, calls fail as a stopped server's would.
    pub fn in_process(&self) -> Arc<dyn lockstock::client::InProcess> {
        Arc::new(InProcessApi(self.local.clone()))
    }

    /// Serves the API on `listener` until `shutdown` resolves; see [`serve`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let Server {
            config,
            _dir_lock,
            tls,
            app,
            router,
            local,
            writer,
            verifier,
            checkpointer,
            account_id,
            agents,
        } = self;
        let poller = tokio::spawn(poll_key_hashes(app));
        let svc = TowerToHyperService::new(router);
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(
            account = %account_id,
            agents,
            %addr,
            tls = tls.is_some(),
            "lockstock-cloud serving"
        );

        let graceful = GracefulShutdown::new();
        let mut conns = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, _peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of descriptors and the like: wait a little rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let svc = svc.clone();
                    let watcher = graceful.watcher();
                    match &tls {
                        None => {
                            conns.spawn(serve_connection(stream, svc, watcher));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            conns.spawn(async move {
                                let handshake = tokio::time::timeout(
                                    Duration::from_secs(10),
                                    acceptor.accept(stream),
                                );
                                match handshake.await {
                                    Ok(Ok(tls_stream)) => serve_connection(tls_stream, svc, watcher).await,
                                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::debug!("TLS handshake timed out"),
                                }
                            });
                        }
                    }
                    while conns.try_join_next().is_some() {}
                }
            }
        }
        drop(listener);
        tracing::info!("shutting down: finishing open requests");
        if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("open connections did not finish in time; closing them");
        }
        conns.shutdown().await;
        poller.abort();
        let _ = poller.await;
        drop(svc);
        local.write().expect("in-process router lock").take();
        // Every ledger handle is gone now (a call in flight in this process holds one only
        // until the writer answers it): the writer finishes its queue and exits.
        let joined = tokio::task::spawn_blocking(move || {
            let joined = verifier.join().and(writer.join());
            drop(checkpointer);
            joined
        })
        .await;
        if !matches!(joined, Ok(Ok(()))) {
            return Err(Error::WriterStopped);
        }
        tracing::info!("lockstock-cloud stopped");
        Ok(())
    }
}

/// The API's router, called in this process; emptied when the server stops.
struct InProcessApi(Arc<RwLock<Option<axum::Router>>>);

impl lockstock::client::InProcess for InProcessApi {
    fn call(&self, req: http::Request<bytes::Bytes>) -> lockstock::client::InProcessFuture {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let router = self.0.read().expect("in-process router lock").clone();
        Box::pin(async move {
            let router = router.ok_or("the control plane has stopped")?;
            let req = req.map(axum::body::Body::from);
            let resp = match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            let (parts, body) = resp.into_parts();
            // Every answer of the API is built in memory; reading it cannot stall.
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// Picks up key changes made outside this process (`lockstock-cloud keys rotate-gateway`).
async fn poll_key_hashes(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let loaded = app.reads.run(|conn| Ok(db::load_account(conn)?)).await;
        if let Ok(Some((_, hashes))) = loaded {
            let mut auth = app.auth.write().expect("auth lock");
            if *auth != hashes {
                tracing::info!("API keys changed on disk; reloaded");
                *auth = hashes;
            }
        }
    }
}
