//! `lockstock-bench`: the benchmark `bench/run` drives (see bench/README.md).
//!
//! Starts on loopback the fixture upstream, a control plane on a real SQLite file, two
//! gateways (governed: transcripts sealed, budgets, Sentinel; and stamps only), nginx as a
//! plain proxy and LiteLLM's proxy, then drives each in turn with `lockstock-loadgen` at each
//! concurrency, non-streaming and streaming, and reports throughput, latency (added against
//! the upstream reached directly), CPU per request of every process and memory. Long mode adds
//! an endurance run, a soak with memory samples, 1,000 open streams, and the other budgets
//! (`liberty show`, stamp appends/s, audit decrypt MB/s).

mod procs;
mod report;
mod setup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use lockstock_testkit::procstat;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "lockstock-bench",
    about = "LockStock's gateway beside the upstream, nginx and LiteLLM, in one run"
)]
pub struct Args {
    /// A few seconds per case, no extras, results not written into the repository; fails only
    /// when a request fails or is lost.
    #[arg(long)]
    short: bool,
    /// Measured seconds per case [default: 10, short: 3].
    #[arg(long)]
    seconds: Option<f64>,
    /// Warm-up seconds per case [default: 2, short: 1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Only these (comma-separated): direct, nginx, governed, embedded, stamps-only, litellm,
    /// endurance, soak, streams, agents, tools.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Modes: json (non-streaming), sse (streaming, usage asked for), sse-plain (streaming,
    /// usage not asked for).
    #[arg(long, value_delimiter = ',', default_value = "json,sse")]
    modes: Vec<String>,
    /// Seconds of the endurance run (governed, concurrency 256).
    #[arg(long, default_value_t = 60.0)]
    endurance_seconds: f64,
    /// Seconds of the memory soak (governed).
    #[arg(long, default_value_t = 600.0)]
    soak_seconds: f64,
    /// Concurrency of the memory soak.
    #[arg(long, default_value_t = 64)]
    soak_concurrency: usize,
    /// Open streams held at once for the streaming-memory check.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Agents each LockStock gateway serves; the connections take them in turn (one agent
    /// per connection when equal to the concurrency). Each agent's stamps form a chain of
    /// their own, so this measures many agents against one busy one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    agents: u16,
    /// Agents of the many-agents run (the `agents` extra): a fresh governed gateway with this
    /// many agents, one per connection, at this concurrency, non-streaming.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    many_agents: u16,
    /// The `litellm` executable (LiteLLM's proxy); its cases are skipped without it.
    #[arg(long)]
    litellm: Option<PathBuf>,
    /// Why LiteLLM is not there, for the report.
    #[arg(long)]
    litellm_note: Option<String>,
    /// The nginx executable.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// The repository (fixtures, bench/ scripts, results).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Where the release binaries are [default: next to this one].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Write bench/results/<date>[-N].{md,json} and docs/BENCHMARKS.md (default: unless --short).
    #[arg(long)]
    write: Option<bool>,
    /// A note for the report (repeatable), e.g. what else ran on the machine.
    #[arg(long)]
    note: Vec<String>,
    /// The date that names the results files [default: today, from `date +%F`].
    #[arg(long)]
    date: Option<String>,
    /// The command line to show in the report.
    #[arg(long, default_value = "bench/run")]
    command: String,
    /// Keep the temporary directory (logs, SQLite file).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct,
    Nginx,
    Governed,
    /// Governed, with the control plane in the gateway's process (as quickstart runs them).
    Embedded,
    StampsOnly,
    LiteLlm,
}

