//! The results: one table per run, budgets checked, Markdown and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Case, Load, Mode, Target, num, to_json};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub loadavg: String,
    /// fdatasync of 4 KiB on the disk that holds the ledger: the floor of a durable stamp.
    pub disk_sync: Option<DiskSync>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskSync {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Times `n` fdatasyncs of a 4 KiB write in `dir` (the ledger's filesystem), each into space
/// the file already has, as the ledger's WAL is written once it has started over: an append
/// would also sync the inode for the new size, which the ledger does not pay.
pub fn disk_sync(dir: &Path, n: usize) -> std::io::Result<DiskSync> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let n = n.max(1);
    let path = dir.join("fdatasync-probe");
    let file = std::fs::File::create(&path)?;
    file.write_all_at(&vec![0u8; PAGE * n], 0)?;
    file.sync_all()?;
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        file.write_all_at(&[1u8; PAGE], (i * PAGE) as u64)?;
        let t = std::time::Instant::now();
        file.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_file(&path)?;
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok(DiskSync {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

impl Machine {
    pub fn summary(&self) -> String {
        format!(
            "{} CPUs ({}), Linux {}, {:.1} GiB",
            self.nproc, self.cpu, self.kernel, self.memory_gib
        )
    }
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        loadavg: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        disk_sync: None,
    }
}

/// Resident memory of one process (KiB).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// After start, before any load.
    pub idle_kib: u64,
    /// Highest sample during the matrix.
    pub max_sampled_kib: u64,
    /// `VmHWM` at the end of the matrix.
    pub peak_kib: u64,
    /// Two seconds after the matrix.
    pub after_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Streams {
    pub streams: usize,
    pub delay_ms: u64,
    pub idle_kib: u64,
    pub max_sampled_kib: u64,
    pub peak_kib: u64,
    pub completed: u64,
    pub failed: u64,
    pub ttfb_p50_ms: f64,
    pub total_p50_ms: f64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolRun {
    pub command: String,
    pub ok: bool,
    pub output: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tools {
    pub liberty_show_median_ms: Option<f64>,
    pub liberty_show: Option<ToolRun>,
    /// (stamps per call, stamps/s)
    pub stamps_per_s: Vec<(u64, f64)>,
    pub stamp_bench: Option<ToolRun>,
    pub audit_mb_per_s: Option<f64>,
    pub audit_verify_stamps_per_s: Option<f64>,
    pub audit: Option<ToolRun>,
}

/// The governed gateway with many agents, one per connection.
#[derive(Debug, Clone, Serialize)]
pub struct ManyAgents {
    pub agents: u16,
    pub case: Case,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Extras {
    pub endurance: Option<Case>,
    pub soak: Option<Case>,
    pub streams: Option<Streams>,
    pub agents: Option<ManyAgents>,
    pub tools: Option<Tools>,
}

pub struct Report {
    /// YYYY-MM-DD: names the results files.
    pub date: String,
    pub machine: Machine,
    pub command: String,
    pub seconds: f64,
    pub warmup: f64,
    pub short: bool,
    pub notes: Vec<String>,
    pub cases: Vec<Case>,
    pub memory: BTreeMap<String, Memory>,
    pub extras: Extras,
}

pub fn case_from(
    t: Target,
    mode: Mode,
    load: &Load<'_>,
    v: Value,
    sent: u64,
    forwarded: u64,
    stamps: Option<u64>,
) -> Case {
    let ms = |x: &Value| (num(x) / 1000.0 * 1000.0).round() / 1000.0;
    let mut cpu = BTreeMap::new();
    let mut rss = BTreeMap::new();
    if let Some(procs) = v["procs"].as_object() {
        for (name, p) in procs {
            if let Some(us) = p["cpu_us_per_req"].as_f64() {
                cpu.insert(name.clone(), us);
            }
            if let Some(kib) = p["rss_max_kib"].as_u64() {
                rss.insert(name.clone(), kib);
            }
        }
    }
    let mut errors: Vec<String> = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let failed = v["failures"].as_u64().unwrap_or(0);
    let mut lost = failed;
    // A proxy that forwards each request once: the upstream saw exactly what was sent.
    // (LiteLLM may retry; its count is reported, not judged.)
    if t != Target::LiteLlm && forwarded != sent {
        lost += forwarded.abs_diff(sent);
        errors.push(format!(
            "the upstream received {forwarded} requests for {sent} sent"
        ));
    }
    if let Some(s) = stamps
        && s != 2 * forwarded
    {
        lost += s.abs_diff(2 * forwarded);
        errors.push(format!(
            "the ledger holds {s} new stamps for {forwarded} forwarded requests"
        ));
    }
    let ttfb = mode
        .streams()
        .then(|| (ms(&v["ttfb_us"]["p50"]), ms(&v["ttfb_us"]["p99"])));
    Case {
        target: t.name(),
        mode: mode.name(),
        concurrency: load.connections,
        seconds: load.seconds,
        rps: num(&v["rps"]).round(),
        p50_ms: ms(&v["latency_us"]["p50"]),
        p90_ms: ms(&v["latency_us"]["p90"]),
        p99_ms: ms(&v["latency_us"]["p99"]),
        ttfb_p50_ms: ttfb.map(|t| t.0),
        ttfb_p99_ms: ttfb.map(|t| t.1),
        added_p50_ms: None,
        added_p99_ms: None,
        added_ttfb_p50_ms: None,
        cpu_us_per_req: cpu,
        rss_max_kib: rss,
        sent,
        ok: v["ok"].as_u64().unwrap_or(0),
        failed,
        forwarded: Some(forwarded),
        stamps_per_request: stamps.map(|s| {
            if forwarded == 0 {
                0.0
            } else {
                (s as f64 / forwarded as f64 * 100.0).round() / 100.0
            }
        }),
        lost,
        errors,
        loadgen: v,
    }
}

/// Added latency: against the upstream reached directly, same mode and concurrency.
pub fn fill_added(cases: &mut [Case]) {
    let direct: Vec<(String, usize, f64, f64, Option<f64>)> = cases
        .iter()
        .filter(|c| c.target == "direct")
        .map(|c| {
            (
                c.mode.to_owned(),
                c.concurrency,
                c.p50_ms,
                c.p99_ms,
                c.ttfb_p50_ms,
            )
        })
        .collect();
    for c in cases.iter_mut().filter(|c| c.target != "direct") {
        if let Some(d) = direct
            .iter()
            .find(|d| d.0 == c.mode && d.1 == c.concurrency)
        {
            let r = |x: f64| (x * 1000.0).round() / 1000.0;
            c.added_p50_ms = Some(r(c.p50_ms - d.2));
            c.added_p99_ms = Some(r(c.p99_ms - d.3));
            c.added_ttfb_p50_ms = c.ttfb_p50_ms.zip(d.4).map(|(a, b)| r(a - b));
        }
    }
}

impl Report {
    /// The many-agents run beside the matrix's governed case of the same mode and concurrency
    /// (one agent for every connection).
    fn many_agents_line(&self, many: &ManyAgents) -> String {
        let a = &many.case;
        let cpu = |c: &Case, name: &str| {
            c.cpu_us_per_req
                .get(name)
                .map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"))
        };
        let same = |target: &str| {
            self.cases
                .iter()
                .find(|c| c.target == target && c.mode == a.mode && c.concurrency == a.concurrency)
        };
        let added = same("direct").map_or_else(String::new, |d| {
            format!(" (added +{})", f(a.p50_ms - d.p50_ms))
        });
        let one = same("governed").map_or_else(String::new, |g| {
            format!(
                "; one agent for all connections, same case: {} req/s, p50 {} ms, CPU µs/req gateway {}, control plane {}",
                g.rps,
                f(g.p50_ms),
                cpu(g, "gateway"),
                cpu(g, "control-plane")
            )
        });
        format!(
            "- {} agents on one governed gateway, one per connection, {} c={}, {} s: {} req/s, p50 {} ms{added}, p99 {} ms; CPU µs/req gateway {}, control plane {}; {} failed, {} lost{one}.",
            many.agents,
            a.mode,
            a.concurrency,
            a.seconds,
            a.rps,
            f(a.p50_ms),
            f(a.p99_ms),
            cpu(a, "gateway"),
            cpu(a, "control-plane"),
            a.failed,
            a.lost
        )
    }
}

/// True when no request failed or went missing, except LiteLLM's (reported, not judged: it is
/// the comparison, not the product).
pub fn verdict(cases: &[Case], extras: &Extras) -> bool {
    let judged = cases
        .iter()
        .chain(&extras.endurance)
        .chain(&extras.soak)
        .chain(extras.agents.as_ref().map(|a| &a.case))
        .filter(|c| c.target != "litellm");
    let mut ok = true;
    for c in judged {
        if c.lost > 0 || c.ok == 0 {
            ok = false;
        }
    }
    if let Some(s) = &extras.streams
        && s.failed > 0
    {
        ok = false;
    }
    ok
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// "liberty show : median 1.23 ms …" from bench/liberty_show.sh.
pub fn parse_liberty(out: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.trim_start().starts_with("liberty show"))
        .and_then(|l| number_after(l, "median"))
}

/// "batch   8:     41234 stamps/s …" lines from stamp_bench.
pub fn parse_stamps(out: &str) -> Vec<(u64, f64)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("batch")?;
            let (batch, rest) = rest.split_once(':')?;
            let rate = rest.split_whitespace().next()?.parse().ok()?;
            Some((batch.trim().parse().ok()?, rate))
        })
        .collect()
}

/// The first "N UNIT" figure (any of `units`) on the first line that starts with `label`
/// (after spaces), else on the last line that has one.
pub fn parse_rate(out: &str, label: &str, units: &[&str]) -> Option<f64> {
    let figure = |l: &str| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.windows(2).find_map(|w| {
            units
                .iter()
                .any(|u| w[1].starts_with(u))
                .then(|| w[0].trim_matches(|c: char| !c.is_ascii_digit() && c != '.'))
                .and_then(|n| n.parse().ok())
        })
    };
    out.lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(figure)
        .or_else(|| out.lines().rev().find_map(figure))
}

fn number_after(line: &str, word: &str) -> Option<f64> {
    let i = line.find(word)? + word.len();
    line[i..]
        .split_whitespace()
        .next()?
        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
        .parse()
        .ok()
}

fn f(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(f).unwrap_or_else(|| "–".into())
}

fn signed(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 0.0 => format!("+{}", f(v)),
        Some(v) => f(v),
        None => "–".into(),
    }
}

fn mib(kib: u64) -> String {
    if kib == 0 {
        "–".into()
    } else {
        format!("{:.1}", kib as f64 / 1024.0)
    }
}

fn us(c: &Case, name: &str) -> String {
    c.cpu_us_per_req
        .get(name)
        .map(|v| format!("{v:.0}"))
        .unwrap_or_else(|| "–".into())
}

fn find<'a>(cases: &'a [Case], target: &str, mode: &str, c: usize) -> Option<&'a Case> {
    cases
        .iter()
        .find(|x| x.target == target && x.mode == mode && x.concurrency == c)
}

