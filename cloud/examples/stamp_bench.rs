//! Stamp append throughput and latency, end to end over loopback HTTP.
//!
//! Starts the control plane in-process on a temp SQLite file (WAL, synchronous=FULL: every
//! acknowledged stamp is on disk), provisions one agent per client, and has every client
//! append validly signed stamps to its own chain as a gateway does (a request stamp, then the
//! response stamp that settles it; one signature per call, on its last stamp), for each batch
//! size in turn.
//!
//! ```text
//! cargo run --release -p lockstock-cloud --example stamp_bench -- --seconds 10 --clients 32
//! ```
//!
//! Options: `--seconds N` per batch size (10), `--clients N` (32), `--batches 1,8,64` (stamps
//! per call; a gateway under load sends up to 256 per call), `--presign` (sign every stamp before the clock starts, to measure the control plane
//! without the gateway's signing cost, which runs on the gateway host in production).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use lockstock::AgentId;
use lockstock::chain::{Head, STAMP_VERSION, SignedStamp, Stamp, StampKind, sign_batch};
use lockstock::client::ControlPlane;
use lockstock::secret::ExposeSecret;

#[path = "../tests/common/mod.rs"]
mod common;

struct Args {
    seconds: u64,
    clients: usize,
    batches: Vec<usize>,
    presign: bool,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        clients: 32,
        batches: vec![1, 8, 64],
        presign: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--clients" => a.clients = value().parse().expect("--clients N"),
            "--batches" => {
                a.batches = value()
                    .split(',')
                    .map(|b| b.parse().expect("--batches 1,8"))
                    .collect()
            }
            "--presign" => a.presign = true,
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// One agent's chain, made a stamp at a time: request, response, request, …
struct Chain {
    id: AgentId,
    key: SigningKey,
    head: Head,
}

impl Chain {
    /// The next `n` stamps, signed once as a gateway signs a batch (see `chain::sign_batch`).
    fn batch(&mut self, n: usize) -> Vec<SignedStamp> {
        let stamps = (0..n).map(|_| self.next()).collect();
        sign_batch(stamps, &self.key)
    }

    fn next(&mut self) -> Stamp {
        let seq = self.head.seq + 1;
        let request = seq % 2 == 1;
        let stamp = Stamp {
            version: STAMP_VERSION,
            agent_id: self.id.clone(),
            seq,
            prev_hash: self.head.hash,
            kind: if request {
                StampKind::Request
            } else {
                StampKind::Response
            },
            time_ms: 1_700_000_000_000 + seq,
            model: "gpt-4o-mini".into(),
            tokens_in: 120,
            tokens_out: if request { 256 } else { 87 },
            ref_seq: if request { 0 } else { seq - 1 },
            flags: 0,
            status: if request { 0 } else { 200 },
            blob_hash: None,
        };
        self.head = Head {
            seq,
            hash: stamp.hash(),
        };
        stamp
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// CPU seconds used so far by this process: (control plane threads, client threads).
fn cpu_split() -> (f64, f64) {
    // SAFETY: sysconf only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (mut server, mut client) = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After the name: state is field 3, utime 14, stime 15.
        let ticks: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        let secs = ticks / tick;
        let is_server = ["cloud-server", "ledger-", "stamp-verifier"]
            .iter()
            .any(|p| name.starts_with(p));
        if is_server {
            server += secs;
        } else {
            client += secs;
        }
    }
    (server, client)
}

fn main() {
    let args = args();
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("LOCKSTOCK_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    // The control plane and the clients run on runtimes of their own (two workers each, as
    // many as there are cores), so the CPU each side uses can be told apart.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cloud-server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = lockstock_cloud::Account::init(dir.path()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (url, server) = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(lockstock_cloud::serve(
            listener,
            lockstock_cloud::ServerConfig::new(dir.path()),
            async {
                let _ = stop_rx.await;
            },
        ));
        (url, server)
    });
    client_rt.block_on(run(args, url, keys, dir.path()));
    let _ = stop_tx.send(());
    server_rt.block_on(server).unwrap().unwrap();
}

