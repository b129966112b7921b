//! Prometheus metrics, per agent, in the text exposition format (0.0.4).
//!
//! The set of agents is fixed when the gateway starts, so every series lives in a plain
//! struct of atomics: recording is a few relaxed atomic adds with no lock and no allocation,
//! and an unknown agent id cannot create new series (requests without a registered agent
//! are counted under `agent="unregistered"`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::AgentId;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Why the gateway refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingAgent,
    UnknownAgent,
    Locked,
    Budget,
    Fork,
    Breaker,
    StampRejected,
    ControlPlaneDown,
    BadRequest,
    Upstream,
}

impl Rejection {
    const ALL: [Rejection; 10] = [
        Self::MissingAgent,
        Self::UnknownAgent,
        Self::Locked,
        Self::Budget,
        Self::Fork,
        Self::Breaker,
        Self::StampRejected,
        Self::ControlPlaneDown,
        Self::BadRequest,
        Self::Upstream,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::MissingAgent => "missing_agent",
            Self::UnknownAgent => "unknown_agent",
            Self::Locked => "locked",
            Self::Budget => "budget",
            Self::Fork => "fork",
            Self::Breaker => "breaker",
            Self::StampRejected => "stamp_rejected",
            Self::ControlPlaneDown => "control_plane_unreachable",
            Self::BadRequest => "bad_request",
            Self::Upstream => "upstream_error",
        }
    }
}

/// A histogram of durations over [`BUCKETS`].
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of `agent`'s series; none before the first
    /// observation.
    fn render(&self, w: &mut String, name: &str, agent: &str) {
        let count = self.count.load(Relaxed);
        if count == 0 {
            return;
        }
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(
                w,
                "{name}_bucket{{agent=\"{agent}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(w, "{name}_bucket{{agent=\"{agent}\",le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(w, "{name}_sum{{agent=\"{agent}\"}} {sum}");
        let _ = writeln!(w, "{name}_count{{agent=\"{agent}\"}} {count}");
    }
}

/// Every series of one agent.
pub struct AgentMetrics {
    /// Requests by HTTP status returned to the client (index = status code).
    by_status: Box<[AtomicU64; 600]>,
    rejections: [AtomicU64; Rejection::ALL.len()],
    latency: Histogram,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    /// -1: unlimited or not yet known.
    budget_remaining: AtomicI64,
    /// Round trips of this agent's stamp batches to the control plane.
    stamp_calls: Histogram,
    stamps_delivered: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            by_status: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            rejections: Default::default(),
            latency: Histogram::default(),
            tokens_in: AtomicU64::new(0),
            tokens_out: AtomicU64::new(0),
            budget_remaining: AtomicI64::new(-1),
            stamp_calls: Histogram::default(),
            stamps_delivered: AtomicU64::new(0),
        }
    }
}

impl AgentMetrics {
    /// A response started: its status and the time it took to get there.
    pub fn request(&self, status: u16, latency: Duration) {
        if let Some(c) = self.by_status.get(usize::from(status)) {
            c.fetch_add(1, Relaxed);
        }
        self.latency.observe(latency);
    }

    /// The control plane answered a batch of `stamps` after `took`.
    pub fn stamp_call(&self, stamps: usize, took: Duration) {
        self.stamp_calls.observe(took);
        self.stamps_delivered.fetch_add(stamps as u64, Relaxed);
    }

    pub fn rejected(&self, why: Rejection) {
        let i = Rejection::ALL
            .iter()
            .position(|r| *r == why)
            .expect("listed");
        self.rejections[i].fetch_add(1, Relaxed);
    }

    pub fn tokens(&self, input: u64, output: u64) {
        self.tokens_in.fetch_add(input, Relaxed);
        self.tokens_out.fetch_add(output, Relaxed);
    }

    pub fn budget(&self, remaining: Option<u64>) {
        let v = remaining.map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX));
        self.budget_remaining.store(v, Relaxed);
    }
}

/// The gateway's metrics registry.
pub struct Metrics {
    agents: BTreeMap<String, Arc<AgentMetrics>>,
    unregistered: Arc<AgentMetrics>,
}

