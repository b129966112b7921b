//! Benchmark of the admin tools: how fast `lockstock-audit` decrypts transcripts (target
//! ≥ 20 MB/s) and how fast `lockstock-audit verify` checks stamps (target ≥ 50,000 stamps/s).
//!
//! Starts the control plane in-process on a temp SQLite file, fills two agents through its
//! HTTP API exactly as a gateway would (validly signed, chained stamps; transcripts sealed
//! with a data key per epoch, wrapped to the account key, uploaded with the gateway key):
//!
//! * `transcripts`: `--exchanges` request/response pairs, each with a sealed request body
//!   (an OpenAI chat request of `--request-bytes`) and a sealed streamed answer (SSE chunks,
//!   `--response-bytes`);
//! * `chain`: `--chain-stamps` stamps without transcripts (a gateway with no account key).
//!
//! Then it times the release binaries, each run `--runs` times (median), against baselines
//! measured in the same run on the same machine:
//!
//! * `cat` of the same plaintext bytes (the floor of printing them);
//! * a fetch-only client: the same stamp pages and blobs over the same HTTP API, with the same
//!   concurrency, checking nothing and decrypting nothing (the transport's ceiling).
//!
//! ```text
//! bench/audit.sh            # builds the release binaries and runs this
//! cargo run --release -p lockstock-cli --example audit_bench -- --exchanges 2500 --runs 3
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;
use lockstock::AgentId;
use lockstock::api::{
    AccountKeyRequest, ActivateRequest, BlobUpload, ProvisionRequest, WrappedKey,
};
use lockstock::chain::{Hash32, Head, STAMP_VERSION, SignedStamp, Stamp, StampKind};
use lockstock::client::ControlPlane;
use lockstock::seal::{AccountKey, Dek};
use lockstock::secret::ExposeSecret;

struct Args {
    exchanges: usize,
    request_bytes: usize,
    response_bytes: usize,
    chain_stamps: usize,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args {
        exchanges: 2500,
        request_bytes: 4 * 1024,
        response_bytes: 16 * 1024,
        chain_stamps: 200_000,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--exchanges" => a.exchanges = value(),
            "--request-bytes" => a.request_bytes = value(),
            "--response-bytes" => a.response_bytes = value(),
            "--chain-stamps" => a.chain_stamps = value(),
            "--runs" => a.runs = value().max(1),
            "--bench" => {} // cargo bench passes it
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// One agent's chain, written as a gateway writes it.
struct Chain {
    id: AgentId,
    key: SigningKey,
    head: Head,
}

impl Chain {
    fn stamp(&mut self, kind: StampKind, blob: Option<&[u8]>) -> SignedStamp {
        let seq = self.head.seq + 1;
        let request = kind == StampKind::Request;
        let signed = Stamp {
            version: STAMP_VERSION,
            agent_id: self.id.clone(),
            seq,
            prev_hash: self.head.hash,
            kind,
            time_ms: 1_760_000_000_000 + seq * 10,
            model: "gpt-4o-mini".into(),
            tokens_in: 1200,
            tokens_out: if request { 1024 } else { 900 },
            ref_seq: if request { 0 } else { seq - 1 },
            flags: 0,
            status: if request { 0 } else { 200 },
            blob_hash: blob.map(Hash32::of),
        }
        .sign(&self.key);
        self.head = Head {
            seq,
            hash: signed.stamp.hash(),
        };
        signed
    }
}

/// An OpenAI chat request of about `n` bytes.
fn request_body(i: usize, n: usize) -> Vec<u8> {
    let filler = "Summarise the quarterly figures and flag anything unusual. ".repeat(n / 60 + 1);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are a careful analyst."},
            {"role": "user", "content": format!("#{i}: {}", &filler[..n.saturating_sub(120).min(filler.len())])}
        ]
    }))
    .unwrap()
}

/// A streamed chat completion (SSE) of about `n` bytes.
fn response_body(i: usize, n: usize) -> Vec<u8> {
    let mut out = String::with_capacity(n + 512);
    let mut k = 0;
    while out.len() < n {
        let chunk = serde_json::json!({
            "id": format!("chatcmpl-{i}"), "object": "chat.completion.chunk", "created": 1_760_000_000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": format!("word{k} and some more text, ")}, "finish_reason": null}]
        });
        out.push_str(&format!("data: {chunk}\n\n"));
        k += 1;
    }
    out.push_str("data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":900}}\n\ndata: [DONE]\n\n");
    out.into_bytes()
}

async fn new_agent(admin: &ControlPlane, gateway: &ControlPlane, name: &str) -> Chain {
    let p = admin
        .provision(&ProvisionRequest {
            name: name.into(),
            provider: None,
        })
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&lockstock::secret::random_array());
    gateway
        .activate(&ActivateRequest {
            agent_id: p.agent_id.clone(),
            genesis_token: p.genesis_token,
            public_key: hex::encode(key.verifying_key().as_bytes()),
        })
        .await
        .unwrap();
    Chain {
        head: Head::genesis(&p.agent_id),
        id: p.agent_id,
        key,
    }
}