impl Target {
    const ALL: [Target; 6] = [
        Target::Direct,
        Target::Nginx,
        Target::Governed,
        Target::Embedded,
        Target::StampsOnly,
        Target::LiteLlm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Nginx => "nginx",
            Target::Governed => "governed",
            Target::Embedded => "embedded",
            Target::StampsOnly => "stamps-only",
            Target::LiteLlm => "litellm",
        }
    }

    fn lockstock(self) -> bool {
        matches!(
            self,
            Target::Governed | Target::Embedded | Target::StampsOnly
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Json,
    /// Streamed, the client asking for usage itself (`stream_options.include_usage`).
    Sse,
    /// Streamed as the OpenAI SDK does by default, without asking for usage: a gateway asks
    /// for it on the client's behalf and removes the extra chunk from what the client gets.
    SsePlain,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Json => "json",
            Mode::Sse => "sse",
            Mode::SsePlain => "sse-plain",
        }
    }

    pub fn streams(self) -> bool {
        self != Mode::Json
    }
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub target: &'static str,
    pub mode: &'static str,
    pub concurrency: usize,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    pub added_ttfb_p50_ms: Option<f64>,
    /// CPU microseconds per completed request, by process.
    pub cpu_us_per_req: BTreeMap<String, f64>,
    /// Highest resident memory sampled during the case, by process (KiB).
    pub rss_max_kib: BTreeMap<String, u64>,
    pub sent: u64,
    pub ok: u64,
    /// Requests that did not end in a complete 2xx answer (refused, broken, incomplete, timed
    /// out, or unaccounted for).
    pub failed: u64,
    /// Requests the upstream received during the case.
    pub forwarded: Option<u64>,
    /// Stamps appended per forwarded request (LockStock targets; 2 expected).
    pub stamps_per_request: Option<f64>,
    /// Failed requests, plus any request the upstream or the ledger did not see exactly as
    /// expected.
    pub lost: u64,
    pub errors: Vec<String>,
    pub loadgen: Value,
}