const UNREGISTERED: &str = "unregistered";

impl Metrics {
    pub fn new<'a>(agents: impl IntoIterator<Item = &'a AgentId>) -> Self {
        Self {
            agents: agents
                .into_iter()
                .map(|a| (a.as_str().to_owned(), Arc::default()))
                .collect(),
            unregistered: Arc::default(),
        }
    }

    /// The series of `agent`, or the shared `unregistered` ones.
    pub fn agent(&self, agent: Option<&AgentId>) -> &AgentMetrics {
        self.shared(agent)
    }

    /// The same, as a handle a task can keep (the one that writes the agent's chain).
    pub fn shared(&self, agent: Option<&AgentId>) -> &Arc<AgentMetrics> {
        agent
            .and_then(|a| self.agents.get(a.as_str()))
            .unwrap_or(&self.unregistered)
    }

    fn registered(&self) -> impl Iterator<Item = (&str, &AgentMetrics)> {
        self.agents.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    fn all(&self) -> impl Iterator<Item = (&str, &AgentMetrics)> {
        self.registered()
            .chain(std::iter::once((UNREGISTERED, &*self.unregistered)))
    }

    /// The exposition text, with `# HELP` and `# TYPE` for every family.
    pub fn render(
        &self,
        control_plane_up: bool,
        pending_stamps: usize,
        queued_upload_bytes: usize,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        family(
            w,
            "lockstock_gateway_requests_total",
            "counter",
            "Requests answered, by agent and HTTP status.",
        );
        for (agent, m) in self.all() {
            for (status, c) in m.by_status.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        w,
                        "lockstock_gateway_requests_total{{agent=\"{agent}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        family(
            w,
            "lockstock_gateway_rejections_total",
            "counter",
            "Requests refused by the gateway, by agent and reason.",
        );
        for (agent, m) in self.all() {
            for (r, c) in Rejection::ALL.iter().zip(&m.rejections) {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        w,
                        "lockstock_gateway_rejections_total{{agent=\"{agent}\",reason=\"{}\"}} {n}",
                        r.label()
                    );
                }
            }
        }
        histograms(
            w,
            "lockstock_gateway_request_duration_seconds",
            "Time from request received to response headers sent.",
            self.all().map(|(agent, m)| (agent, &m.latency)),
        );
        family(
            w,
            "lockstock_gateway_tokens_total",
            "counter",
            "Tokens counted in provider responses, by agent and direction.",
        );
        for (agent, m) in self.registered() {
            let _ = writeln!(
                w,
                "lockstock_gateway_tokens_total{{agent=\"{agent}\",direction=\"input\"}} {}",
                m.tokens_in.load(Relaxed)
            );
            let _ = writeln!(
                w,
                "lockstock_gateway_tokens_total{{agent=\"{agent}\",direction=\"output\"}} {}",
                m.tokens_out.load(Relaxed)
            );
        }
        per_agent(
            w,
            "lockstock_gateway_budget_remaining_tokens",
            "gauge",
            "Tokens the agent may still spend, as of its last verdict (absent when unlimited).",
            self.registered().map(|(agent, m)| {
                let v = m.budget_remaining.load(Relaxed);
                (agent, u64::try_from(v).ok())
            }),
        );
        family(
            w,
            "lockstock_gateway_control_plane_up",
            "gauge",
            "1 when the control plane answered the last stamp or probe.",
        );
        let _ = writeln!(
            w,
            "lockstock_gateway_control_plane_up {}",
            u8::from(control_plane_up)
        );
        histograms(
            w,
            "lockstock_gateway_stamp_call_duration_seconds",
            "Round trip of one batch of stamps to the control plane, durable commit included.",
            self.registered().map(|(agent, m)| (agent, &m.stamp_calls)),
        );
        per_agent(
            w,
            "lockstock_gateway_stamps_delivered_total",
            "counter",
            "Stamps the control plane has answered; over the calls' count, stamps per batch.",
            self.registered()
                .map(|(agent, m)| (agent, Some(m.stamps_delivered.load(Relaxed)))),
        );
        family(
            w,
            "lockstock_gateway_stamps_pending",
            "gauge",
            "Stamps made but not yet acknowledged by the control plane.",
        );
        let _ = writeln!(w, "lockstock_gateway_stamps_pending {pending_stamps}");
        family(
            w,
            "lockstock_gateway_upload_queue_bytes",
            "gauge",
            "Bytes of sealed transcripts queued for the control plane or in flight to it.",
        );
        let _ = writeln!(
            w,
            "lockstock_gateway_upload_queue_bytes {queued_upload_bytes}"
        );
        out
    }
}