async fn append_all(gateway: &ControlPlane, stamps: &[SignedStamp]) {
    for batch in stamps.chunks(1000) {
        let r = gateway.append(batch).await.unwrap();
        assert!(r.results.iter().all(|s| s.verdict.appended()), "appended");
    }
}

/// Fills the `transcripts` agent; returns the plaintext bytes sealed.
async fn fill_transcripts(
    a: &Args,
    gateway: &ControlPlane,
    chain: &mut Chain,
    account: &AccountKey,
    plain_file: &Path,
) -> u64 {
    use std::io::Write;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut plain = std::io::BufWriter::new(std::fs::File::create(plain_file).unwrap());
    let mut total = 0u64;
    let per_epoch = 500;
    let mut start = 0;
    while start < a.exchanges {
        let end = (start + per_epoch).min(a.exchanges);
        let dek = Dek::generate(1_760_000_000_000 + start as u64);
        gateway
            .put_keys(vec![WrappedKey {
                agent_id: chain.id.clone(),
                epoch: dek.epoch,
                key_id: account.public_key().key_id(),
                wrapped: b64.encode(dek.wrap(&account.public_key(), &chain.id).unwrap()),
            }])
            .await
            .unwrap();
        let mut stamps = Vec::new();
        let mut blobs = Vec::new();
        for i in start..end {
            for (kind, body) in [
                (StampKind::Request, request_body(i, a.request_bytes)),
                (StampKind::Response, response_body(i, a.response_bytes)),
            ] {
                let seq = chain.head.seq + 1;
                let blob = dek.seal(&chain.id, seq, kind, &body).unwrap();
                stamps.push(chain.stamp(kind, Some(&blob)));
                plain.write_all(&body).unwrap();
                total += body.len() as u64;
                blobs.push(BlobUpload {
                    agent_id: chain.id.clone(),
                    seq,
                    kind,
                    data: b64.encode(blob),
                });
            }
        }
        append_all(gateway, &stamps).await;
        let mut batch = Vec::new();
        let mut size = 0;
        for b in blobs {
            size += b.data.len();
            batch.push(b);
            if size > 6 << 20 {
                gateway.upload_blobs(&batch).await.unwrap();
                batch.clear();
                size = 0;
            }
        }
        if !batch.is_empty() {
            gateway.upload_blobs(&batch).await.unwrap();
        }
        start = end;
    }
    total
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs a command `runs` times with stdout to /dev/null; the median wall time.
fn time_cmd(runs: usize, mut make: impl FnMut() -> Command) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        let mut c = make();
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let start = Instant::now();
        let out = c.output().unwrap();
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    median(times)
}