/// Everything running during the matrix.
struct World {
    http: procs::Http,
    bin: PathBuf,
    repo: PathBuf,
    dir: PathBuf,
    upstream: setup::Upstream,
    cloud: Option<setup::Cloud>,
    governed: Option<setup::Gateway>,
    embedded: Option<setup::Gateway>,
    stamps_only: Option<setup::Gateway>,
    nginx: Option<setup::Nginx>,
    litellm: Option<setup::LiteLlm>,
    seed: lockstock::secret::SecretKey32,
    account: Option<lockstock::seal::AccountPublicKey>,
    /// Agents each LockStock gateway serves.
    agents: u16,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockstock-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("lockstock-bench: requests failed or were lost (see above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("lockstock-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("bench: {msg}");
}

fn selected(args: &Args, name: &str, default: bool) -> bool {
    if args.only.is_empty() {
        default
    } else {
        args.only.iter().any(|o| o == name)
    }
}

async fn run(args: Args) -> Result<bool> {
    for o in &args.only {
        let known = Target::ALL.iter().any(|t| t.name() == o)
            || ["endurance", "soak", "streams", "agents", "tools"].contains(&o.as_str());
        if !known {
            bail!("--only: unknown case {o:?}");
        }
    }
    let repo = match &args.repo {
        Some(r) => r.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
    .canonicalize()
    .context("the repository")?;
    let bin = match &args.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    let seconds = args.seconds.unwrap_or(if args.short { 3.0 } else { 10.0 });
    let warmup = args.warmup.unwrap_or(if args.short { 1.0 } else { 2.0 });
    let mut modes = Vec::new();
    for m in &args.modes {
        modes.push(match m.as_str() {
            "json" => Mode::Json,
            "sse" => Mode::Sse,
            "sse-plain" => Mode::SsePlain,
            other => bail!("--modes: unknown mode {other:?}"),
        });
    }
    let mut notes: Vec<String> = args.note.clone();
    if args.agents > 1 {
        notes.push(format!(
            "each LockStock gateway serves {} agents; connection i sends as agent i mod {}",
            args.agents, args.agents
        ));
    }

    let mut targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| selected(&args, t.name(), true))
        .collect();
    if targets.contains(&Target::LiteLlm) && args.litellm.is_none() {
        targets.retain(|t| *t != Target::LiteLlm);
        notes.push(format!(
            "LiteLLM skipped: {}",
            args.litellm_note
                .as_deref()
                .unwrap_or("no litellm executable given")
        ));
    }
    let extras = !args.short;
    let want = |name: &str| selected(&args, name, extras);
    let (endurance, soak, streams, many_agents, tools) = (
        want("endurance"),
        want("soak"),
        want("streams"),
        want("agents"),
        want("tools"),
    );
    let need_cloud =
        targets.iter().any(|t| t.lockstock()) || endurance || soak || streams || many_agents;

    let tmp = tempfile::Builder::new()
        .prefix("lockstock-bench.")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    if args.keep {
        say(format!("keeping {}", dir.display()));
    }
    let mut machine = report::machine();
    machine.disk_sync = report::disk_sync(&dir, 200)
        .inspect_err(|e| say(format!("cannot time fdatasync in {}: {e}", dir.display())))
        .ok();
    say(format!(
        "{}; load average at start {}",
        machine.summary(),
        machine.loadavg
    ));

    let http = procs::http();
    if modes.contains(&Mode::SsePlain) {
        write_plain_stream(&repo, &dir)?;
    }
    let upstream = setup::upstream(&bin, &dir)?;
    say(format!("fixture upstream on {}", upstream.url));
    let mut world = World {
        http,
        bin,
        repo: repo.clone(),
        dir: dir.clone(),
        upstream,
        cloud: None,
        governed: None,
        embedded: None,
        stamps_only: None,
        nginx: None,
        litellm: None,
        seed: lockstock::secret::random_key(),
        account: None,
        agents: args.agents,
    };
    let mut memory: BTreeMap<String, report::Memory> = BTreeMap::new();

    if need_cloud {
        let cloud = setup::cloud(&world.http, &world.bin, &dir).await?;
        say(format!(
            "control plane on {} (pid {}, SQLite in {})",
            cloud.url,
            cloud.proc.pid(),
            cloud.data.display()
        ));
        world.account = Some(setup::account(&cloud).await?);
        world.cloud = Some(cloud);
    }
    if targets.contains(&Target::Governed) || endurance || soak {
        world.governed = Some(start_gateway(&world, "governed", true, world.agents).await?);
    }
    if targets.contains(&Target::Embedded) {
        world.embedded = Some(start_embedded(&world).await?);
    }
    if targets.contains(&Target::StampsOnly) {
        world.stamps_only = Some(start_gateway(&world, "stamps-only", false, world.agents).await?);
    }
    if targets.contains(&Target::Nginx) {
        match setup::nginx(&world.http, &args.nginx, &dir, &world.upstream.url).await {
            Ok(n) => {
                say(format!("nginx on {} and {}", n.url, n.stream_url));
                world.nginx = Some(n);
            }
            Err(e) => bail!("nginx did not start: {e:#}"),
        }
    }
    if targets.contains(&Target::LiteLlm) {
        let exe = args.litellm.clone().expect("checked above");
        say("starting LiteLLM (it takes a while)");
        match setup::litellm(&world.http, &exe, &dir, &world.upstream.url).await {
            Ok(l) => {
                say(format!("LiteLLM on {}", l.url));
                world.litellm = Some(l);
            }
            Err(e) => {
                targets.retain(|t| *t != Target::LiteLlm);
                notes.push(format!("LiteLLM skipped: it did not start ({e:#})"));
                say(format!("LiteLLM did not start: {e:#}"));
            }
        }
    }

    // Idle memory, before any load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, pid) in world.pids() {
        memory.entry(name).or_default().idle_kib = procstat::rss_kib(pid);
    }

