//! `lockstock-loadgen`: closed-loop HTTP/1.1 load over keep-alive connections, for a fixed time.
//!
//! Each of N connections sends one request, reads the whole response, checks it, and sends the
//! next. Every request started ends as exactly one of: ok, refused (non-2xx), incomplete (the
//! body is not the complete answer), failed (connection broke after the request was sent) or
//! timed out; so a lost request always shows. Latency counts from sending the request to the
//! last byte of the body; for streams, time to first byte counts to the first body byte.
//! Samples are kept for requests started after the warm-up. While it runs it reads the CPU time
//! and memory of the processes named with `--proc` (with their descendants) from /proc.
//! Prints one JSON object on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lockstock_testkit::hist::Histogram;
use lockstock_testkit::procstat;
use serde_json::{Value, json};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(
    name = "lockstock-loadgen",
    about = "Closed-loop HTTP/1.1 load for a fixed time"
)]
struct Args {
    /// Target URL, e.g. http://127.0.0.1:4000/v1/chat/completions
    #[arg(long)]
    url: String,
    /// Request body (file); POST when given, GET otherwise.
    #[arg(long, value_name = "FILE")]
    body: Option<std::path::PathBuf>,
    /// Extra request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A header whose value depends on the connection: connection i sends the (i mod n)-th of
    /// the comma-separated values (e.g. one agent per connection, round robin).
    #[arg(long, value_name = "NAME: V1,V2,...")]
    rotate: Option<String>,
    /// Concurrent connections (one request in flight on each).
    #[arg(short = 'c', long, default_value_t = 16)]
    connections: usize,
    /// Seconds of measured load, after the warm-up.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds a request may take before it counts as timed out.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// The answer streams (SSE): record time to first byte; a complete body ends with
    /// `data: [DONE]`.
    #[arg(long)]
    stream: bool,
    /// The body each response must equal, byte for byte (else: a JSON object with `choices`,
    /// or for streams an SSE body that ends with `data: [DONE]`).
    #[arg(long, value_name = "FILE")]
    expect: Option<std::path::PathBuf>,
    /// A process to measure, `name=pid` (repeatable); its descendants count with it.
    #[arg(long = "proc", value_name = "NAME=PID")]
    procs: Vec<String>,
    /// Milliseconds between two memory samples of the measured processes.
    #[arg(long, default_value_t = 500)]
    sample_ms: u64,
    /// Include every memory sample in the output (for soak runs).
    #[arg(long)]
    series: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    incomplete: u64,
    failed: u64,
    timed_out: u64,
    connect_errors: u64,
    reconnects: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: Vec<String>,
    /// Measured window only.
    measured_ok: u64,
    latency: Histogram,
    ttfb: Histogram,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.incomplete += o.incomplete;
        self.failed += o.failed;
        self.timed_out += o.timed_out;
        self.connect_errors += o.connect_errors;
        self.reconnects += o.reconnects;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for e in o.errors {
            if self.errors.len() < 8 && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        self.measured_ok += o.measured_ok;
        self.latency.merge(&o.latency);
        self.ttfb.merge(&o.ttfb);
    }

    fn note(&mut self, e: String) {
        if self.errors.len() < 8 && !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }
}

struct Plan {
    authority: String,
    addr: String,
    path: String,
    method: http::Method,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `--rotate`: the header's name and the values the connections take in turn.
    rotate: Option<(http::HeaderName, Vec<http::HeaderValue>)>,
    body: Bytes,
    expect: Option<Bytes>,
    stream: bool,
    timeout: Duration,
    measure_from: Instant,
    measure_to: Instant,
    /// Requests sent by every connection, counted as they go (a connection that never
    /// reports back still counts here).
    sent: AtomicU64,
}

enum Outcome {
    Ok { status: u16, ttfb: Option<Duration> },
    Refused(u16),
    Incomplete(String),
}