/// The fetch-only baseline: every page, and every blob (same concurrency as the tool).
async fn fetch_only(cp: &ControlPlane, agent: &AgentId, blobs: bool) -> (u64, u64) {
    let (mut stamps, mut bytes, mut after) = (0u64, 0u64, 0u64);
    loop {
        let page = cp.stamps(agent, after, 1000).await.unwrap();
        stamps += page.stamps.len() as u64;
        if blobs {
            let seqs: Vec<u64> = page
                .stamps
                .iter()
                .filter(|r| r.has_blob)
                .map(|r| r.signed.stamp.seq)
                .collect();
            let mut s = futures_util::stream::iter(seqs)
                .map(|seq| async move { cp.blob(agent, seq).await.unwrap().map_or(0, |b| b.len()) })
                .buffered(32);
            while let Some(n) = s.next().await {
                bytes += n as u64;
            }
        }
        match page.next_after {
            Some(a) => after = a,
            None => return (stamps, bytes),
        }
    }
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/audit_bench → target/release/
    exe.parent().unwrap().parent().unwrap().to_owned()
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let audit = bin_dir().join("lockstock-audit");
    assert!(
        audit.exists(),
        "build it first: cargo build --release -p lockstock-cli --bin lockstock-audit"
    );
    let dir = tempfile::tempdir().unwrap();
    let keys = lockstock_cloud::Account::init(&dir.path().join("cloud")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lockstock_cloud::serve(
        listener,
        lockstock_cloud::ServerConfig::new(dir.path().join("cloud")),
        async {
            let _ = stop_rx.await;
        },
    ));
    let admin = ControlPlane::new(&url, &keys.admin_key).unwrap();
    let gateway = ControlPlane::new(&url, &keys.gateway_key).unwrap();
    let account = AccountKey::generate();
    admin
        .set_account_key(&AccountKeyRequest {
            public_key: account.public_key().to_hex(),
            verification_hash: account.verification_hash(),
            retire_key_id: None,
        })
        .await
        .unwrap();

    let fill = Instant::now();
    let mut transcripts = new_agent(&admin, &gateway, "transcripts").await;
    let plain_file = dir.path().join("plaintext.bin");
    let plain_bytes = fill_transcripts(&a, &gateway, &mut transcripts, &account, &plain_file).await;
    let mut chain = new_agent(&admin, &gateway, "chain").await;
    let stamps: Vec<SignedStamp> = (0..a.chain_stamps)
        .map(|i| {
            let kind = if i % 2 == 0 {
                StampKind::Request
            } else {
                StampKind::Response
            };
            chain.stamp(kind, None)
        })
        .collect();
    append_all(&gateway, &stamps).await;
    drop(stamps);
    eprintln!(
        "filled in {:.1} s: {} exchanges ({:.1} MB of transcripts, {} + {} bytes each), {} stamps without transcripts",
        fill.elapsed().as_secs_f64(),
        a.exchanges,
        plain_bytes as f64 / 1e6,
        a.request_bytes,
        a.response_bytes,
        a.chain_stamps
    );

    let tool = |args: &[&str]| {
        let mut c = Command::new(&audit);
        c.env_clear()
            .env("HOME", dir.path())
            .env("LIBERTY_HOME", dir.path().join("no-vault"))
            .env("LOCKSTOCK_URL", &url)
            .env("LOCKSTOCK_API_KEY", keys.admin_key.expose_secret())
            .env("LOCKSTOCK_ACCOUNT_KEY", account.to_hex().as_str())
            .args(args);
        c
    };
    let (t_id, c_id) = (transcripts.id.to_string(), chain.id.to_string());
    let runs = a.runs;

    // Baselines.
    let cat = time_cmd(runs, || {
        let mut c = Command::new("cat");
        c.arg(&plain_file);
        c
    });
    let mut fetch_t = Vec::new();
    let mut fetch_c = Vec::new();
    let mut blob_bytes = 0;
    for _ in 0..runs {
        let s = Instant::now();
        blob_bytes = fetch_only(&admin, &transcripts.id, true).await.1;
        fetch_t.push(s.elapsed());
        let s = Instant::now();
        fetch_only(&admin, &chain.id, false).await;
        fetch_c.push(s.elapsed());
    }
    let (fetch_t, fetch_c) = (median(fetch_t), median(fetch_c));

    // The tools.
    let audit_json = time_cmd(runs, || tool(&["--agent-id", &t_id, "--format", "json"]));
    let audit_text = time_cmd(runs, || tool(&["--agent-id", &t_id]));
    let verify_chain = time_cmd(runs, || tool(&["verify", "--agent-id", &c_id]));
    let verify_t = time_cmd(runs, || tool(&["verify", "--agent-id", &t_id]));

    let mbps = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let t_stamps = 2 * a.exchanges;
    println!(
        "machine: {} cores; control plane in-process (same machine); median of {runs} runs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "transcripts: {:.1} MB plaintext ({:.1} MB sealed) in {} blobs",
        plain_bytes as f64 / 1e6,
        blob_bytes as f64 / 1e6,
        t_stamps
    );
    println!("{:<44} {:>9} {:>14}", "", "seconds", "rate");
    let row = |name: &str, d: Duration, rate: String| {
        println!("{name:<44} {:>9.3} {rate:>14}", d.as_secs_f64());
    };
    row(
        "baseline: cat of the plaintext",
        cat,
        format!("{:.0} MB/s", mbps(plain_bytes, cat)),
    );
    row(
        "baseline: fetch pages + blobs, no checks",
        fetch_t,
        format!("{:.1} MB/s", mbps(plain_bytes, fetch_t)),
    );
    row(
        "lockstock-audit --format json",
        audit_json,
        format!("{:.1} MB/s", mbps(plain_bytes, audit_json)),
    );
    row(
        "lockstock-audit (text)",
        audit_text,
        format!("{:.1} MB/s", mbps(plain_bytes, audit_text)),
    );
    row(
        "baseline: fetch stamp pages, no checks",
        fetch_c,
        format!("{:.0} stamps/s", per_s(a.chain_stamps, fetch_c)),
    );
    row(
        "lockstock-audit verify (no transcripts)",
        verify_chain,
        format!("{:.0} stamps/s", per_s(a.chain_stamps, verify_chain)),
    );
    row(
        "lockstock-audit verify (with blob hashes)",
        verify_t,
        format!("{:.0} stamps/s", per_s(t_stamps, verify_t)),
    );
    println!(
        "ratios: audit json = {:.2}x the fetch-only time, {:.0}x cat; verify = {:.2}x the page-fetch time",
        audit_json.as_secs_f64() / fetch_t.as_secs_f64(),
        audit_json.as_secs_f64() / cat.as_secs_f64(),
        verify_chain.as_secs_f64() / fetch_c.as_secs_f64(),
    );
    println!(
        "targets: decrypt >= 20 MB/s: {}; verify >= 50,000 stamps/s: {}",
        if mbps(plain_bytes, audit_json) >= 20.0 {
            "met"
        } else {
            "NOT met"
        },
        if per_s(a.chain_stamps, verify_chain) >= 50_000.0 {
            "met"
        } else {
            "NOT met"
        },
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