    // The matrix, interleaved so that drift on a shared machine hits every target alike.
    let mut cases: Vec<Case> = Vec::new();
    for &mode in &modes {
        for &c in &args.concurrency {
            for &t in &targets {
                let case = run_case(&world, t, mode, c, seconds, warmup).await?;
                print_case(&case);
                cases.push(case);
            }
        }
    }
    report::fill_added(&mut cases);
    for c in &cases {
        for (name, kib) in &c.rss_max_kib {
            let key = proc_key(c.target, name);
            let m = memory.entry(key).or_default();
            m.max_sampled_kib = m.max_sampled_kib.max(*kib);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, pid) in world.pids() {
        let m = memory.entry(name).or_default();
        m.after_kib = procstat::rss_kib(pid);
        m.peak_kib = procstat::peak_rss_kib(pid);
    }

    // The baselines are done: they must not share the two cores with the long runs (LiteLLM
    // keeps working in the background, and calls the upstream on its own now and then).
    world.litellm = None;
    world.nginx = None;

    // Long-mode extras.
    let mut extra = report::Extras::default();
    if endurance {
        let s = args.endurance_seconds;
        say(format!("endurance: governed, concurrency 256, {s} s"));
        let case = run_case(&world, Target::Governed, Mode::Json, 256, s, 1.0).await?;
        print_case(&case);
        extra.endurance = Some(case);
    }
    if soak {
        let s = args.soak_seconds;
        say(format!(
            "soak: governed, concurrency {}, {s} s, gateway memory sampled every 5 s",
            args.soak_concurrency
        ));
        let case = run_soak(&world, args.soak_concurrency, s).await?;
        print_case(&case);
        extra.soak = Some(case);
    }
    if streams {
        say(format!(
            "{} open streams through a fresh governed gateway",
            args.streams
        ));
        extra.streams = Some(run_streams(&world, args.streams).await?);
    }
    if many_agents {
        let n = args.many_agents;
        say(format!(
            "{n} agents: a fresh governed gateway, one agent per connection, json, concurrency {n}"
        ));
        let gateway = start_gateway(&world, "agents", true, n).await?;
        // The governed target, for this one case, is the gateway with many agents.
        let one = world.governed.replace(gateway);
        let case = run_case(
            &world,
            Target::Governed,
            Mode::Json,
            n.into(),
            seconds,
            warmup,
        )
        .await;
        world.governed = one;
        let case = case?;
        print_case(&case);
        extra.agents = Some(report::ManyAgents { agents: n, case });
    }
    // Stop the servers before the tools measure anything.
    drop(world);

    if tools {
        extra.tools = Some(run_tools(&repo, args.short).await);
    }

    let ok = report::verdict(&cases, &extra);
    let rep = report::Report {
        date: args.date.clone().unwrap_or_else(today),
        machine,
        command: args.command.clone(),
        seconds,
        warmup,
        short: args.short,
        notes,
        cases,
        memory,
        extras: extra,
    };
    let md = rep.markdown();
    println!("{md}");
    if args.write.unwrap_or(!args.short) {
        let (md_path, json_path) = rep.write(&repo)?;
        say(format!(
            "wrote {}, {} and docs/BENCHMARKS.md",
            md_path.display(),
            json_path.display()
        ));
    }
    if args.keep {
        let _ = tmp.keep();
    }
    Ok(ok)
}

/// A gateway with an agent of its own; transcripts sealed when `sealed`.
async fn start_gateway(w: &World, name: &str, sealed: bool, agents: u16) -> Result<setup::Gateway> {
    let cloud = w.cloud.as_ref().expect("started when needed");
    let agents = setup::agents(cloud, &w.seed, &format!("bench-{name}"), agents).await?;
    let account = if sealed { w.account.as_ref() } else { None };
    let gw = setup::gateway(
        &w.http,
        &w.bin,
        &w.dir,
        &format!("gateway-{name}"),
        cloud,
        &w.upstream.url,
        &w.seed,
        &agents,
        account,
        false,
    )
    .await?;
    say(format!(
        "{name} gateway on {} (pid {}, {})",
        gw.url,
        gw.proc.pid(),
        setup::names(&gw.agents).join(", ")
    ));
    Ok(gw)
}

/// The governed gateway with the control plane in its own process. The agent and account key
/// are set up through a control plane process of their own, which then stops and leaves its
/// data directory and address to the gateway's process.
async fn start_embedded(w: &World) -> Result<setup::Gateway> {
    let mut cloud = setup::cloud_named(&w.http, &w.bin, &w.dir, "embedded-control-plane").await?;
    let account = setup::account(&cloud).await?;
    let agents = setup::agents(&cloud, &w.seed, "bench-embedded", w.agents).await?;
    cloud.proc.stop(std::time::Duration::from_secs(10));
    let gw = setup::gateway(
        &w.http,
        &w.bin,
        &w.dir,
        "gateway-embedded",
        &cloud,
        &w.upstream.url,
        &w.seed,
        &agents,
        Some(&account),
        true,
    )
    .await?;
    say(format!(
        "embedded gateway and control plane on {} and {} (pid {}, {})",
        gw.url,
        cloud.url,
        gw.proc.pid(),
        setup::names(&gw.agents).join(", ")
    ));
    Ok(gw)
}

/// The memory table's row for a process seen in a case.
fn proc_key(target: &str, proc_name: &str) -> String {
    match (target, proc_name) {
        ("governed", "gateway") => "gateway (governed)".into(),
        ("embedded", "gateway") => "gateway (embedded control plane)".into(),
        ("stamps-only", "gateway") => "gateway (stamps only)".into(),
        (_, p) => p.to_owned(),
    }
}

impl World {
    /// Every process running, by the name the memory table uses.
    fn pids(&self) -> Vec<(String, u32)> {
        let mut out = vec![("upstream".to_owned(), self.upstream.proc.pid())];
        if let Some(c) = &self.cloud {
            out.push(("control-plane".into(), c.proc.pid()));
        }
        if let Some(g) = &self.governed {
            out.push(("gateway (governed)".into(), g.proc.pid()));
        }
        if let Some(g) = &self.embedded {
            out.push(("gateway (embedded control plane)".into(), g.proc.pid()));
        }
        if let Some(g) = &self.stamps_only {
            out.push(("gateway (stamps only)".into(), g.proc.pid()));
        }
        if let Some(n) = &self.nginx {
            out.push(("nginx".into(), n.proc.pid()));
        }
        if let Some(l) = &self.litellm {
            out.push(("litellm".into(), l.proc.pid()));
        }
        out
    }