fn complete(plan: &Plan, body: &[u8]) -> Result<(), String> {
    if let Some(want) = &plan.expect {
        if body == want.as_ref() {
            return Ok(());
        }
        return Err(format!(
            "body differs from the expected answer ({} bytes, expected {})",
            body.len(),
            want.len()
        ));
    }
    if plan.stream {
        let text = String::from_utf8_lossy(body);
        if text.trim_end().ends_with("data: [DONE]") {
            Ok(())
        } else {
            Err(format!("stream without its end ({} bytes)", body.len()))
        }
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) if v.get("choices").is_some_and(Value::is_array) => Ok(()),
            _ => Err(format!("not a chat completion ({} bytes)", body.len())),
        }
    }
}

async fn one(
    plan: &Plan,
    own: Option<&(http::HeaderName, http::HeaderValue)>,
    sender: &mut http1::SendRequest<Full<Bytes>>,
    buf: &mut Vec<u8>,
    t0: Instant,
) -> Result<Outcome, hyper::Error> {
    let mut req = http::Request::builder()
        .method(plan.method.clone())
        .uri(&plan.path)
        .header(http::header::HOST, &plan.authority);
    for (k, v) in plan.headers.iter().chain(own) {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(plan.body.clone()))
        .expect("a valid request");
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    buf.clear();
    let mut ttfb = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            if ttfb.is_none() && !d.is_empty() {
                ttfb = Some(t0.elapsed());
            }
            buf.extend_from_slice(d);
        }
    }
    if !(200..300).contains(&status) {
        return Ok(Outcome::Refused(status));
    }
    Ok(match complete(plan, buf) {
        Ok(()) => Outcome::Ok { status, ttfb },
        Err(why) => Outcome::Incomplete(why),
    })
}

async fn connection(plan: Arc<Plan>, stop: Arc<AtomicBool>, index: usize) -> Tally {
    let own = plan
        .rotate
        .as_ref()
        .map(|(name, values)| (name.clone(), values[index % values.len()].clone()));
    let mut t = Tally::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    'connect: while !stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect(&plan.addr).await {
            Ok(s) => s,
            Err(e) => {
                t.connect_errors += 1;
                t.note(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => {
                t.connect_errors += 1;
                t.note(format!("handshake: {e}"));
                continue;
            }
        };
        tokio::spawn(conn);
        loop {
            // A connection the server closed between requests (keep-alive limit) is no error:
            // nothing was sent on it.
            if sender.ready().await.is_err() {
                t.reconnects += 1;
                continue 'connect;
            }
            if stop.load(Ordering::Relaxed) {
                break 'connect;
            }
            let t0 = Instant::now();
            if t0 >= plan.measure_to {
                break 'connect;
            }
            plan.sent.fetch_add(1, Ordering::Relaxed);
            let measured = t0 >= plan.measure_from;
            let r = tokio::time::timeout(
                plan.timeout,
                one(&plan, own.as_ref(), &mut sender, &mut buf, t0),
            )
            .await;
            let took = t0.elapsed();
            match r {
                Ok(Ok(Outcome::Ok { status, ttfb })) => {
                    t.ok += 1;
                    *t.statuses.entry(status).or_default() += 1;
                    if measured {
                        t.measured_ok += 1;
                        t.latency.record(took.as_nanos() as u64);
                        if let Some(f) = ttfb {
                            t.ttfb.record(f.as_nanos() as u64);
                        }
                    }
                }
                Ok(Ok(Outcome::Refused(status))) => {
                    t.refused += 1;
                    *t.statuses.entry(status).or_default() += 1;
                    t.note(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&buf[..buf.len().min(200)])
                    ));
                }
                Ok(Ok(Outcome::Incomplete(why))) => {
                    t.incomplete += 1;
                    t.note(why);
                }
                Ok(Err(e)) => {
                    t.failed += 1;
                    t.note(format!("request: {e}"));
                    continue 'connect;
                }
                Err(_) => {
                    t.timed_out += 1;
                    t.note(format!("no complete answer within {:?}", plan.timeout));
                    continue 'connect;
                }
            }
        }
    }
    t
}

struct Proc {
    name: String,
    pid: u32,
}