fn best_rps(cases: &[Case], target: &str, mode: &str) -> Option<f64> {
    cases
        .iter()
        .filter(|x| x.target == target && x.mode == mode && x.ok > 0)
        .map(|x| x.rps)
        .fold(None, |m, r| Some(m.map_or(r, |m: f64| m.max(r))))
}

/// Gateway and control plane together; one process when the control plane is embedded.
fn governed_cpu(c: &Case) -> Option<f64> {
    let gateway = c.cpu_us_per_req.get("gateway")?;
    if c.target == "embedded" {
        return Some(*gateway);
    }
    Some(gateway + c.cpu_us_per_req.get("control-plane")?)
}

/// The same figure for the gateway whose control plane runs in its process, when measured.
fn embedded(cs: &[Case], mode: &str, c: usize, value: impl Fn(&Case) -> Option<String>) -> String {
    find(cs, "embedded", mode, c)
        .and_then(value)
        .map(|v| format!("; control plane in the gateway's process: {v}"))
        .unwrap_or_default()
}

/// (budget, measured, verdict)
type Row = (String, String, String);

fn check(met: bool, miss: String) -> String {
    if met {
        "met".into()
    } else {
        format!("**missed**: {miss}")
    }
}

impl Report {
    fn budgets(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        let cs = &self.cases;
        if let Some(g) = find(cs, "governed", "json", 1)
            && let Some(a50) = g.added_p50_ms
        {
            let e = embedded(cs, "json", 1, |e| {
                e.added_p50_ms.map(|v| format!("{} ms", f(v)))
            });
            rows.push((
                "added p50 < 0.3 ms at c=1, governed (issue 4: no load but the request)".into(),
                format!("{} ms{e}", f(a50)),
                check(a50 < 0.3, format!("{} ms over", f(a50 - 0.3))),
            ));
        }
        if let Some(g) = find(cs, "governed", "json", 16) {
            if let (Some(a50), Some(a99)) = (g.added_p50_ms, g.added_p99_ms) {
                // A plain proxy's own figure on the same machine in the same run: the floor
                // this budget is measured against.
                let plain = find(cs, "nginx", "json", 16)
                    .and_then(|n| n.added_p50_ms)
                    .map(|n| format!(" (nginx, a plain proxy: {} ms)", f(n)))
                    .unwrap_or_default();
                let e = embedded(cs, "json", 16, |e| {
                    e.added_p50_ms.map(|v| format!("{} ms", f(v)))
                });
                rows.push((
                    "added p50 < 0.3 ms at c=16, governed".into(),
                    format!("{} ms{e}{plain}", f(a50)),
                    check(a50 < 0.3, format!("{} ms over", f(a50 - 0.3))),
                ));
                let e = embedded(cs, "json", 16, |e| {
                    e.added_p99_ms.map(|v| format!("{} ms", f(v)))
                });
                rows.push((
                    "added p99 < 1 ms at c=16, governed".into(),
                    format!("{} ms{e}", f(a99)),
                    check(a99 < 1.0, format!("{} ms over", f(a99 - 1.0))),
                ));
            }
            if let Some(cpu) = governed_cpu(g) {
                let e = embedded(cs, "json", 16, |e| {
                    governed_cpu(e).map(|v| format!("{v:.0} µs"))
                });
                rows.push((
                    "CPU per governed request (gateway + control plane) < 150 µs, c=16".into(),
                    format!("{cpu:.0} µs{e}"),
                    check(cpu < 150.0, format!("{:.1}× the budget", cpu / 150.0)),
                ));
                if let Some(l) = find(cs, "litellm", "json", 16)
                    && let Some(lc) = l.cpu_us_per_req.get("litellm")
                {
                    let ratio = lc / cpu;
                    rows.push((
                        "CPU per request ≥ 75× less than LiteLLM's, c=16".into(),
                        format!("{ratio:.0}× less ({lc:.0} µs vs {cpu:.0} µs)"),
                        check(ratio >= 75.0, format!("{ratio:.0}× instead of 75×")),
                    ));
                }
            }
            if let Some(l) = find(cs, "litellm", "json", 16)
                && l.rps > 0.0
            {
                let ratio = g.rps / l.rps;
                let e = embedded(cs, "json", 16, |e| Some(format!("{:.0}×", e.rps / l.rps)));
                rows.push((
                    "throughput ≥ 100× LiteLLM's, c=16".into(),
                    format!("{ratio:.0}× ({} vs {} req/s){e}", g.rps, l.rps),
                    check(ratio >= 100.0, format!("{ratio:.0}× instead of 100×")),
                ));
            }
        }
        let governed_best = best_rps(cs, "governed", "json");
        if let Some(g) = governed_best {
            let e = best_rps(cs, "embedded", "json")
                .map(|e| format!("; control plane in the gateway's process: {e} req/s"))
                .unwrap_or_default();
            rows.push((
                "governed ≥ 10,000 req/s on this machine (best concurrency; issue 4)".into(),
                format!("{g} req/s{e}"),
                check(g >= 10_000.0, format!("{g} instead of 10,000 req/s")),
            ));
        }
        if let (Some(g), Some(n)) = (governed_best, best_rps(cs, "nginx", "json")) {
            let ratio = g / n;
            rows.push((
                "throughput ≥ 0.2× nginx's (best concurrency of each)".into(),
                format!("{ratio:.2}× ({g} vs {n} req/s)"),
                check(ratio >= 0.2, format!("{ratio:.2}× instead of 0.2×")),
            ));
        }
        // The budget names no concurrency: both the unloaded figure and the loaded one.
        for c in [1, 16] {
            if let Some(g) = find(cs, "governed", "sse", c)
                && let Some(a) = g.added_ttfb_p50_ms
            {
                let e = embedded(cs, "sse", c, |e| {
                    e.added_ttfb_p50_ms.map(|v| format!("+{} ms", f(v)))
                });
                rows.push((
                    format!("streaming first byte ≤ upstream's + 1 ms (p50, c={c})"),
                    format!("+{} ms{e}", f(a)),
                    check(a <= 1.0, format!("{} ms over", f(a - 1.0))),
                ));
            }
        }
        if let Some(m) = self.memory.get("gateway (governed)") {
            let idle = m.idle_kib as f64 / 1024.0;
            rows.push((
                "gateway memory idle < 30 MiB".into(),
                format!("{idle:.1} MiB"),
                check(idle < 30.0, format!("{:.1} MiB over", idle - 30.0)),
            ));
        }
        if let Some(s) = &self.extras.streams {
            let peak = s.peak_kib.max(s.max_sampled_kib) as f64 / 1024.0;
            rows.push((
                format!("gateway memory < 64 MiB at {} open streams", s.streams),
                format!("{peak:.1} MiB"),
                check(peak < 64.0, format!("{:.1} MiB over", peak - 64.0)),
            ));
        }
        if let Some(e) = &self.extras.endurance {
            rows.push((
                format!("zero failed or lost requests, c=256 for {} s", e.seconds),
                format!("{} failed, {} lost of {} sent", e.failed, e.lost, e.sent),
                check(e.lost == 0, format!("{} lost", e.lost)),
            ));
        }
        if let Some(s) = &self.extras.soak
            && let Some(flat) = soak_memory(s)
        {
            rows.push((
                format!("memory flat over a {} soak", duration(s.seconds)),
                flat.0,
                check(flat.1, "it grew".into()),
            ));
        }
        if let Some(t) = &self.extras.tools {
            if let Some(m) = t.liberty_show_median_ms {
                rows.push((
                    "`liberty show` median < 5 ms".into(),
                    format!("{m:.2} ms"),
                    check(m < 5.0, format!("{:.2} ms over", m - 5.0)),
                ));
            }
            if let Some(best) = t.stamps_per_s.iter().map(|s| s.1).reduce(f64::max) {
                rows.push((
                    "control plane ≥ 20,000 durable stamps/s".into(),
                    format!("{best:.0} stamps/s (best batch size)"),
                    check(
                        best >= 20_000.0,
                        format!("{:.2}× the target", best / 20_000.0),
                    ),
                ));
            }
        }
        rows
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Machine: {}. Load average at start: {}.{}",
            m.summary(),
            m.loadavg,
            m.disk_sync
                .map(|d| format!(
                    " fdatasync on the ledger's disk: p50 {} ms, p99 {} ms (a governed request waits for at least one).",
                    f(d.p50_ms),
                    f(d.p99_ms)
                ))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "Command: `{}`{}; {} s measured per case after {} s of warm-up.",
            self.command,
            if self.short { " (short mode)" } else { "" },
            self.seconds,
            self.warmup
        );
        for n in &self.notes {
            let _ = writeln!(s, "Note: {n}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| target | mode | conc | req/s | p50 ms | p90 ms | p99 ms | added p50 | added p99 | TTFB p50 | added TTFB p50 | CPU µs/req proxy | control plane | upstream | loadgen | failed | lost |"
        );
        let _ = writeln!(s, "|{}", "---|".repeat(17));
        for c in &self.cases {
            let proxy = match c.target {
                "nginx" => us(c, "nginx"),
                "governed" | "embedded" | "stamps-only" => us(c, "gateway"),
                "litellm" => us(c, "litellm"),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.target,
                c.mode,
                c.concurrency,
                c.rps,
                f(c.p50_ms),
                f(c.p90_ms),
                f(c.p99_ms),
                signed(c.added_p50_ms),
                signed(c.added_p99_ms),
                opt(c.ttfb_p50_ms),
                signed(c.added_ttfb_p50_ms),
                proxy,
                us(c, "control-plane"),
                us(c, "upstream"),
                us(c, "loadgen"),
                c.failed,
                c.lost,
            );
        }
        let problems: Vec<String> = self
            .cases
            .iter()
            .filter(|c| !c.errors.is_empty())
            .map(|c| {
                format!(
                    "- {} {} c={}: {}",
                    c.target,
                    c.mode,
                    c.concurrency,
                    c.errors.join("; ")
                )
            })
            .collect();
        if !problems.is_empty() {
            let _ = writeln!(s, "\nErrors seen:\n{}", problems.join("\n"));
        }

        let _ = writeln!(s, "\n### Memory (resident, MiB)\n");
        let _ = writeln!(
            s,
            "| process | idle, before load | highest sample under load | peak (VmHWM) | idle, after load |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for (name, m) in &self.memory {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                mib(m.idle_kib),
                mib(m.max_sampled_kib),
                mib(m.peak_kib),
                mib(m.after_kib)
            );
        }