    fn gateway(&self, t: Target) -> Option<&setup::Gateway> {
        match t {
            Target::Governed => self.governed.as_ref(),
            Target::Embedded => self.embedded.as_ref(),
            Target::StampsOnly => self.stamps_only.as_ref(),
            _ => None,
        }
    }
}

fn fixture(repo: &Path, name: &str) -> PathBuf {
    repo.join("tests/fixtures").join(name)
}

/// What one case sends and expects.
struct Load<'a> {
    url: String,
    stream: bool,
    headers: Vec<String>,
    request: PathBuf,
    /// The answer the client must get byte for byte, when the target passes bytes on.
    expect: Option<PathBuf>,
    procs: Vec<(&'a str, u32)>,
    connections: usize,
    seconds: f64,
    warmup: f64,
    /// The agents the connections take in turn (`lockstock-loadgen --rotate`).
    agents: Vec<lockstock::AgentId>,
    extra_args: Vec<String>,
}

fn load_for<'a>(
    w: &'a World,
    t: Target,
    mode: Mode,
    c: usize,
    seconds: f64,
    warmup: f64,
) -> Load<'a> {
    let path = "/v1/chat/completions";
    let mut procs = vec![("upstream", w.upstream.proc.pid())];
    let mut headers = vec!["x-fixture-mark: 1".to_owned()];
    let (request, answer) = exchange(w, t, mode);
    let mut expect = Some(answer);
    if mode == Mode::SsePlain {
        // The same stream from the upstream for every target, whatever the request asked.
        headers.push("x-fixture: openai-chat-stream-usage".to_owned());
    }
    let mut agents = Vec::new();
    let base = match t {
        Target::Direct => w.upstream.url.clone(),
        Target::Nginx => {
            let n = w.nginx.as_ref().expect("started");
            procs.push(("nginx", n.proc.pid()));
            if mode.streams() {
                n.stream_url.clone()
            } else {
                n.url.clone()
            }
        }
        Target::Governed | Target::Embedded | Target::StampsOnly => {
            let g = w.gateway(t).expect("started");
            procs.push(("gateway", g.proc.pid()));
            if t != Target::Embedded {
                procs.push((
                    "control-plane",
                    w.cloud.as_ref().expect("started").proc.pid(),
                ));
            }
            agents = g.agents.clone();
            g.url.clone()
        }
        Target::LiteLlm => {
            let l = w.litellm.as_ref().expect("started");
            procs.push(("litellm", l.proc.pid()));
            headers.push(format!(
                "Authorization: Bearer {}",
                setup::LITELLM_MASTER_KEY
            ));
            // LiteLLM re-serialises answers: check their shape, not their bytes.
            expect = None;
            l.url.clone()
        }
    };
    Load {
        url: format!("{base}{path}"),
        stream: mode.streams(),
        headers,
        request,
        expect,
        procs,
        connections: c,
        seconds,
        warmup,
        agents,
        extra_args: Vec::new(),
    }
}