#[derive(Default, Clone)]
struct Mem {
    first_kib: u64,
    last_kib: u64,
    max_kib: u64,
    series: Vec<(f64, u64)>,
}

fn parse_procs(list: &[String]) -> Result<Vec<Proc>> {
    list.iter()
        .map(|p| {
            let (name, pid) = p.split_once('=').context("--proc wants name=pid")?;
            Ok(Proc {
                name: name.to_owned(),
                pid: pid.parse().context("--proc wants name=pid")?,
            })
        })
        .collect()
}

fn stat_json(h: &Histogram) -> Value {
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    json!({
        "count": h.count(),
        "p50": us(h.quantile(0.50)),
        "p90": us(h.quantile(0.90)),
        "p99": us(h.quantile(0.99)),
        "p999": us(h.quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 100.0).round() / 10.0,
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lockstock-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<Value> {
    let url: http::Uri = args.url.parse().context("--url")?;
    if url.scheme_str() != Some("http") {
        bail!("only http:// URLs");
    }
    let authority = url
        .authority()
        .context("--url needs host:port")?
        .to_string();
    let addr = if url.port().is_some() {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let body = match &args.body {
        Some(p) => Bytes::from(std::fs::read(p).with_context(|| format!("{}", p.display()))?),
        None => Bytes::new(),
    };
    let mut headers = Vec::new();
    if args.body.is_some() {
        headers.push((
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        ));
    }
    for h in &args.headers {
        let (k, v) = h.split_once(':').context("a header is `name: value`")?;
        headers.push((k.trim().parse()?, v.trim().parse()?));
    }
    let rotate = match &args.rotate {
        Some(r) => {
            let (k, v) = r.split_once(':').context("--rotate is `name: v1,v2,...`")?;
            let values = v
                .split(',')
                .map(|v| v.trim().parse())
                .collect::<Result<Vec<http::HeaderValue>, _>>()?;
            if values.iter().any(|v| v.is_empty()) {
                bail!("--rotate: an empty value in {v:?}");
            }
            Some((k.trim().parse()?, values))
        }
        None => None,
    };
    let expect = match &args.expect {
        Some(p) => Some(Bytes::from(
            std::fs::read(p).with_context(|| format!("{}", p.display()))?,
        )),
        None => None,
    };
    let procs = parse_procs(&args.procs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;

    let start = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let window = Duration::from_secs_f64(args.duration);
    let plan = Arc::new(Plan {
        authority,
        addr,
        path: url
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string()),
        method: if args.body.is_some() {
            http::Method::POST
        } else {
            http::Method::GET
        },
        headers,
        rotate,
        body,
        expect,
        stream: args.stream,
        timeout: Duration::from_secs_f64(args.timeout),
        measure_from: start + warmup,
        measure_to: start + warmup + window,
        sent: AtomicU64::new(0),
    });

    // Memory and CPU samples on a thread of their own, off the runtime.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pids: Vec<(String, u32)> = procs.iter().map(|p| (p.name.clone(), p.pid)).collect();
        let every = Duration::from_millis(args.sample_ms.max(10));
        let series = args.series;
        let measure_from = plan.measure_from;
        let measure_to = plan.measure_to;
        std::thread::spawn(move || {
            let me = std::process::id();
            let mut mem: Vec<Mem> = vec![Mem::default(); pids.len()];
            let mut cpu_from: Option<(Vec<f64>, f64)> = None;
            let mut cpu_to: Option<(Vec<f64>, f64)> = None;
            let mut first = true;
            loop {
                let now = Instant::now();
                if cpu_from.is_none() && now >= measure_from {
                    cpu_from = Some((
                        pids.iter()
                            .map(|(_, p)| procstat::cpu_seconds(*p))
                            .collect(),
                        procstat::own_cpu_seconds(me),
                    ));
                }
                if cpu_to.is_none() && now >= measure_to {
                    cpu_to = Some((
                        pids.iter()
                            .map(|(_, p)| procstat::cpu_seconds(*p))
                            .collect(),
                        procstat::own_cpu_seconds(me),
                    ));
                }
                for (m, (_, pid)) in mem.iter_mut().zip(&pids) {
                    let kib = procstat::rss_kib(*pid);
                    if first {
                        m.first_kib = kib;
                    }
                    m.last_kib = kib;
                    m.max_kib = m.max_kib.max(kib);
                    if series {
                        m.series.push((start.elapsed().as_secs_f64(), kib));
                    }
                }
                first = false;
                if done.load(Ordering::Relaxed) && cpu_to.is_some() {
                    break;
                }
                // Wake for the window's edges exactly, else every sample period.
                let mut next = now + every;
                for edge in [measure_from, measure_to] {
                    if edge > now && edge < next {
                        next = edge;
                    }
                }
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (mem, cpu_from, cpu_to)
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let tally = rt.block_on(async {
        let mut tasks = Vec::with_capacity(args.connections);
        for i in 0..args.connections {
            tasks.push(tokio::spawn(connection(plan.clone(), stop.clone(), i)));
        }
        // A stuck run stops starting requests at the end; in-flight ones may still time out.
        let hard = plan.measure_to + plan.timeout + Duration::from_secs(5);
        let mut tally = Tally::default();
        for t in tasks {
            match tokio::time::timeout_at(hard.into(), t).await {
                Ok(Ok(t)) => tally.merge(t),
                Ok(Err(e)) => tally.note(format!("a connection task failed: {e}")),
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    tally.note("a connection never finished".into());
                }
            }
        }
        tally
    });
    // Every request sent ends as one outcome; what is left is a request nobody answered.
    let sent = plan.sent.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(
        tally.ok + tally.refused + tally.incomplete + tally.failed + tally.timed_out,
    );
    done.store(true, Ordering::Relaxed);
    let (mem, cpu_from, cpu_to) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler thread"))?;
    let elapsed = start.elapsed();

    let secs = window.as_secs_f64();
    let mut procs_out = serde_json::Map::new();
    let (from, to) = (cpu_from.unwrap_or_default(), cpu_to.unwrap_or_default());
    let per_req = |cpu: f64| {
        if tally.measured_ok == 0 {
            Value::Null
        } else {
            json!((cpu / tally.measured_ok as f64 * 1e6).round())
        }
    };
    for (i, p) in procs.iter().enumerate() {
        let cpu = to.0.get(i).copied().unwrap_or(0.0) - from.0.get(i).copied().unwrap_or(0.0);
        let m = &mem[i];
        let mut o = json!({
            "pid": p.pid,
            "cpu_s": (cpu * 1000.0).round() / 1000.0,
            "cpu_us_per_req": per_req(cpu),
            "rss_first_kib": m.first_kib,
            "rss_last_kib": m.last_kib,
            "rss_max_kib": m.max_kib,
        });
        if args.series {
            o["rss_series"] = json!(m.series);
        }
        procs_out.insert(p.name.clone(), o);
    }
    let own = to.1 - from.1;
    procs_out.insert(
        "loadgen".into(),
        json!({
            "pid": std::process::id(),
            "cpu_s": (own * 1000.0).round() / 1000.0,
            "cpu_us_per_req": per_req(own),
        }),
    );
    let failures = tally.refused + tally.incomplete + tally.failed + tally.timed_out + lost;
    Ok(json!({
        "url": args.url,
        "stream": args.stream,
        "connections": args.connections,
        "warmup_s": args.warmup,
        "window_s": secs,
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "sent": sent,
        "ok": tally.ok,
        "refused": tally.refused,
        "incomplete": tally.incomplete,
        "failed": tally.failed,
        "timed_out": tally.timed_out,
        "unaccounted": lost,
        "failures": failures,
        "connect_errors": tally.connect_errors,
        "reconnects": tally.reconnects,
        "statuses": tally.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": tally.errors,
        "measured_ok": tally.measured_ok,
        "rps": (tally.measured_ok as f64 / secs * 10.0).round() / 10.0,
        "latency_us": stat_json(&tally.latency),
        "ttfb_us": if args.stream { stat_json(&tally.ttfb) } else { Value::Null },
        "procs": procs_out,
    }))
}