        let ex = &self.extras;
        if ex.endurance.is_some()
            || ex.soak.is_some()
            || ex.streams.is_some()
            || ex.agents.is_some()
        {
            let _ = writeln!(s, "\n### Long runs\n");
        }
        if let Some(e) = &ex.endurance {
            let _ = writeln!(
                s,
                "- Endurance, governed, c={}, {} s: {} req/s, p50 {} ms, p99 {} ms; {} sent, {} ok, {} failed, {} lost; {} stamps per request.",
                e.concurrency,
                e.seconds,
                e.rps,
                f(e.p50_ms),
                f(e.p99_ms),
                e.sent,
                e.ok,
                e.failed,
                e.lost,
                opt(e.stamps_per_request)
            );
        }
        if let Some(k) = &ex.soak {
            let _ = writeln!(
                s,
                "- Soak, governed, c={}, {} s: {} req/s, p50 {} ms, p99 {} ms; {} failed, {} lost.",
                k.concurrency,
                k.seconds,
                k.rps,
                f(k.p50_ms),
                f(k.p99_ms),
                k.failed,
                k.lost
            );
            for name in ["gateway", "control-plane"] {
                if let Some(line) = series_summary(k, name) {
                    let _ = writeln!(s, "  - {name} memory: {line}");
                }
            }
        }
        if let Some(st) = &ex.streams {
            let _ = writeln!(
                s,
                "- {} streams held open at once through a fresh governed gateway ({} ms before each of 14 events): idle {} MiB, highest sample {} MiB, VmHWM {} MiB; {} streams completed, {} failed; first byte p50 {} ms, whole stream p50 {} ms (streamed, not buffered).{}",
                st.streams,
                st.delay_ms,
                mib(st.idle_kib),
                mib(st.max_sampled_kib),
                mib(st.peak_kib),
                st.completed,
                st.failed,
                f(st.ttfb_p50_ms),
                f(st.total_p50_ms),
                if st.errors.is_empty() {
                    String::new()
                } else {
                    format!(" Errors: {}", st.errors.join("; "))
                }
            );
        }