/// Files of the `sse-plain` mode, written into the run's directory.
const PLAIN_REQUEST: &str = "sse-plain.request.json";
const PLAIN_ANSWER: &str = "sse-plain.answer.sse";

/// The request a case sends and the answer its client must get.
fn exchange(w: &World, t: Target, mode: Mode) -> (PathBuf, PathBuf) {
    let fixture = |name| fixture(&w.repo, name);
    match mode {
        Mode::Json => (
            fixture("openai-chat.request.json"),
            fixture("openai-chat.json"),
        ),
        Mode::Sse => (
            fixture("openai-chat-stream-usage.request.json"),
            fixture("openai-chat-stream-usage.sse"),
        ),
        // A gateway removes the usage chunk it asked for; a plain proxy passes it on.
        Mode::SsePlain if t.lockstock() => (w.dir.join(PLAIN_REQUEST), w.dir.join(PLAIN_ANSWER)),
        Mode::SsePlain => (
            w.dir.join(PLAIN_REQUEST),
            fixture("openai-chat-stream-usage.sse"),
        ),
    }
}

/// The `sse-plain` request (the streamed request without `stream_options`) and the stream its
/// client gets through a gateway (the recording without its usage-only chunk).
fn write_plain_stream(repo: &Path, dir: &Path) -> Result<()> {
    let mut request: Value = serde_json::from_slice(&std::fs::read(fixture(
        repo,
        "openai-chat-stream-usage.request.json",
    ))?)?;
    request
        .as_object_mut()
        .context("the streamed request fixture is not an object")?
        .remove("stream_options");
    std::fs::write(dir.join(PLAIN_REQUEST), serde_json::to_vec(&request)?)?;
    let stream = std::fs::read_to_string(fixture(repo, "openai-chat-stream-usage.sse"))?;
    let answer: String = stream
        .split_inclusive("\n\n")
        .filter(|event| !event.contains("\"choices\":[]"))
        .collect();
    if answer.len() == stream.len() {
        bail!("openai-chat-stream-usage.sse has no usage-only chunk");
    }
    std::fs::write(dir.join(PLAIN_ANSWER), answer)?;
    Ok(())
}

