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

/// One measurement: wall time, the tool's CPU time, and this process's CPU time meanwhile
/// (the control plane runs in this process).
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    tool_cpu: Duration,
    server_cpu: Duration,
}

/// CPU time of this process (user + system, all threads), or of its waited-for children.
fn cpu_of(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the struct passed and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

fn cpu() -> Duration {
    cpu_of(libc::RUSAGE_SELF)
}

/// Runs a command `runs` times with stdout to /dev/null; the run with the median wall time.
/// Runs on a separate thread so the control plane's runtime keeps serving meanwhile.
async fn time_cmd(runs: usize, make: impl Fn() -> Command) -> Timing {
    let mut all = Vec::new();
    for _ in 0..runs {
        let mut c = make();
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let (self0, child0, start) = (cpu(), cpu_of(libc::RUSAGE_CHILDREN), Instant::now());
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        let wall = start.elapsed();
        assert!(
            out.status.success(),
            "failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.push(Timing {
            wall,
            tool_cpu: cpu_of(libc::RUSAGE_CHILDREN) - child0,
            server_cpu: cpu() - self0,
        });
    }
    all.sort_by_key(|t| t.wall);
    all[all.len() / 2]
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

/// Where verify's CPU time goes, measured in this process (which also runs the control
/// plane): serving and receiving the pages, parsing them, and the checks (hash, signature,
/// link). CPU seconds, all threads: on an idle machine, wall time is this divided by the cores
/// used.
async fn breakdown(
    url: &str,
    key: &str,
    agent: &AgentId,
    vk: ed25519_dalek::VerifyingKey,
) -> [Duration; 4] {
    use http_body_util::BodyExt;
    let http = lockstock::http::client(Default::default());
    let mut raw = Vec::new();
    let c0 = cpu();
    let mut after = 0u64;
    loop {
        let req = http::Request::get(format!(
            "{url}/v1/agents/{agent}/stamps?after={after}&limit=1000"
        ))
        .header("authorization", format!("Bearer {key}"))
        .body(lockstock::http::full(Vec::new()))
        .unwrap();
        let body = http
            .request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        // The page ends with `"next_after":N}` (or `null`): read it without parsing the page.
        let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(40)..]).into_owned();
        let next: Option<u64> = tail
            .rsplit_once("\"next_after\":")
            .and_then(|(_, n)| n.trim_end_matches('}').parse().ok());
        raw.push(body);
        match next {
            Some(a) => after = a,
            None => break,
        }
    }
    let fetch = cpu() - c0;
    let c0 = cpu();
    for b in &raw {
        let _: lockstock::api::StampPage = serde_json::from_slice(b).unwrap();
    }
    let parse_api = cpu() - c0;
    let c0 = cpu();
    let pages: Vec<lockstock::api::StampPage> = raw
        .iter()
        .map(|b| lockstock_cli::admin::ledger::parse_page(b, agent).unwrap())
        .collect();
    let parse = cpu() - c0;
    let c0 = cpu();
    let mut walker = lockstock_cli::admin::ledger::ChainWalker::new(agent.clone(), Some(vk));
    for p in pages {
        assert!(walker.check_page(p.stamps).iter().all(|c| c.ok()));
    }
    [fetch, parse_api, parse, cpu() - c0]
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

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_owned();

    // Baselines.
    let cat = time_cmd(runs, || {
        let mut c = Command::new("cat");
        c.arg(&plain_file);
        c
    })
    .await;
    let mut fetch_t = Vec::new();
    let mut fetch_c = Vec::new();
    let mut blob_bytes = 0;
    for _ in 0..runs {
        let (c0, s) = (cpu(), Instant::now());
        blob_bytes = fetch_only(&admin, &transcripts.id, true).await.1;
        fetch_t.push((s.elapsed(), cpu() - c0));
        let (c0, s) = (cpu(), Instant::now());
        fetch_only(&admin, &chain.id, false).await;
        fetch_c.push((s.elapsed(), cpu() - c0));
    }
    let med = |mut v: Vec<(Duration, Duration)>| {
        v.sort();
        let (wall, cpu) = v[v.len() / 2];
        Timing {
            wall,
            tool_cpu: Duration::ZERO,
            server_cpu: cpu,
        }
    };
    let (fetch_t, fetch_c) = (med(fetch_t), med(fetch_c));
    let [b_fetch, b_parse_api, b_parse, b_check] = breakdown(
        &url,
        keys.admin_key.expose_secret(),
        &chain.id,
        chain.key.verifying_key(),
    )
    .await;

    // The tools.
    let audit_json = time_cmd(runs, || tool(&["--agent-id", &t_id, "--format", "json"])).await;
    let audit_text = time_cmd(runs, || tool(&["--agent-id", &t_id])).await;
    let verify_chain = time_cmd(runs, || tool(&["verify", "--agent-id", &c_id])).await;
    let verify_t = time_cmd(runs, || tool(&["verify", "--agent-id", &t_id])).await;

    let t_stamps = 2 * a.exchanges;
    let mb = plain_bytes as f64 / 1e6;
    println!(
        "machine: {cores} cores, load average {load} at the start; control plane in this process; median of {runs} runs"
    );
    println!(
        "transcripts: {mb:.1} MB plaintext ({:.1} MB sealed) in {t_stamps} blobs; chain: {} stamps",
        blob_bytes as f64 / 1e6,
        a.chain_stamps
    );
    println!(
        "'idle' = the rate if the run had the {cores} cores to itself: work / ((tool CPU + control-plane CPU) / {cores})"
    );
    println!(
        "{:<42} {:>7} {:>8} {:>8} {:>15} {:>15}",
        "", "wall s", "tool cpu", "cp cpu", "rate (wall)", "rate (idle)"
    );
    let row = |name: &str, t: Timing, work: f64, unit: &str| {
        let busy = (t.tool_cpu + t.server_cpu).as_secs_f64() / cores as f64;
        let idle = if busy > 0.0 {
            format!("{:.1} {unit}", work / busy)
        } else {
            "-".to_owned()
        };
        println!(
            "{name:<42} {:>7.3} {:>8.3} {:>8.3} {:>15} {:>15}",
            t.wall.as_secs_f64(),
            t.tool_cpu.as_secs_f64(),
            t.server_cpu.as_secs_f64(),
            format!("{:.1} {unit}", work / t.wall.as_secs_f64()),
            idle
        );
    };
    row("baseline: cat of the plaintext", cat, mb, "MB/s");
    row(
        "baseline: fetch pages + blobs, no checks",
        fetch_t,
        mb,
        "MB/s",
    );
    row("lockstock-audit --format json", audit_json, mb, "MB/s");
    row("lockstock-audit (text)", audit_text, mb, "MB/s");
    let n = a.chain_stamps as f64;
    row("baseline: fetch stamp pages, no checks", fetch_c, n, "st/s");
    row(
        "lockstock-audit verify (no transcripts)",
        verify_chain,
        n,
        "st/s",
    );
    row(
        "lockstock-audit verify (+ blob hashes)",
        verify_t,
        t_stamps as f64,
        "st/s",
    );
    println!("verify's CPU per stamp, measured in this process:");
    for (name, d) in [
        ("serve and receive the pages", b_fetch),
        ("parse the pages (the API types' serde)", b_parse_api),
        ("parse the pages (the tool's reader)", b_parse),
        ("hash, signature and link checks", b_check),
    ] {
        println!("  {name:<40} {:>6.1} µs", d.as_secs_f64() * 1e6 / n);
    }
    let idle =
        |t: Timing, work: f64| work / ((t.tool_cpu + t.server_cpu).as_secs_f64() / cores as f64);
    println!(
        "ratios: audit json takes {:.2}x the fetch-only time and {:.0}x cat; verify {:.2}x the page fetch",
        audit_json.wall.as_secs_f64() / fetch_t.wall.as_secs_f64(),
        audit_json.wall.as_secs_f64() / cat.wall.as_secs_f64(),
        verify_chain.wall.as_secs_f64() / fetch_c.wall.as_secs_f64(),
    );
    let verdict = |wall: f64, idle: f64, target: f64| match (wall >= target, idle >= target) {
        (true, _) => "met",
        (false, true) => "met on an idle machine (CPU-bound estimate), not under this load",
        _ => "NOT met",
    };
    println!(
        "targets: decrypt >= 20 MB/s: {}; verify >= 50,000 stamps/s: {}",
        verdict(
            mb / audit_json.wall.as_secs_f64(),
            idle(audit_json, mb),
            20.0
        ),
        verdict(
            n / verify_chain.wall.as_secs_f64(),
            idle(verify_chain, n),
            50_000.0
        ),
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