async fn run(args: Args, url: String, keys: lockstock_cloud::InitKeys, dir: &std::path::Path) {
    let http = lockstock::http::client(Default::default());
    let admin = ControlPlane::with_http(&url, &keys.admin_key, http.clone()).unwrap();
    let gateway = ControlPlane::with_http(&url, &keys.gateway_key, http).unwrap();
    let mut chains = Vec::new();
    for i in 0..args.clients {
        let agent = common::new_agent(&admin, &gateway, &format!("bench-{i}")).await;
        // A budget, so every request reserves and every response settles.
        admin.set_budget(&agent.id, Some(1 << 60)).await.unwrap();
        chains.push(Chain {
            head: agent.head,
            id: agent.id,
            key: agent.key,
        });
    }
    println!(
        "stamp_bench: {} clients, {} s per batch size, {}, SQLite WAL, fdatasync before every answer, in {}",
        args.clients,
        args.seconds,
        if args.presign {
            "stamps signed before timing"
        } else {
            "stamps signed by the clients as they go"
        },
        dir.display()
    );
    let _ = keys.gateway_key.expose_secret();

    for &batch in &args.batches {
        // Enough pre-signed stamps for a generous rate; the clients stop when they run out.
        let presigned: Vec<Vec<Vec<SignedStamp>>> = if args.presign {
            // Enough for 40,000 stamps/s; a client that runs out stops early (reported).
            let per_client = (40_000 * (args.seconds as usize + 2) / args.clients).max(batch * 4);
            chains
                .iter_mut()
                .map(|c| (0..per_client / batch).map(|_| c.batch(batch)).collect())
                .collect()
        } else {
            vec![Vec::new(); chains.len()]
        };
        let warmup = Duration::from_millis(1000);
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (chain, mut pre) in std::mem::take(&mut chains).into_iter().zip(presigned) {
            let gateway = gateway.clone();
            let stop = stop.clone();
            pre.reverse();
            tasks.push(tokio::spawn(async move {
                let mut chain = chain;
                let mut lat = Vec::with_capacity(1 << 16);
                let mut stamps_done = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let stamps: Vec<SignedStamp> = if args.presign {
                        let Some(call) = pre.pop() else {
                            eprintln!("stamp_bench: a client ran out of pre-signed stamps");
                            break;
                        };
                        call
                    } else {
                        chain.batch(batch)
                    };
                    let t = Instant::now();
                    let resp = gateway.append(&stamps).await.expect("append");
                    let took = t.elapsed();
                    assert!(
                        resp.results.iter().all(|r| r.verdict.appended()),
                        "{resp:?}"
                    );
                    if t.duration_since(start) >= warmup {
                        lat.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        stamps_done += stamps.len();
                    }
                }
                (chain, pre, lat, stamps_done)
            }));
        }
        tokio::time::sleep(warmup).await;
        let cpu_before = cpu_split();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let cpu_after = cpu_split();
        stop.store(true, Ordering::Relaxed);
        let measured = start.elapsed() - warmup;
        let mut all = Vec::new();
        let mut total = 0;
        for t in tasks {
            let (mut chain, pre, lat, n) = t.await.unwrap();
            if let Some(last_unsent) = pre.last().and_then(|call| call.first()) {
                // Unsent pre-signed stamps: rewind the chain to the last sent one.
                chain.head = Head {
                    seq: last_unsent.stamp.seq - 1,
                    hash: last_unsent.stamp.prev_hash,
                };
            }
            chains.push(chain);
            all.extend(lat);
            total += n;
        }
        all.sort_unstable();
        let secs = measured.as_secs_f64();
        let server_us = (cpu_after.0 - cpu_before.0) * 1e6 / total.max(1) as f64;
        let client_us = (cpu_after.1 - cpu_before.1) * 1e6 / total.max(1) as f64;
        println!(
            "batch {batch:>3}: {:>7.0} stamps/s ({:>6.0} calls/s)  p50 {:>6.2} ms  p99 {:>6.2} ms  \
             CPU per stamp: control plane {server_us:.0} us, clients {client_us:.0} us  ({total} stamps in {secs:.1} s)",
            total as f64 / secs,
            all.len() as f64 / secs,
            percentile(&all, 0.50),
            percentile(&all, 0.99),
        );
    }
}
