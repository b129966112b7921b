//! End to end with the real OpenAI and Anthropic Python SDKs, against a gateway started by the
//! real `lockstock-gateway` CLI (credentials in a real Liberty vault), a real control plane
//! (SQLite in a temp dir) and the fixture upstream serving recorded provider responses.

mod support;

use std::time::Duration;

use lockstock::chain::StampKind;
use serde_json::{Value, json};
use support::procs::{GatewayProcess, Sandbox, prometheus_samples, sdk, sdk_many};
use support::*;

struct World {
    sb: Sandbox,
    cloud: Cloud,
    upstream: Upstream,
    gw: GatewayProcess,
    agent: lockstock::AgentId,
}

/// Control plane, upstream, a vault holding the keys, two agents provisioned by the CLI (so
/// there is no default agent and requests must name theirs), and a native gateway.
async fn world(account: bool) -> World {
    let sb = Sandbox::new();
    let cloud = Cloud::start(sb.path()).await;
    let upstream = Upstream::start().await;
    sb.vault(&[
        ("LOCKSTOCK_API_KEY", cloud.admin_key_str()),
        ("LOCKSTOCK_GATEWAY_KEY", cloud.gateway_key_str()),
        ("LOCKSTOCK_URL", &cloud.url),
        ("LOCKSTOCK_UPSTREAM_URL", &upstream.url()),
    ]);
    sb.ok("lockstock-gateway", &["provision", "--name", "sdk"], None);
    sb.ok("lockstock-gateway", &["provision", "--name", "other"], None);
    if account {
        sb.ok("lockstock-gateway", &["account", "init"], None);
    }
    let agent = sb
        .ok("liberty", &["show", "LOCKSTOCK_AGENT_SDK"], None)
        .trim()
        .parse()
        .unwrap();
    let gw = sb.gateway(&[]).await;
    World {
        sb,
        cloud,
        upstream,
        gw,
        agent,
    }
}

impl World {
    async fn sdk(&self, case: &str) -> Value {
        sdk(case, &self.gw.url, Some(self.agent.as_str())).await
    }

    async fn sdk_many(&self, cases: &[&str]) -> Vec<Value> {
        sdk_many(cases, &self.gw.url, Some(self.agent.as_str())).await
    }

    fn cli(&self, args: &[&str]) -> String {
        self.sb.ok("lockstock-gateway", args, None)
    }

    async fn stamps(&self) -> Vec<lockstock::api::StampRecord> {
        self.cloud
            .admin()
            .stamps(&self.agent, 0, 1000)
            .await
            .unwrap()
            .stamps
    }

    /// Waits until every request stamp has its response stamp.
    async fn settled(&self) -> Vec<lockstock::api::StampRecord> {
        eventually(10, "response stamps", || async {
            let s = self.stamps().await;
            let req = s
                .iter()
                .filter(|r| {
                    r.signed.stamp.kind == StampKind::Request
                        && matches!(r.verdict, lockstock::api::Verdict::Ok { .. })
                })
                .count();
            let resp = s
                .iter()
                .filter(|r| r.signed.stamp.kind == StampKind::Response)
                .count();
            req == resp
        })
        .await;
        self.stamps().await
    }
}

// ---- what the recordings hold, read independently of the gateway's own parser ----

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name).0).unwrap()
}