        if let Some(a) = &ex.agents {
            let _ = writeln!(s, "{}", self.many_agents_line(a));
        }

        if let Some(t) = &ex.tools {
            let _ = writeln!(s, "\n### Other budgets\n");
            let _ = writeln!(
                s,
                "- `liberty show` median: {}",
                t.liberty_show_median_ms
                    .map(|m| format!("{m:.2} ms"))
                    .unwrap_or_else(|| tool_status(&t.liberty_show))
            );
            let stamps = if t.stamps_per_s.is_empty() {
                tool_status(&t.stamp_bench)
            } else {
                t.stamps_per_s
                    .iter()
                    .map(|(b, r)| format!("{r:.0} stamps/s at {b} per call"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(s, "- control-plane stamp appends: {stamps}");
            let _ = writeln!(
                s,
                "- audit decrypt (`lockstock-audit --format json`): {}{}",
                t.audit_mb_per_s
                    .map(|m| format!("{m:.1} MB/s"))
                    .unwrap_or_else(|| tool_status(&t.audit)),
                t.audit_verify_stamps_per_s
                    .map(|v| format!("; `lockstock-audit verify`: {v:.0} stamps/s"))
                    .unwrap_or_default()
            );
        }

        let rows = self.budgets();
        if !rows.is_empty() {
            let _ = writeln!(s, "\n### Budgets (DESIGN §6, issue 7)\n");
            let _ = writeln!(s, "| budget | measured | verdict |");
            let _ = writeln!(s, "|---|---|---|");
            for (b, m, v) in rows {
                let _ = writeln!(s, "| {b} | {m} | {v} |");
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "date": self.date,
            "machine": to_json(&self.machine),
            "command": self.command,
            "seconds": self.seconds,
            "warmup": self.warmup,
            "short": self.short,
            "notes": self.notes,
            "cases": to_json(&self.cases),
            "memory": to_json(&self.memory),
            "extras": to_json(&self.extras),
            "budgets": self.budgets().into_iter().map(|(b, m, v)| json!({"budget": b, "measured": m, "verdict": v})).collect::<Vec<_>>(),
        })
    }

    /// bench/results/<date>.{md,json} (<date>-2, -3… for later runs of the same day, so no
    /// run overwrites another) and docs/BENCHMARKS.md.
    pub fn write(&self, repo: &Path) -> Result<(PathBuf, PathBuf)> {
        let date = &self.date;
        let dir = repo.join("bench/results");
        std::fs::create_dir_all(&dir)?;
        let stem = unused_stem(&dir, date);
        let md = self.markdown();
        let md_path = dir.join(format!("{stem}.md"));
        std::fs::write(&md_path, format!("# Benchmark, {date}\n\n{md}"))
            .with_context(|| format!("{}", md_path.display()))?;
        let json_path = dir.join(format!("{stem}.json"));
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&self.json())? + "\n",
        )?;
        let docs = format!(
            "# Benchmarks\n\n\
             The latest run of `bench/run` (written by it; see [bench/README.md](../bench/README.md) \
             for the method and what each column means, and `bench/results/` for every run with \
             its JSON). The gateway is measured beside the same fixture upstream reached directly, \
             nginx as a plain proxy and LiteLLM's proxy, in one run on one machine: compare ratios \
             within this table, not with numbers from another machine or another day.\n\n\
             ## {date}\n\n{md}"
        );
        std::fs::write(repo.join("docs/BENCHMARKS.md"), docs)?;
        Ok((md_path, json_path))
    }
}