fn family(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// A family with one sample per agent; an agent whose value is `None` has no sample.
fn per_agent<'a>(
    w: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, Option<u64>)>,
) {
    family(w, name, kind, help);
    for (agent, v) in values {
        if let Some(v) = v {
            let _ = writeln!(w, "{name}{{agent=\"{agent}\"}} {v}");
        }
    }
}

fn histograms<'a>(
    w: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, &'a Histogram)>,
) {
    family(w, name, "histogram", help);
    for (agent, h) in series {
        h.render(w, name, agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let a: AgentId = "agent_0000000a_a".parse().unwrap();
        let m = Metrics::new([&a]);
        let am = m.agent(Some(&a));
        am.request(200, Duration::from_micros(300));
        am.request(200, Duration::from_millis(3));
        am.request(429, Duration::from_micros(100));
        am.rejected(Rejection::Budget);
        am.tokens(10, 5);
        am.budget(Some(42));
        m.agent(None).rejected(Rejection::MissingAgent);
        let text = m.render(true, 0, 0);
        assert!(text.contains(
            "lockstock_gateway_requests_total{agent=\"agent_0000000a_a\",status=\"200\"} 2"
        ));
        assert!(text.contains("reason=\"budget\"} 1"));
        assert!(text.contains("agent=\"unregistered\",reason=\"missing_agent\"} 1"));
        assert!(text.contains("le=\"0.00025\"} 1"));
        assert!(text.contains("le=\"0.0005\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 3"));
        assert!(text.contains("direction=\"output\"} 5"));
        assert!(
            text.contains(
                "lockstock_gateway_budget_remaining_tokens{agent=\"agent_0000000a_a\"} 42"
            )
        );
    }

    #[test]
    fn stamp_calls_show_their_round_trips_and_how_many_stamps_they_carried() {
        let a: AgentId = "agent_0000000a_a".parse().unwrap();
        let m = Metrics::new([&a]);
        let before = m.render(true, 0, 0);
        assert!(!before.contains("lockstock_gateway_stamp_call_duration_seconds_count"));
        assert!(
            before
                .contains("lockstock_gateway_stamps_delivered_total{agent=\"agent_0000000a_a\"} 0")
        );
        let shared = m.shared(Some(&a)).clone();
        shared.stamp_call(16, Duration::from_micros(900));
        shared.stamp_call(2, Duration::from_millis(30));
        let text = m.render(true, 0, 0);
        for line in [
            "lockstock_gateway_stamp_call_duration_seconds_bucket{agent=\"agent_0000000a_a\",le=\"0.0005\"} 0",
            "lockstock_gateway_stamp_call_duration_seconds_bucket{agent=\"agent_0000000a_a\",le=\"0.001\"} 1",
            "lockstock_gateway_stamp_call_duration_seconds_bucket{agent=\"agent_0000000a_a\",le=\"0.05\"} 2",
            "lockstock_gateway_stamp_call_duration_seconds_bucket{agent=\"agent_0000000a_a\",le=\"+Inf\"} 2",
            "lockstock_gateway_stamp_call_duration_seconds_sum{agent=\"agent_0000000a_a\"} 0.0309",
            "lockstock_gateway_stamp_call_duration_seconds_count{agent=\"agent_0000000a_a\"} 2",
            "lockstock_gateway_stamps_delivered_total{agent=\"agent_0000000a_a\"} 18",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("stamps_delivered_total{agent=\"unregistered\"}"),
            "only registered agents write chains"
        );
    }
}