async fn loadgen(w: &World, load: &Load<'_>) -> Result<Value> {
    let mut cmd = tokio::process::Command::new(w.bin.join("lockstock-loadgen"));
    cmd.arg("--url")
        .arg(&load.url)
        .arg("--body")
        .arg(&load.request)
        .args(["-c", &load.connections.to_string()])
        .args(["-d", &load.seconds.to_string()])
        .args(["--warmup", &load.warmup.to_string()])
        .args(["--timeout", "30"]);
    if load.stream {
        cmd.arg("--stream");
    }
    if let Some(answer) = &load.expect {
        cmd.arg("--expect").arg(answer);
    }
    if !load.agents.is_empty() {
        cmd.arg("--rotate").arg(format!(
            "X-D3cipher-Agent: {}",
            setup::names(&load.agents).join(",")
        ));
    }
    for h in &load.headers {
        cmd.arg("-H").arg(h);
    }
    for (name, pid) in &load.procs {
        cmd.arg("--proc").arg(format!("{name}={pid}"));
    }
    cmd.args(&load.extra_args);
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .context("running lockstock-loadgen")?;
    if !out.status.success() {
        bail!(
            "lockstock-loadgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("lockstock-loadgen's output")
}

async fn agent_seq(w: &World, t: Target) -> Result<Option<u64>> {
    let Some(g) = w.gateway(t) else {
        return Ok(None);
    };
    let mut seq = 0;
    for agent in &g.agents {
        seq += g.admin.agent(agent).await?.seq;
    }
    Ok(Some(seq))
}

async fn run_case(
    w: &World,
    t: Target,
    mode: Mode,
    c: usize,
    seconds: f64,
    warmup: f64,
) -> Result<Case> {
    let load = load_for(w, t, mode, c, seconds, warmup);
    measure(w, t, mode, &load).await
}

async fn measure(w: &World, t: Target, mode: Mode, load: &Load<'_>) -> Result<Case> {
    say(format!(
        "{} {} c={} ({} s + {} s warm-up)",
        t.name(),
        mode.name(),
        load.connections,
        load.seconds,
        load.warmup
    ));
    // LiteLLM need not pass the mark on: its count is every request, reported, not judged.
    let marked = t != Target::LiteLlm;
    let served_before = setup::served(&w.http, &w.upstream.url, marked).await?;
    let seq_before = agent_seq(w, t).await?;
    let v = loadgen(w, load).await?;
    // Let the gateway's last stamps and blobs land before counting them (and before the next
    // case starts measuring CPU).
    let sent = v["sent"].as_u64().unwrap_or(0);
    let mut forwarded = setup::served(&w.http, &w.upstream.url, marked).await? - served_before;
    let mut stamps = None;
    if let Some(before) = seq_before {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            forwarded = setup::served(&w.http, &w.upstream.url, marked).await? - served_before;
            let seq = agent_seq(w, t).await?.unwrap_or(before);
            stamps = Some(seq - before);
            if seq - before >= 2 * forwarded || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let undelivered = match w.gateway(t) {
        Some(g) => transcripts_delivered(&w.http, &g.url).await?,
        None => 0,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut case = report::case_from(t, mode, load, v, sent, forwarded, stamps);
    if undelivered > 0 {
        // Throughput bought by letting transcripts pile up in memory is not throughput.
        case.lost += 1;
        case.errors.push(format!(
            "{undelivered} bytes of sealed transcripts still queued in the gateway 30 s after the load"
        ));
    }
    Ok(case)
}

/// Waits (up to 30 s) until the gateway's upload queue is empty; returns the bytes left.
async fn transcripts_delivered(http: &procs::Http, gateway: &str) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = procs::get(http, &format!("{gateway}/metrics"), &[]).await?;
        let queued = String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("lockstock_gateway_upload_queue_bytes "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("the gateway's /metrics has no lockstock_gateway_upload_queue_bytes")?;
        if queued == 0 || tokio::time::Instant::now() > deadline {
            return Ok(queued);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_case(c: &Case) {
    say(format!(
        "  {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms{}, failed {}, lost {}{}",
        c.rps,
        c.p50_ms,
        c.p99_ms,
        c.ttfb_p50_ms
            .map(|t| format!(", TTFB p50 {t:.3} ms"))
            .unwrap_or_default(),
        c.failed,
        c.lost,
        if c.errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.errors.join("; "))
        }
    ));
}

async fn run_soak(w: &World, c: usize, seconds: f64) -> Result<Case> {
    let mut load = load_for(w, Target::Governed, Mode::Json, c, seconds, 1.0);
    load.extra_args = vec!["--series".into(), "--sample-ms".into(), "5000".into()];
    measure(w, Target::Governed, Mode::Json, &load).await
}

/// A fresh governed gateway holding `n` slow streams open at once: its memory then.
async fn run_streams(w: &World, n: usize) -> Result<report::Streams> {
    let cloud = w.cloud.as_ref().expect("started");
    let gw = start_gateway(w, "streams", true, w.agents).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = procstat::rss_kib(gw.proc.pid());
    // 14 events, 200 ms before each: every stream stays open about 2.8 s.
    let delay_ms = 200;
    let (request, answer) = exchange(w, Target::Governed, Mode::Sse);
    let load = Load {
        url: format!("{}/v1/chat/completions", gw.url),
        stream: true,
        headers: vec![format!("x-fixture-delay-ms: {delay_ms}")],
        request,
        expect: Some(answer),
        procs: vec![
            ("gateway", gw.proc.pid()),
            ("control-plane", cloud.proc.pid()),
            ("upstream", w.upstream.proc.pid()),
        ],
        connections: n,
        seconds: 8.0,
        warmup: 0.0,
        agents: gw.agents.clone(),
        extra_args: vec!["--sample-ms".into(), "100".into()],
    };
    let v = loadgen(w, &load).await?;
    let peak_kib = procstat::peak_rss_kib(gw.proc.pid());
    let g = &v["procs"]["gateway"];
    Ok(report::Streams {
        streams: n,
        delay_ms,
        idle_kib,
        max_sampled_kib: g["rss_max_kib"].as_u64().unwrap_or(0),
        peak_kib,
        completed: v["ok"].as_u64().unwrap_or(0),
        failed: v["failures"].as_u64().unwrap_or(0),
        ttfb_p50_ms: v["ttfb_us"]["p50"].as_f64().unwrap_or(0.0) / 1000.0,
        total_p50_ms: v["latency_us"]["p50"].as_f64().unwrap_or(0.0) / 1000.0,
        errors: v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Runs a program in the repository; (exit ok, stdout + stderr).
async fn tool(repo: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(repo)
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("{program}: {e}")),
    }
}

/// `liberty show`, stamp appends/s and audit decrypt MB/s, from the benchmarks others keep
/// in the repository; "not available" when one is not there.
async fn run_tools(repo: &Path, short: bool) -> report::Tools {
    let mut t = report::Tools::default();
    let liberty = repo.join("bench/liberty_show.sh");
    if liberty.exists() {
        say("liberty show (bench/liberty_show.sh)");
        let runs = if short { "50" } else { "300" };
        let (ok, out) = tool(repo, "sh", &["bench/liberty_show.sh", runs]).await;
        t.liberty_show_median_ms = report::parse_liberty(&out);
        t.liberty_show = Some(report::ToolRun {
            command: format!("bench/liberty_show.sh {runs}"),
            ok,
            output: report::tail(&out, 8),
        });
    }
    if repo.join("cloud/examples/stamp_bench.rs").exists() {
        say("control-plane stamp appends (cargo run --example stamp_bench)");
        let secs = if short { "3" } else { "10" };
        let args = [
            "run",
            "--release",
            "-q",
            "-p",
            "lockstock-cloud",
            "--example",
            "stamp_bench",
            "--",
            "--seconds",
            secs,
            "--clients",
            "32",
        ];
        let (ok, out) = tool(repo, "cargo", &args).await;
        t.stamps_per_s = report::parse_stamps(&out);
        t.stamp_bench = Some(report::ToolRun {
            command: format!("cargo {}", args.join(" ")),
            ok,
            output: report::tail(&out, 8),
        });
    }
    if let Some(script) = audit_bench(repo) {
        say(format!("audit decrypt ({script})"));
        let (ok, out) = tool(repo, "sh", &[&script]).await;
        t.audit_mb_per_s = report::parse_rate(&out, "lockstock-audit --format json", &["MB/s"]);
        t.audit_verify_stamps_per_s =
            report::parse_rate(&out, "lockstock-audit verify (no", &["st/s", "stamps/s"]);
        t.audit = Some(report::ToolRun {
            command: script,
            ok,
            output: report::tail(&out, 16),
        });
    }
    t
}

/// The audit decrypt benchmark, when one is in bench/ (a script whose name says audit).
fn audit_bench(repo: &Path) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(repo.join("bench"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.contains("audit") && n.ends_with(".sh"))
        .collect();
    found.sort();
    found.first().map(|n| format!("bench/{n}"))
}

/// Today's local date, YYYY-MM-DD.
fn today() -> String {
    std::process::Command::new("date")
        .arg("+%F")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|d| d.len() == 10)
        .unwrap_or_else(|| "undated".into())
}

pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

pub fn to_json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}