/// `date`, or `date-N` with the smallest N ≥ 2 for which neither results file exists yet.
fn unused_stem(dir: &Path, date: &str) -> String {
    let taken = |stem: &str| {
        dir.join(format!("{stem}.md")).exists() || dir.join(format!("{stem}.json")).exists()
    };
    std::iter::once(date.to_owned())
        .chain((2..).map(|n| format!("{date}-{n}")))
        .find(|stem| !taken(stem))
        .expect("an unbounded sequence has a free name")
}

/// "10-minute" or "45 s".
fn duration(secs: f64) -> String {
    if secs >= 120.0 {
        format!("{:.0}-minute", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

fn tool_status(run: &Option<ToolRun>) -> String {
    match run {
        None => "not available".into(),
        Some(r) if !r.ok => format!(
            "`{}` failed: {}",
            r.command,
            r.output.lines().last().unwrap_or("")
        ),
        Some(r) => format!("`{}` printed no figure", r.command),
    }
}

fn series(c: &Case, name: &str) -> Vec<(f64, f64)> {
    c.loadgen["procs"][name]["rss_series"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()? / 1024.0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Start (first sample a minute in, or a tenth of the run), end, max, and least-squares slope
/// over the second half, in MiB.
fn series_stats(c: &Case, name: &str) -> Option<(f64, f64, f64, f64)> {
    let pts = series(c, name);
    if pts.len() < 4 {
        return None;
    }
    let settle = (c.seconds / 10.0).min(60.0);
    let start = pts.iter().find(|p| p.0 >= settle).unwrap_or(&pts[0]).1;
    let end = pts.last()?.1;
    let max = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let half = &pts[pts.len() / 2..];
    let n = half.len() as f64;
    let (mx, my) = (
        half.iter().map(|p| p.0).sum::<f64>() / n,
        half.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = half.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = half.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = if var > 0.0 { cov / var * 60.0 } else { 0.0 };
    Some((start, end, max, slope))
}

fn series_summary(c: &Case, name: &str) -> Option<String> {
    let (start, end, max, slope) = series_stats(c, name)?;
    Some(format!(
        "{start:.1} MiB after warm-up, {end:.1} MiB at the end, {max:.1} MiB at most; \
         {slope:+.2} MiB/min over the second half"
    ))
}

/// The gateway's soak memory, and whether it stayed flat: the end within 2 MiB or 5 % of
/// where it was after warm-up.
fn soak_memory(c: &Case) -> Option<(String, bool)> {
    let (start, end, max, slope) = series_stats(c, "gateway")?;
    let flat = end - start <= (start * 0.05).max(2.0);
    Some((
        format!("gateway {start:.1} → {end:.1} MiB (max {max:.1}, {slope:+.2} MiB/min)"),
        flat,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(target: &'static str, mode: &'static str, c: usize, rps: f64, added: f64) -> Case {
        Case {
            target,
            mode,
            concurrency: c,
            seconds: 1.0,
            rps,
            p50_ms: 1.0,
            p90_ms: 1.0,
            p99_ms: 1.0,
            ttfb_p50_ms: None,
            ttfb_p99_ms: None,
            added_p50_ms: Some(added),
            added_p99_ms: Some(added * 2.0),
            added_ttfb_p50_ms: (mode == "sse").then_some(added),
            cpu_us_per_req: BTreeMap::new(),
            rss_max_kib: BTreeMap::new(),
            sent: 1,
            ok: 1,
            failed: 0,
            forwarded: None,
            stamps_per_request: None,
            lost: 0,
            errors: Vec::new(),
            loadgen: Value::Null,
        }
    }

    #[test]
    fn a_second_run_on_the_same_day_gets_a_name_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unused_stem(dir.path(), "2026-12-03"), "2026-12-03");
        std::fs::write(dir.path().join("2026-12-03.md"), "").unwrap();
        assert_eq!(unused_stem(dir.path(), "2026-12-03"), "2026-12-03-2");
        // Either file alone holds the name (a run can stop between the two writes).
        std::fs::write(dir.path().join("2026-12-03-2.json"), "").unwrap();
        assert_eq!(unused_stem(dir.path(), "2026-12-03"), "2026-12-03-3");
        assert_eq!(unused_stem(dir.path(), "2026-12-04"), "2026-12-04");
    }

    #[test]
    fn budgets_show_the_unloaded_and_loaded_figures_and_the_plain_proxy_beside_them() {
        let report = Report {
            date: "2026-12-03".into(),
            machine: machine(),
            command: "bench/run".into(),
            seconds: 1.0,
            warmup: 1.0,
            short: false,
            notes: Vec::new(),
            cases: vec![
                case("governed", "json", 1, 1300.0, 0.25),
                case("governed", "json", 16, 5863.0, 2.4),
                case("embedded", "json", 16, 7000.0, 1.9),
                case("nginx", "json", 16, 31604.0, 0.302),
                case("governed", "sse", 1, 754.0, 0.854),
                case("governed", "sse", 16, 2624.0, 4.069),
            ],
            memory: BTreeMap::new(),
            extras: Extras::default(),
        };
        let rows = report.budgets();
        let row = |start: &str| {
            rows.iter()
                .find(|r| r.0.starts_with(start))
                .unwrap_or_else(|| panic!("no row {start:?} in {rows:?}"))
        };
        assert_eq!(row("added p50 < 0.3 ms at c=1").2, "met");
        let loaded = row("added p50 < 0.3 ms at c=16");
        assert_eq!(
            loaded.1,
            "2.400 ms; control plane in the gateway's process: 1.900 ms (nginx, a plain proxy: 0.302 ms)"
        );
        assert!(loaded.2.starts_with("**missed**"));
        let best = row("governed ≥ 10,000 req/s");
        assert!(
            best.1.ends_with("in the gateway's process: 7000 req/s"),
            "{best:?}"
        );
        assert!(best.2.contains("5863 instead of 10,000"));
        assert_eq!(
            row("streaming first byte ≤ upstream's + 1 ms (p50, c=1)").2,
            "met"
        );
        assert!(
            row("streaming first byte ≤ upstream's + 1 ms (p50, c=16)")
                .2
                .starts_with("**missed**")
        );
    }

    #[test]
    fn parses_the_other_benchmarks() {
        let lib = "liberty show : median 1.84 ms  p90 2.10 ms\ncat (file)   : median 0.90 ms";
        assert_eq!(parse_liberty(lib), Some(1.84));
        let st = "stamp_bench: 32 clients\nbatch   1:     12345 stamps/s  (   12345 calls/s)\nbatch   8:     45678 stamps/s";
        assert_eq!(parse_stamps(st), vec![(1, 12345.0), (8, 45678.0)]);
        let audit = "baseline: cat     0.010   3000 MB/s\nlockstock-audit --format json   1.2   45.6 MB/s\n\
                     lockstock-audit (text)   1.3   40.1 MB/s\n\
                     lockstock-audit verify (no transcripts)   2.0   98765 stamps/s";
        assert_eq!(
            parse_rate(audit, "lockstock-audit --format json", &["MB/s"]),
            Some(45.6)
        );
        assert_eq!(
            parse_rate(audit, "lockstock-audit verify (no", &["st/s", "stamps/s"]),
            Some(98765.0)
        );
        assert_eq!(
            parse_rate("decrypt: 812.5 MB/s", "x", &["MB/s"]),
            Some(812.5)
        );
        assert_eq!(parse_rate("nothing", "x", &["MB/s"]), None);
    }
}