fn sse_data(name: &str) -> Vec<Value> {
    String::from_utf8(fixture(name).0)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn chat_stream_expectation(name: &str) -> (String, Value) {
    let mut content = String::new();
    let mut usage = Value::Null;
    for ev in sse_data(name) {
        if let Some(c) = ev["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if ev["usage"].is_object() {
            usage = json!([
                ev["usage"]["prompt_tokens"],
                ev["usage"]["completion_tokens"]
            ]);
        }
    }
    (content, usage)
}

fn anthropic_stream_expectation(name: &str) -> (String, Vec<Value>, [u64; 2]) {
    let (mut text, mut tools, mut input, mut output) = (String::new(), Vec::new(), 0, 0);
    let mut partial = String::new();
    let mut tool_name = String::new();
    for ev in sse_data(name) {
        match ev["type"].as_str().unwrap_or("") {
            "message_start" => input = ev["message"]["usage"]["input_tokens"].as_u64().unwrap(),
            "content_block_start" if ev["content_block"]["type"] == "tool_use" => {
                tool_name = ev["content_block"]["name"].as_str().unwrap().to_owned();
                partial.clear();
            }
            "content_block_delta" => match ev["delta"]["type"].as_str() {
                Some("text_delta") => text.push_str(ev["delta"]["text"].as_str().unwrap()),
                Some("input_json_delta") => {
                    partial.push_str(ev["delta"]["partial_json"].as_str().unwrap())
                }
                _ => {}
            },
            "content_block_stop" if !tool_name.is_empty() => {
                let input: Value =
                    serde_json::from_str(if partial.is_empty() { "{}" } else { &partial }).unwrap();
                tools.push(json!([tool_name, input]));
                tool_name.clear();
            }
            "message_delta" => output = ev["usage"]["output_tokens"].as_u64().unwrap(),
            _ => {}
        }
    }
    (text, tools, [input, output])
}

fn usage_pair(v: &Value) -> [u64; 2] {
    [v[0].as_u64().unwrap(), v[1].as_u64().unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traffic_matches_the_recordings_and_every_response_is_stamped_with_its_tokens() {
    let w = world(false).await;
    let results = w
        .sdk_many(&[
            "openai_chat",
            "openai_chat_async",
            "openai_tools",
            "openai_stream_usage",
            "openai_stream_plain",
            "openai_stream_tools",
            "openai_responses_stream",
            "anthropic_messages",
            "anthropic_tools",
            "anthropic_stream",
            "anthropic_stream_tools",
            "provider_error",
            "anthropic_error",
        ])
        .await;
    let mut results = results.into_iter();
    let mut next = move || results.next().unwrap();
    let mut expected_tokens: Vec<[u64; 2]> = Vec::new();

    // OpenAI chat, sync and async.
    let chat = fixture_json("openai-chat");
    for case in ["openai_chat", "openai_chat_async"] {
        let got = next();
        assert_eq!(
            got["content"], chat["choices"][0]["message"]["content"],
            "{case}"
        );
        assert_eq!(
            got["usage"],
            json!([
                chat["usage"]["prompt_tokens"],
                chat["usage"]["completion_tokens"]
            ])
        );
        expected_tokens.push(usage_pair(&got["usage"]));
    }

    // Tool calls.
    let tools = fixture_json("openai-chat-tool-calls");
    let got = next();
    let call = &tools["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(
        got["tool_calls"],
        json!([[call["name"], call["arguments"]]])
    );
    expected_tokens.push(usage_pair(&got["usage"]));

    // Streaming with usage asked by the client.
    let (content, usage) = chat_stream_expectation("openai-chat-stream-usage");
    let got = next();
    assert_eq!(got["content"], content);
    assert_eq!(got["usage"], usage);
    assert_eq!(
        got["usage_only_chunks"], 1,
        "the client asked for the usage chunk and gets it"
    );
    expected_tokens.push(usage_pair(&usage));

    // Streaming without usage: the gateway asks for it and hides the extra chunk.
    let got = next();
    assert_eq!(got["content"], content);
    assert_eq!(
        got["usage"],
        Value::Null,
        "no usage reached a client that did not ask"
    );
    assert_eq!(got["usage_only_chunks"], 0);
    expected_tokens.push(usage_pair(&usage));

    // Streamed tool calls.
    let got = next();
    let mut name = String::new();
    let mut args = String::new();
    for ev in sse_data("openai-chat-stream-tool-calls") {
        if let Some(tc) = ev["choices"][0]["delta"]["tool_calls"][0].as_object() {
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(got["tool_calls"], json!([[name, args]]));
    let (_, tool_usage) = chat_stream_expectation("openai-chat-stream-tool-calls");
    expected_tokens.push(usage_pair(&tool_usage));

    // Responses API, streaming.
    let got = next();
    let events = sse_data("openai-responses-stream");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let done = events
        .iter()
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    assert_eq!(got["content"], text);
    let usage = json!([
        done["response"]["usage"]["input_tokens"],
        done["response"]["usage"]["output_tokens"]
    ]);
    assert_eq!(got["usage"], usage);
    expected_tokens.push(usage_pair(&usage));

    // Anthropic messages: plain, tool use, streaming, streaming tool use.
    let msg = fixture_json("anthropic-messages");
    let got = next();
    assert_eq!(got["content"], msg["content"][0]["text"]);
    expected_tokens.push([
        msg["usage"]["input_tokens"].as_u64().unwrap(),
        msg["usage"]["output_tokens"].as_u64().unwrap(),
    ]);

    let tool = fixture_json("anthropic-messages-tool-use");
    let got = next();
    assert_eq!(
        got["tool_calls"],
        json!([[tool["content"][0]["name"], tool["content"][0]["input"]]])
    );
    expected_tokens.push(usage_pair(&got["usage"]));

    for (case, name) in [
        ("anthropic_stream", "anthropic-messages-stream"),
        (
            "anthropic_stream_tools",
            "anthropic-messages-stream-tool-use",
        ),
    ] {
        let (text, tools, usage) = anthropic_stream_expectation(name);
        let got = next();
        assert_eq!(got["content"], text, "{case}");
        assert_eq!(got["tool_calls"], json!(tools), "{case}");
        assert_eq!(usage_pair(&got["usage"]), usage, "{case}");
        expected_tokens.push(usage);
    }

    // Provider errors pass through as the provider sent them.
    let got = next();
    let recorded = fixture_json("openai-error-401-invalid-api-key");
    assert_eq!(got["error"]["status"], 401);
    assert_eq!(got["error"]["body"], recorded["error"]);
    let got = next();
    assert_eq!(got["error"]["status"], 401);
    assert_eq!(
        got["error"]["body"],
        fixture_json("anthropic-error-401-authentication")
    );

    // Every forwarded request was stamped twice, the response stamp with the provider's counts.
    let stamps = w.settled().await;
    let responses: Vec<_> = stamps
        .iter()
        .filter(|s| s.signed.stamp.kind == StampKind::Response)
        .collect();
    assert_eq!(responses.len(), expected_tokens.len() + 2);
    for (r, want) in responses.iter().zip(&expected_tokens) {
        let s = &r.signed.stamp;
        assert_eq!(
            [s.tokens_in, s.tokens_out],
            *want,
            "seq {} ({})",
            s.seq,
            s.model
        );
        assert_eq!(
            s.flags & lockstock::chain::flags::ESTIMATED,
            0,
            "seq {}",
            s.seq
        );
    }
    let last = &responses.last().unwrap().signed.stamp;
    assert_eq!(
        (last.status, last.tokens_in, last.tokens_out),
        (401, 0, 0),
        "a refused request costs nothing"
    );
    lockstock::chain::verify_chain(
        &w.agent,
        &lockstock::agent::signing_key(&vault_seed(&w.sb), &w.agent).verifying_key(),
        lockstock::chain::Head::genesis(&w.agent),
        stamps.iter().map(|s| (&s.signed, Some(s.hash))),
    )
    .expect("the chain verifies end to end");

    // The metrics agree with the traffic, read by Prometheus' own parser.
    let text = Http::default()
        .get(&format!("{}/metrics", w.gw.url))
        .await
        .text();
    let samples = prometheus_samples(&text);
    let find = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
            .map(|(_, _, v)| *v)
            .sum()
    };
    let agent = w.agent.as_str();
    assert_eq!(
        find(
            "lockstock_gateway_requests_total",
            &[("agent", agent), ("status", "200")]
        ),
        expected_tokens.len() as f64
    );
    assert_eq!(
        find(
            "lockstock_gateway_requests_total",
            &[("agent", agent), ("status", "401")]
        ),
        2.0
    );
    let out: u64 = expected_tokens.iter().map(|t| t[1]).sum();
    assert_eq!(
        find(
            "lockstock_gateway_tokens_total",
            &[("agent", agent), ("direction", "output")]
        ),
        out as f64
    );
    assert_eq!(
        find(
            "lockstock_gateway_request_duration_seconds_count",
            &[("agent", agent)]
        ),
        (expected_tokens.len() + 2) as f64
    );
    // Every stamp in the ledger went through a counted call; the gateway counts a call once
    // its answer is back, a moment after the ledger committed it.
    let metrics_url = format!("{}/metrics", w.gw.url);
    let metric = |name: &'static str| {
        let url = metrics_url.clone();
        async move {
            let text = Http::default().get(&url).await.text();
            prometheus_samples(&text)
                .iter()
                .filter(|(n, l, _)| n == name && l["agent"] == agent)
                .map(|(_, _, v)| *v)
                .sum::<f64>()
        }
    };
    eventually(10, "every stamp counted as delivered", || async {
        metric("lockstock_gateway_stamps_delivered_total").await == stamps.len() as f64
    })
    .await;
    let calls = metric("lockstock_gateway_stamp_call_duration_seconds_count").await;
    assert!(
        (1.0..=stamps.len() as f64).contains(&calls),
        "{calls} calls for {} stamps",
        stamps.len()
    );
}

fn vault_seed(sb: &Sandbox) -> lockstock::secret::SecretKey32 {
    lockstock::secret::key_from_hex(sb.ok("liberty", &["show", "MLS_SEED"], None).trim()).unwrap()
}

impl Cloud {
    fn admin_key_str(&self) -> &str {
        use lockstock::secret::ExposeSecret;
        self.admin_key.expose_secret()
    }

    fn gateway_key_str(&self) -> &str {
        use lockstock::secret::ExposeSecret;
        self.gateway_key.expose_secret()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_agent_gets_429_and_the_provider_receives_nothing() {
    let w = world(false).await;
    w.cli(&["lock", "sdk", "--reason", "suspicious tool use"]);
    let got = w.sdk("openai_chat").await;
    assert_eq!(got["error"]["status"], 429);
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspicious tool use"),
        "{got}"
    );
    let got = w.sdk("anthropic_messages").await;
    assert_eq!(got["error"]["status"], 429);
    assert!(
        w.upstream.requests().is_empty(),
        "a locked agent's request left the network"
    );
    w.cli(&["unlock", "sdk"]);
    assert!(w.sdk("openai_chat").await["content"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_clamp_max_tokens_then_refuse_with_the_documented_message() {
    let w = world(false).await;
    w.cli(&["budget", "sdk", "--tokens", "80"]);
    let got = w.sdk("openai_stream_plain=1000").await;
    assert!(got["content"].is_string(), "{got}");
    let sent = w.upstream.requests()[0].json();
    let cap = sent["max_tokens"].as_u64().unwrap();
    assert!(
        cap < 80,
        "the provider saw max_tokens clamped to the grant, got {cap}"
    );

    let mut last = Value::Null;
    for _ in 0..8 {
        last = w.sdk("openai_stream_plain=1000").await;
        if last.get("error").is_some() {
            break;
        }
    }
    assert_eq!(last["error"]["status"], 429, "{last}");
    assert_eq!(last["error"]["message"], "Token budget exhausted");
    assert!(
        last["error"]["sdk_message"]
            .as_str()
            .unwrap()
            .contains("Token budget exhausted"),
        "the SDK surfaces the message"
    );
    let before = w.upstream.requests().len();
    assert_eq!(w.sdk("anthropic_messages").await["error"]["status"], 429);
    assert_eq!(
        w.upstream.requests().len(),
        before,
        "over budget: nothing forwarded"
    );

    w.cli(&["budget", "sdk", "--unlimited"]);
    assert!(w.sdk("openai_chat").await["content"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_streams_never_spend_more_than_the_budget() {
    let w = world(false).await;
    let budget = 300;
    w.cli(&["budget", "sdk", "--tokens", &budget.to_string()]);
    let got = w.sdk("concurrent_streams=32").await;
    let statuses: Vec<u64> = got["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    w.settled().await;
    let info = w.cloud.admin().agent(&w.agent).await.unwrap();
    let forwarded = w.upstream.requests().len();
    assert_eq!(forwarded, statuses.iter().filter(|s| **s == 200).count());
    assert!(
        info.used <= budget,
        "spent {} of a {budget} budget over {forwarded} streams",
        info.used
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_one_cloned_agent_credential_conflict() {
    let w = world(false).await;
    let clone = w.sb.gateway(&[]).await;
    let mut statuses = Vec::new();
    for gw in [&w.gw.url, &clone.url, &w.gw.url, &clone.url] {
        let got = sdk("openai_chat", gw, Some(w.agent.as_str())).await;
        statuses.push(got["error"]["status"].as_u64().unwrap_or(200));
    }
    assert!(statuses.contains(&409), "{statuses:?}");
    let got = sdk("openai_chat", &clone.url, Some(w.agent.as_str())).await;
    assert!(
        got["error"]["status"] == 409 || got["error"]["status"] == 429,
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_trips_the_breaker() {
    let w = world(false).await;
    w.cli(&["sentinel", "sdk", "--max-per-minute", "5"]);
    let results = w.sdk_many(&["openai_chat"; 8]).await;
    let last = results.last().unwrap();
    assert_eq!(last["error"]["status"], 503, "{last}");
    assert_eq!(last["error"]["message"], "LockStock stamp rejected");
    let alerts = w.cli(&["alerts"]);
    assert!(alerts.contains(w.agent.as_str()), "{alerts}");
    assert_eq!(w.upstream.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_header_without_a_default_is_400_and_an_unknown_agent_is_403() {
    let w = world(false).await;
    let got = sdk("openai_chat", &w.gw.url, None).await;
    assert_eq!(got["error"]["status"], 400);
    assert_eq!(got["error"]["message"], "Missing X-D3cipher-Agent header");
    let got = sdk(
        "anthropic_messages",
        &w.gw.url,
        Some("agent_0badc0de_stranger"),
    )
    .await;
    assert_eq!(got["error"]["status"], 403);
    assert!(w.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_down_means_503_and_no_request_leaves_unstamped() {
    let mut w = world(false).await;
    assert!(w.sdk("openai_chat").await["content"].is_string());
    w.cloud.stop().await;
    for case in ["openai_chat", "anthropic_stream"] {
        let got = w.sdk(case).await;
        assert_eq!(got["error"]["status"], 503, "{case}: {got}");
    }
    let health = Http::default().get(&format!("{}/healthz", w.gw.url)).await;
    assert_eq!(health.status, 503);
    assert_eq!(
        w.upstream.requests().len(),
        1,
        "only the request stamped before the outage was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_bytes_appear_nowhere_in_the_control_plane() {
    let mut w = world(true).await;
    let secret = "zebra-quartz-PROMPT-91735";
    let got = sdk_prompt(&w, secret).await;
    assert_eq!(got.status, 200);
    eventually(10, "the sealed blobs", || async {
        let s = w.stamps().await;
        s.len() == 2 && s.iter().all(|r| r.has_blob)
    })
    .await;
    w.gw.terminate();
    w.cloud.stop().await;
    let mut scanned = 0;
    for entry in walk(&w.cloud.data_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        scanned += bytes.len();
        assert!(
            !bytes.windows(secret.len()).any(|b| b == secret.as_bytes()),
            "prompt found in {}",
            entry.display()
        );
    }
    assert!(scanned > 0);
    let config = w.cli(&["config"]);
    assert!(
        !config.contains(
            &w.sb
                .ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_KEY"], None)
                .trim()
                .to_owned()
        )
    );
    let _ = Duration::ZERO;
}

async fn sdk_prompt(w: &World, secret: &str) -> Reply {
    let body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{secret}"}}]}}"#);
    Http::default()
        .post(
            &format!("{}/v1/chat/completions", w.gw.url),
            &[("x-d3cipher-agent", w.agent.as_str())],
            body.as_bytes(),
        )
        .await
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
