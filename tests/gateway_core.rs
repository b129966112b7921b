//! The gateway core end to end, in-process: a real control plane (SQLite in a temp dir),
//! the fixture upstream, and the gateway, all over real HTTP on loopback.

mod support;

use std::time::Duration;

use lockstock::api::Verdict;
use lockstock::chain::{StampKind, flags};
use lockstock::config::GatewayConfig;
use support::*;

const OPENAI_CHAT: &str =
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"What is 4200 + 42?"}]}"#;

struct World {
    _dir: tempfile::TempDir,
    cloud: Cloud,
    upstream: Upstream,
    agent: lockstock::AgentId,
    gw: Gateway,
    http: Http,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let upstream = Upstream::start().await;
    let seed = seed();
    let agent = cloud.agent(&seed, "core").await;
    let gw = Gateway::start(gateway_config(
        &cloud,
        &upstream.url(),
        &seed,
        &[&agent],
        None,
    ))
    .await;
    World {
        _dir: dir,
        cloud,
        upstream,
        agent,
        gw,
        http: Http::default(),
    }
}

impl World {
    async fn chat(&self, body: &str, extra: &[(&str, &str)]) -> Reply {
        let mut h = vec![("x-d3cipher-agent", self.agent.as_str())];
        h.extend_from_slice(extra);
        self.http
            .post(
                &format!("{}/v1/chat/completions", self.gw.url),
                &h,
                body.as_bytes(),
            )
            .await
    }

    async fn stamps(&self) -> Vec<lockstock::api::StampRecord> {
        self.cloud
            .admin()
            .stamps(&self.agent, 0, 1000)
            .await
            .unwrap()
            .stamps
    }

    async fn settled(&self, n: usize) -> Vec<lockstock::api::StampRecord> {
        eventually(5, "stamps to arrive", || async {
            self.stamps().await.len() >= n
        })
        .await;
        self.stamps().await
    }
}

#[tokio::test]
async fn a_chat_completion_passes_byte_for_byte_and_is_stamped_twice() {
    let w = world().await;
    let reply = w.chat(OPENAI_CHAT, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body.as_ref(), fixture("openai-chat").0.as_slice());

    let got = w.upstream.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert!(
        got[0].headers.get("x-d3cipher-agent").is_none(),
        "agent header stripped"
    );
    assert_eq!(
        got[0].body.as_ref(),
        OPENAI_CHAT.as_bytes(),
        "unbudgeted body unchanged"
    );

    let stamps = w.settled(2).await;
    assert_eq!(stamps.len(), 2);
    let (req, resp) = (&stamps[0].signed.stamp, &stamps[1].signed.stamp);
    assert_eq!(req.kind, StampKind::Request);
    assert_eq!(req.model, "gpt-4o");
    assert_eq!(resp.kind, StampKind::Response);
    assert_eq!(resp.ref_seq, req.seq);
    assert_eq!((resp.tokens_in, resp.tokens_out), (16, 12));
    assert_eq!(resp.flags & flags::ESTIMATED, 0);
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn a_path_without_v1_still_reaches_the_provider() {
    let w = world().await;
    let h = [("x-d3cipher-agent", w.agent.as_str())];
    let reply = w
        .http
        .post(
            &format!("{}/chat/completions", w.gw.url),
            &h,
            OPENAI_CHAT.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(w.upstream.requests()[0].path, "/v1/chat/completions");
}

#[tokio::test]
async fn a_stream_without_usage_is_counted_and_the_client_sees_no_extra_chunk() {
    let w = world().await;
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = w.chat(body, &[]).await;
    assert_eq!(reply.status, 200);
    let sent = w.upstream.requests()[0].json();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asked for usage"
    );

    let fixture = String::from_utf8(fixture("openai-chat-stream-usage").0).unwrap();
    let usage_event = fixture
        .split_inclusive("\n\n")
        .find(|e| e.contains("\"choices\":[]"))
        .unwrap();
    assert_eq!(reply.text(), fixture.replacen(usage_event, "", 1));

    let stamps = w.settled(2).await;
    let resp = &stamps[1].signed.stamp;
    assert_eq!((resp.tokens_in, resp.tokens_out), (16, 10));
}

#[tokio::test]
async fn gzip_is_passed_through_and_still_counted() {
    let w = world().await;
    let reply = w
        .http
        .post(
            &format!("{}/v1/messages", w.gw.url),
            &[
                ("x-d3cipher-agent", w.agent.as_str()),
                ("accept-encoding", "gzip"),
            ],
            br#"{"model":"claude-3-5-haiku","max_tokens":100,"stream":true,"messages":[]}"#,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(reply.body.as_ref()),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain, fixture("anthropic-messages-stream").0);
    let stamps = w.settled(2).await;
    assert!(stamps[1].signed.stamp.tokens_out > 0);
    assert_eq!(stamps[1].signed.stamp.flags & flags::ESTIMATED, 0);
}

#[tokio::test]
async fn a_locked_agent_gets_429_and_the_provider_sees_nothing() {
    let w = world().await;
    w.cloud
        .admin()
        .lock(&w.agent, Some("incident 42".into()))
        .await
        .unwrap();
    let reply = w.chat(OPENAI_CHAT, &[]).await;
    assert_eq!(reply.status, 429);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("incident 42")
    );
    assert_eq!(reply.headers["x-should-retry"], "false");
    assert!(w.upstream.requests().is_empty());
    w.cloud.admin().unlock(&w.agent).await.unwrap();
    assert_eq!(w.chat(OPENAI_CHAT, &[]).await.status, 200);
}

#[tokio::test]
async fn budgets_clamp_then_exhaust_and_raising_restores() {
    let w = world().await;
    let prompt =
        r#"{"model":"gpt-4o","max_tokens":4000,"messages":[{"role":"user","content":"hi"}]}"#;
    w.cloud
        .admin()
        .set_budget(&w.agent, Some(100))
        .await
        .unwrap();
    let reply = w.chat(prompt, &[]).await;
    assert_eq!(reply.status, 200);
    let sent = w.upstream.requests()[0].json();
    let clamped = sent["max_tokens"].as_u64().unwrap();
    assert!(clamped < 100, "clamped to the grant, got {clamped}");

    // The fixture reports 28 tokens; spend until nothing is left.
    let mut statuses = vec![];
    for _ in 0..6 {
        statuses.push(w.chat(prompt, &[]).await.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let reply = w.chat(prompt, &[]).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["message"], "Token budget exhausted");

    w.cloud
        .admin()
        .set_budget(&w.agent, Some(10_000))
        .await
        .unwrap();
    assert_eq!(w.chat(prompt, &[]).await.status, 200);
}

#[tokio::test]
async fn two_gateways_sharing_an_agent_key_fork_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let upstream = Upstream::start().await;
    let seed = seed();
    let agent = cloud.agent(&seed, "cloned").await;
    let a = Gateway::start(gateway_config(
        &cloud,
        &upstream.url(),
        &seed,
        &[&agent],
        None,
    ))
    .await;
    let b = Gateway::start(gateway_config(
        &cloud,
        &upstream.url(),
        &seed,
        &[&agent],
        None,
    ))
    .await;
    let http = Http::default();
    let h = [("x-d3cipher-agent", agent.as_str())];
    let admin = cloud.admin();
    // Each exchange's two stamps are let into the ledger before the next request, so the
    // interleaving is the same on every run: b picks up the head a left (seq 2) and extends it;
    // a, still holding seq 2 as its head, then presents a stamp that does not chain. (Without
    // the wait, a's response stamp can be the one that collides: the agent is frozen just the
    // same, but no client sees the 409.)
    let mut statuses = vec![];
    for (gw, settled_seq) in [(&a, Some(2)), (&b, Some(4)), (&a, None), (&b, None)] {
        let reply = http
            .post(
                &format!("{}/v1/chat/completions", gw.url),
                &h,
                OPENAI_CHAT.as_bytes(),
            )
            .await;
        if reply.status == 409 {
            assert_eq!(reply.json()["error"]["message"], "Chain hash mismatch");
        }
        statuses.push(reply.status);
        if let Some(seq) = settled_seq {
            eventually(5, "the exchange's stamps", || async {
                admin.agent(&agent).await.unwrap().seq >= seq
            })
            .await;
        }
    }
    // The clone that forked sees 409; afterwards the frozen agent is refused on either gateway.
    assert_eq!(statuses, [200, 200, 409, 429]);
    let info = admin.agent(&agent).await.unwrap();
    assert!(info.locked, "a fork freezes the agent");
    assert!(
        info.lock_reason.as_deref().unwrap_or("").contains("fork"),
        "{info:?}"
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "refused requests never reach the provider"
    );
}

#[tokio::test]
async fn missing_and_unknown_agents_are_refused() {
    let w = world().await;
    let r = w
        .http
        .post(
            &format!("{}/v1/chat/completions", w.gw.url),
            &[],
            OPENAI_CHAT.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Missing X-D3cipher-Agent header"
    );
    let r = w
        .http
        .post(
            &format!("{}/v1/chat/completions", w.gw.url),
            &[("x-d3cipher-agent", "agent_deadbeef_other")],
            OPENAI_CHAT.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = w
        .http
        .post(
            &format!("{}/v1/chat/completions", w.gw.url),
            &[("x-d3cipher-agent", "nonsense")],
            OPENAI_CHAT.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(w.upstream.requests().is_empty());
}

#[tokio::test]
async fn control_plane_down_means_503_and_nothing_unstamped_reaches_the_provider() {
    let mut w = world().await;
    assert_eq!(
        w.http.get(&format!("{}/healthz", w.gw.url)).await.status,
        200
    );
    let addr = w.cloud.addr();
    w.cloud.stop().await;
    let r = w.chat(OPENAI_CHAT, &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = w.chat(OPENAI_CHAT, &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        w.http.get(&format!("{}/healthz", w.gw.url)).await.status,
        503
    );
    assert!(w.upstream.requests().is_empty());

    w.cloud.serve(Some(addr)).await;
    eventually(10, "the gateway to resume", || async {
        w.chat(OPENAI_CHAT, &[]).await.status == 200
    })
    .await;
    let stamps = w.settled(2).await;
    let requests = stamps
        .iter()
        .filter(|s| s.signed.stamp.kind == StampKind::Request)
        .count();
    let forwarded = w.upstream.requests().len();
    let ok_requests = stamps
        .iter()
        .filter(|s| {
            s.signed.stamp.kind == StampKind::Request && matches!(s.verdict, Verdict::Ok { .. })
        })
        .count();
    assert!(
        ok_requests >= forwarded && requests >= forwarded,
        "every forwarded request was stamped"
    );
}

#[tokio::test]
async fn transcripts_are_sealed_and_the_prompt_never_reaches_the_ledger_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let upstream = Upstream::start().await;
    let seed = seed();
    let agent = cloud.agent(&seed, "sealed").await;
    let account = lockstock::seal::AccountKey::generate();
    let mut gw = Gateway::start(gateway_config(
        &cloud,
        &upstream.url(),
        &seed,
        &[&agent],
        Some(account.public_key()),
    ))
    .await;
    let secret_prompt = "the launch code is PURPLE-ELEPHANT-7731";
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{secret_prompt}"}}]}}"#
    );
    // A prompt too big to travel with its stamp goes through the uploader instead.
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(400 * 1024)
    );
    for prompt in [&body, &big] {
        let r = Http::default()
            .post(
                &format!("{}/v1/chat/completions", gw.url),
                &[("x-d3cipher-agent", agent.as_str())],
                prompt.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    gw.stop().await;

    // Shutdown waits for the uploads: every blob is there the moment it returns.
    let admin = cloud.admin();
    let page = admin.stamps(&agent, 0, 10).await.unwrap();
    assert_eq!(page.stamps.len(), 4);
    assert!(
        page.stamps.iter().all(|s| s.has_blob),
        "every sealed transcript was delivered before shutdown completed"
    );
    let blob = admin.blob(&agent, 1).await.unwrap().expect("request blob");
    let keys = admin.keys(&agent).await.unwrap().keys;
    assert_eq!(keys.len(), 1);
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&keys[0].wrapped)
        .unwrap();
    let dek = account.unwrap_dek(&agent, keys[0].epoch, &wrapped).unwrap();
    let plain = dek.open(&agent, 1, StampKind::Request, &blob).unwrap();
    assert_eq!(plain.as_slice(), body.as_bytes());
    let big_seq = page
        .stamps
        .iter()
        .filter(|s| s.signed.stamp.kind == StampKind::Request)
        .map(|s| s.signed.stamp.seq)
        .max()
        .unwrap();
    let blob = admin
        .blob(&agent, big_seq)
        .await
        .unwrap()
        .expect("big request blob");
    let plain = dek
        .open(&agent, big_seq, StampKind::Request, &blob)
        .unwrap();
    assert_eq!(plain.as_slice(), big.as_bytes());

    let mut cloud = cloud;
    cloud.stop().await;
    for entry in std::fs::read_dir(&cloud.data_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(secret_prompt.len())
                .any(|w| w == secret_prompt.as_bytes()),
            "prompt found in the ledger"
        );
    }
}

#[tokio::test]
async fn metrics_count_what_was_sent() {
    let w = world().await;
    for _ in 0..3 {
        assert_eq!(w.chat(OPENAI_CHAT, &[]).await.status, 200);
    }
    w.http
        .post(
            &format!("{}/v1/chat/completions", w.gw.url),
            &[],
            OPENAI_CHAT.as_bytes(),
        )
        .await;
    let text = w.http.get(&format!("{}/metrics", w.gw.url)).await.text();
    let line = format!(
        "lockstock_gateway_requests_total{{agent=\"{}\",status=\"200\"}} 3",
        w.agent
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("reason=\"missing_agent\"} 1"), "{text}");
}

async fn world_with(tune: impl FnOnce(&mut lockstock::config::GatewayConfig)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let upstream = Upstream::start().await;
    let seed = seed();
    let agent = cloud.agent(&seed, "tuned").await;
    let mut cfg = gateway_config(&cloud, &upstream.url(), &seed, &[&agent], None);
    tune(&mut cfg);
    let gw = Gateway::start(cfg).await;
    World {
        _dir: dir,
        cloud,
        upstream,
        agent,
        gw,
        http: Http::default(),
    }
}

#[tokio::test]
async fn ollama_native_and_compatible_endpoints_are_counted() {
    let w = world().await;
    let h = [("x-d3cipher-agent", w.agent.as_str())];
    let body = fixture_request("ollama-api-chat-stream");
    let r = w
        .http
        .post(&format!("{}/api/chat", w.gw.url), &h, &body)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_ref(),
        fixture("ollama-api-chat-stream").0.as_slice()
    );
    let body = fixture_request("ollama-openai-chat");
    let r = w
        .http
        .post(
            &format!("{}/v1/chat/completions", w.gw.url),
            &[
                ("x-d3cipher-agent", w.agent.as_str()),
                ("x-fixture", "ollama-openai-chat"),
            ],
            &body,
        )
        .await;
    assert_eq!(r.status, 200);

    let stamps = w.settled(4).await;
    let last_line: serde_json::Value = serde_json::from_slice(
        fixture("ollama-api-chat-stream")
            .0
            .trim_ascii_end()
            .rsplit(|b| *b == b'\n')
            .next()
            .unwrap(),
    )
    .unwrap();
    let native = &stamps[1].signed.stamp;
    assert_eq!(
        (native.tokens_in, native.tokens_out),
        (
            last_line["prompt_eval_count"].as_u64().unwrap(),
            last_line["eval_count"].as_u64().unwrap()
        )
    );
    let compat: serde_json::Value =
        serde_json::from_slice(&fixture("ollama-openai-chat").0).unwrap();
    let s = &stamps[3].signed.stamp;
    assert_eq!(
        (s.tokens_in, s.tokens_out),
        (
            compat["usage"]["prompt_tokens"].as_u64().unwrap(),
            compat["usage"]["completion_tokens"].as_u64().unwrap()
        )
    );
}

fn fixture_request(name: &str) -> Vec<u8> {
    std::fs::read(lockstock_testkit::upstream::fixtures_dir().join(format!("{name}.request.json")))
        .unwrap()
}

/// Starts an Anthropic stream through the gateway, `delay_ms` between events, and returns its
/// body once the response head has arrived.
async fn open_stream(w: &World, delay_ms: &str) -> hyper::body::Incoming {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{}/v1/messages", w.gw.url))
        .header("x-d3cipher-agent", w.agent.as_str())
        .header("x-fixture-delay-ms", delay_ms)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            fixture_request("anthropic-messages-stream"),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body()
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_gets_its_response_stamp() {
    use http_body_util::BodyExt;
    let w = world().await;
    let mut body = open_stream(&w, "100").await;
    let first = body.frame().await.unwrap().unwrap();
    assert!(!first.data_ref().unwrap().is_empty());
    drop(body);

    let stamps = w.settled(2).await;
    let s = &stamps[1].signed.stamp;
    assert_ne!(s.flags & flags::CLIENT_GONE, 0, "flags {:#x}", s.flags);
    assert_eq!(s.tokens_in, 17, "message_start's input tokens were counted");
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish_and_stamps_it() {
    use http_body_util::BodyExt;
    let mut w = world().await;
    let mut body = open_stream(&w, "40").await;
    // Shut down only once the stream is under way, however slow the machine.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let rest = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
    w.gw.stop().await;
    let whole = [first, rest.await.unwrap()].concat();
    assert_eq!(
        whole,
        fixture("anthropic-messages-stream").0,
        "the stream finished whole"
    );
    let stamps = w.stamps().await;
    assert_eq!(
        stamps.len(),
        2,
        "the response stamp was delivered before shutdown completed"
    );
    assert_eq!(
        stamps[1].signed.stamp.flags & (flags::CLIENT_GONE | flags::UPSTREAM_FAILED),
        0
    );
}

#[tokio::test]
async fn a_stream_the_provider_breaks_is_stamped_as_failed() {
    let w = world().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{}/v1/messages", w.gw.url))
        .header("x-d3cipher-agent", w.agent.as_str())
        .header("x-fixture-cut-after", "3")
        .header("x-fixture-delay-ms", "30")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            fixture_request("anthropic-messages-stream"),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    assert!(
        resp.into_body().collect().await.is_err(),
        "the client sees the stream break"
    );
    let stamps = w.settled(2).await;
    assert_ne!(stamps[1].signed.stamp.flags & flags::UPSTREAM_FAILED, 0);
    assert_eq!(stamps[1].signed.stamp.tokens_in, 17);
}

#[tokio::test]
async fn oversized_and_malformed_bodies() {
    let w = world_with(|c| c.limits.max_request_bytes = 1024).await;
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let r = w.chat(&big, &[]).await;
    assert_eq!(r.status, 413);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024")
    );
    assert!(w.upstream.requests().is_empty());
    assert!(
        w.stamps().await.is_empty(),
        "nothing stamped for a refused body"
    );

    // Not JSON, or JSON of the wrong shape: forwarded untouched; the provider judges it.
    for junk in [
        &b"{not json"[..],
        b"[1,2,3]",
        b"\xff\xfe\xfd",
        b"{\"model\":123,\"max_tokens\":\"many\"}",
    ] {
        let r = w
            .http
            .post(
                &format!("{}/v1/chat/completions", w.gw.url),
                &[("x-d3cipher-agent", w.agent.as_str())],
                junk,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(w.upstream.requests().last().unwrap().body.as_ref(), junk);
    }
}

#[tokio::test]
async fn the_gateway_supplies_the_provider_key_only_when_the_agent_has_none() {
    use lockstock::secret::SecretString;
    let w = world_with(|c| {
        c.openai_key = Some(SecretString::from("sk-real-openai".to_owned()));
        c.anthropic_key = Some(SecretString::from("sk-ant-real".to_owned()));
    })
    .await;
    w.chat(OPENAI_CHAT, &[("authorization", "Bearer lockstock")])
        .await;
    w.chat(OPENAI_CHAT, &[]).await;
    w.chat(OPENAI_CHAT, &[("authorization", "Bearer sk-agent-own")])
        .await;
    w.http
        .post(
            &format!("{}/v1/messages", w.gw.url),
            &[
                ("x-d3cipher-agent", w.agent.as_str()),
                ("x-api-key", "lockstock"),
            ],
            &fixture_request("anthropic-messages"),
        )
        .await;
    let got = w.upstream.requests();
    let auth = |i: usize| {
        got[i]
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(auth(0).as_deref(), Some("Bearer sk-real-openai"));
    assert_eq!(auth(1).as_deref(), Some("Bearer sk-real-openai"));
    assert_eq!(auth(2).as_deref(), Some("Bearer sk-agent-own"));
    assert_eq!(got[3].headers["x-api-key"], "sk-ant-real");
    assert!(got[3].headers.get("authorization").is_none());
}

#[tokio::test]
async fn an_unreachable_provider_is_502_and_the_reservation_is_released() {
    let w = world_with(|c| {
        c.upstream = lockstock::config::Upstream::parse("http://127.0.0.1:9").unwrap()
    })
    .await;
    w.cloud
        .admin()
        .set_budget(&w.agent, Some(1000))
        .await
        .unwrap();
    let r = w.chat(OPENAI_CHAT, &[]).await;
    assert_eq!(r.status, 502);
    let stamps = w.settled(2).await;
    assert_ne!(stamps[1].signed.stamp.flags & flags::NOT_FORWARDED, 0);
    eventually(5, "the reservation to be released", || async {
        let info = w.cloud.admin().agent(&w.agent).await.unwrap();
        info.reserved == 0 && info.remaining == Some(1000)
    })
    .await;
}

#[tokio::test]
async fn sealed_blobs_wait_on_disk_while_the_control_plane_is_away() {
    use base64::Engine;
    use lockstock::api::BlobUpload;
    use lockstock::chain::{Hash32, Head, Stamp};
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(dir.path()).await;
    let seed = seed();
    let agent = cloud.agent(&seed, "spool").await;
    let key = lockstock::agent::signing_key(&seed, &agent);
    let dek = lockstock::seal::Dek::generate(1);
    let blob = dek
        .seal(&agent, 1, StampKind::Request, b"{\"prompt\":\"kept safe\"}")
        .unwrap();
    let first = sealed_request_stamp(&agent, 1, Head::genesis(&agent).hash, &blob);
    // A second exchange, whose blob is spooled by an uploader that is already running.
    let blob2 = dek
        .seal(
            &agent,
            2,
            StampKind::Request,
            b"{\"prompt\":\"kept safe too\"}",
        )
        .unwrap();
    let second = Stamp {
        seq: 2,
        prev_hash: first.hash(),
        blob_hash: Some(Hash32::of(&blob2)),
        ..first.clone()
    };
    cloud
        .gateway()
        .append(&[first.sign(&key), second.sign(&key)])
        .await
        .unwrap();

    let spool = dir.path().join("spool");
    let upload = BlobUpload {
        agent_id: agent.clone(),
        seq: 1,
        kind: StampKind::Request,
        data: base64::engine::general_purpose::STANDARD.encode(&blob),
    };
    {
        let away =
            lockstock::client::ControlPlane::new("http://127.0.0.1:9", &cloud.gateway_key).unwrap();
        let uploads = lockstock::sealer::Uploads::start(away, Some(spool.clone()));
        uploads.blob(upload).await;
        eventually(10, "the blob to be spooled", || async {
            std::fs::read_dir(&spool)
                .map(|d| d.count() == 1)
                .unwrap_or(false)
        })
        .await;
    }
    let spooled = std::fs::read_dir(&spool)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&spooled).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(cloud.admin().blob(&agent, 1).await.unwrap().is_none());

    let uploads = lockstock::sealer::Uploads::start(cloud.gateway(), Some(spool.clone()));
    eventually(10, "the spooled blob to be shipped", || async {
        cloud.admin().blob(&agent, 1).await.unwrap().is_some()
    })
    .await;
    assert_eq!(
        cloud
            .admin()
            .blob(&agent, 1)
            .await
            .unwrap()
            .unwrap()
            .as_ref(),
        blob.as_slice()
    );
    eventually(5, "the spool to be emptied", || async {
        std::fs::read_dir(&spool).unwrap().count() == 0
    })
    .await;

    // The same uploader, through an outage: spooled, then shipped once the control plane is back.
    let addr = cloud.addr();
    cloud.stop().await;
    uploads
        .blob(BlobUpload {
            agent_id: agent.clone(),
            seq: 2,
            kind: StampKind::Request,
            data: base64::engine::general_purpose::STANDARD.encode(&blob2),
        })
        .await;
    eventually(10, "the second blob to be spooled", || async {
        std::fs::read_dir(&spool).unwrap().count() == 1
    })
    .await;
    cloud.serve(Some(addr)).await;
    eventually(10, "the second spooled blob to be shipped", || async {
        cloud.admin().blob(&agent, 2).await.unwrap().is_some()
    })
    .await;
    eventually(5, "the spool to be emptied again", || async {
        std::fs::read_dir(&spool).unwrap().count() == 0
    })
    .await;
}

#[tokio::test]
async fn a_backlog_of_thousands_of_blobs_ships_in_calls_the_control_plane_accepts() {
    use base64::Engine;
    use lockstock::api::{BlobUpload, MAX_ITEMS_PER_UPLOAD, MAX_STAMPS_PER_APPEND};
    use lockstock::chain::{Head, sign_batch};
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let seed = seed();
    let agent = cloud.agent(&seed, "backlog").await;
    let key = lockstock::agent::signing_key(&seed, &agent);
    let dek = lockstock::seal::Dek::generate(1);

    // More blobs than one call may carry, as a busy gateway queues them when the control
    // plane falls behind.
    let n = MAX_ITEMS_PER_UPLOAD * 3 + 7;
    let mut head = Head::genesis(&agent);
    let mut stamps = Vec::with_capacity(n);
    let mut blobs = Vec::with_capacity(n);
    for seq in 1..=n as u64 {
        let blob = dek
            .seal(
                &agent,
                seq,
                StampKind::Request,
                format!("prompt {seq}").as_bytes(),
            )
            .unwrap();
        let stamp = sealed_request_stamp(&agent, seq, head.hash, &blob);
        head = Head {
            seq,
            hash: stamp.hash(),
        };
        stamps.push(stamp);
        blobs.push(BlobUpload {
            agent_id: agent.clone(),
            seq,
            kind: StampKind::Request,
            data: base64::engine::general_purpose::STANDARD.encode(&blob),
        });
    }
    let gateway = cloud.gateway();
    for batch in stamps.chunks(MAX_STAMPS_PER_APPEND) {
        let signed = sign_batch(batch.to_vec(), &key);
        let resp = gateway.append(&signed).await.unwrap();
        assert!(resp.results.iter().all(|r| r.verdict.appended()));
    }

    let (via, calls) = counting_proxy(cloud.addr(), b"POST /v1/blobs ").await;
    let cp = lockstock::client::ControlPlane::new(&via, &cloud.gateway_key).unwrap();
    let uploads = lockstock::sealer::Uploads::start(cp, None);
    for blob in blobs {
        uploads.blob(blob).await;
    }
    assert!(
        uploads.outstanding().drained(Duration::from_secs(30)).await,
        "{} of {n} blobs still undelivered after 30 s",
        uploads.outstanding().pending()
    );
    assert_eq!(
        uploads.queued_bytes(),
        0,
        "delivered blobs give their room back"
    );
    // A few calls of at most MAX_ITEMS_PER_UPLOAD each: a call the control plane refused for
    // carrying too many would have fallen back to one call per blob, thousands of them.
    let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
    let fewest = n.div_ceil(MAX_ITEMS_PER_UPLOAD);
    assert!(
        (fewest..=2 * fewest).contains(&calls),
        "{n} blobs took {calls} upload calls"
    );
    let admin = cloud.admin();
    let mut stored = 0;
    let mut from = 0;
    loop {
        let page = admin.stamps(&agent, from, 1000).await.unwrap();
        let Some(last) = page.stamps.last() else {
            break;
        };
        from = last.signed.stamp.seq;
        stored += page.stamps.iter().filter(|s| s.has_blob).count();
    }
    assert_eq!(stored, n, "every blob stored");
}

#[tokio::test]
async fn blobs_reach_a_control_plane_that_predates_blobs_travelling_with_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let w = chats_behind(dir.path(), Relay::Older, true, 3).await;
    assert_eq!(w.statuses, [200; 3]);
    assert!(
        w.count > 0,
        "the gateway sent blobs with its stamps, and the older control plane ignored them"
    );
    let page = w.cloud.admin().stamps(&w.agent, 0, 10).await.unwrap();
    assert_eq!(page.stamps.len(), 6);
    assert!(
        page.stamps.iter().all(|s| s.has_blob),
        "every blob was uploaded on its own instead"
    );
}

#[tokio::test]
async fn transcripts_refused_with_their_stamps_follow_them_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let w = chats_behind(dir.path(), Relay::NoBlobs, true, 3).await;
    assert_eq!(w.statuses, [200; 3]);
    assert!(w.count > 0, "the gateway sent blobs with its stamps");
    let page = w.cloud.admin().stamps(&w.agent, 0, 10).await.unwrap();
    assert_eq!(page.stamps.len(), 6);
    assert!(
        page.stamps.iter().all(|s| s.has_blob),
        "every blob was uploaded on its own"
    );
}

#[tokio::test]
async fn no_transcript_is_stored_before_the_data_key_that_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    // A new data key for every transcript, so each one could race its key.
    let every_transcript = |cfg: &mut GatewayConfig| cfg.limits.dek_epoch = Duration::ZERO;
    let after_each = async |cloud: &Cloud, agent: &lockstock::AgentId| {
        let admin = cloud.admin();
        // Keys are only ever added, so reading them after the blobs errs on the safe side.
        let page = admin.stamps(agent, 0, 100).await.unwrap();
        let blobs = page.stamps.iter().filter(|s| s.has_blob).count();
        let keys = admin.keys(agent).await.unwrap().keys.len();
        assert!(blobs > 0, "the request's transcript went with its stamp");
        assert!(
            keys >= blobs,
            "{blobs} transcripts stored, {keys} keys to open them"
        );
    };
    let w = chats_behind_with(
        dir.path(),
        Relay::SlowKeys,
        true,
        3,
        every_transcript,
        after_each,
    )
    .await;
    assert_eq!(w.statuses, [200; 3]);
    assert!(w.count > 0, "key uploads went through the relay");
    let admin = w.cloud.admin();
    let page = admin.stamps(&w.agent, 0, 100).await.unwrap();
    assert_eq!(page.stamps.len(), 6);
    assert!(page.stamps.iter().all(|s| s.has_blob));
    let keys = admin.keys(&w.agent).await.unwrap().keys;
    assert_eq!(keys.len(), 6, "one epoch per transcript");
}

/// A gateway's chats through a relay in front of its control plane, once the gateway stopped.
struct Behind {
    cloud: Cloud,
    upstream: Upstream,
    agent: lockstock::AgentId,
    /// Of each chat completion, in order.
    statuses: Vec<u16>,
    /// The relay's count.
    count: usize,
}

/// Sends `chats` chat completions one after another through a gateway (sealing transcripts
/// when `sealed`) that reaches its control plane through `relay`; the agent has a budget, so
/// every request reserves tokens and every response settles them.
async fn chats_behind(dir: &std::path::Path, relay: Relay, sealed: bool, chats: usize) -> Behind {
    chats_behind_with(dir, relay, sealed, chats, |_| {}, async |_, _| {}).await
}

/// [`chats_behind`], with the gateway's configuration changed by `tweak`, and `after_each`
/// run after each chat.
async fn chats_behind_with(
    dir: &std::path::Path,
    relay: Relay,
    sealed: bool,
    chats: usize,
    tweak: impl FnOnce(&mut GatewayConfig),
    after_each: impl AsyncFn(&Cloud, &lockstock::AgentId),
) -> Behind {
    let cloud = Cloud::start(dir).await;
    let upstream = Upstream::start().await;
    let seed = seed();
    let agent = cloud.agent(&seed, "behind-a-relay").await;
    cloud
        .admin()
        .set_budget(&agent, Some(1_000_000))
        .await
        .unwrap();
    let account = lockstock::seal::AccountKey::generate();
    let (url, count) = relay_control_plane(cloud.url.clone(), relay).await;
    let mut cfg = gateway_config(
        &cloud,
        &upstream.url(),
        &seed,
        &[&agent],
        sealed.then(|| account.public_key()),
    );
    cfg.control_plane_url = url;
    tweak(&mut cfg);
    let mut gw = Gateway::start(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..chats {
        let r = Http::default()
            .post(
                &format!("{}/v1/chat/completions", gw.url),
                &[("x-d3cipher-agent", agent.as_str())],
                OPENAI_CHAT.as_bytes(),
            )
            .await;
        statuses.push(r.status);
        after_each(&cloud, &agent).await;
    }
    gw.stop().await;
    Behind {
        cloud,
        upstream,
        agent,
        statuses,
        count: count.load(std::sync::atomic::Ordering::SeqCst),
    }
}

/// Sends one chat per agent at once, `rounds` times, through a gateway that serves them all
/// behind `relay`; returns each round's statuses (by agent), the relay's count, and the
/// control plane.
async fn crowd(
    dir: &std::path::Path,
    relay: Relay,
    agents: usize,
    rounds: usize,
    before: impl AsyncFn(&Cloud, &[lockstock::AgentId]),
) -> (Vec<Vec<u16>>, usize, Cloud, Vec<lockstock::AgentId>) {
    let cloud = Cloud::start(dir).await;
    let upstream = Upstream::start().await;
    let seed = seed();
    let mut ids = Vec::new();
    for i in 0..agents {
        ids.push(cloud.agent(&seed, &format!("crowd-{i}")).await);
    }
    before(&cloud, &ids).await;
    let (url, count) = relay_control_plane(cloud.url.clone(), relay).await;
    let mut cfg = gateway_config(
        &cloud,
        &upstream.url(),
        &seed,
        &ids.iter().collect::<Vec<_>>(),
        None,
    );
    cfg.control_plane_url = url;
    let mut gw = Gateway::start(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..rounds {
        let chats: Vec<_> = ids
            .iter()
            .map(|agent| {
                let (url, agent) = (gw.url.clone(), agent.clone());
                tokio::spawn(async move {
                    Http::default()
                        .post(
                            &format!("{url}/v1/chat/completions"),
                            &[("x-d3cipher-agent", agent.as_str())],
                            OPENAI_CHAT.as_bytes(),
                        )
                        .await
                        .status
                })
            })
            .collect();
        let mut round = Vec::new();
        for chat in chats {
            round.push(chat.await.unwrap());
        }
        statuses.push(round);
    }
    gw.stop().await;
    let count = count.load(std::sync::atomic::Ordering::SeqCst);
    (statuses, count, cloud, ids)
}

/// Agents whose batches are ready at the same time share one call to the control plane, and
/// each gets its own verdicts back from it: a locked agent among them is refused, the others
/// are not.
#[tokio::test]
async fn agents_ready_together_share_a_stamp_call_and_each_gets_its_own_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let (statuses, mixed, cloud, agents) = crowd(
        dir.path(),
        Relay::Mixed { refuse: false },
        4,
        5,
        async |cloud, agents| {
            cloud
                .admin()
                .lock(&agents[2], Some("one of the crowd is stopped".into()))
                .await
                .unwrap();
        },
    )
    .await;
    for round in &statuses {
        assert_eq!(round, &[200, 200, 429, 200]);
    }
    assert!(
        mixed > 0,
        "no call carried the stamps of more than one agent"
    );
    for (i, agent) in agents.iter().enumerate() {
        let info = cloud.admin().agent(agent).await.unwrap();
        let per_chat = if i == 2 { 1 } else { 2 };
        assert_eq!(
            info.seq,
            per_chat * 5,
            "{agent}: stamps of its own chats only"
        );
        assert_eq!(info.reserved, 0, "{agent}: every reservation settled");
    }
}

/// A merged call the control plane refuses goes again as one call per agent, so no agent's
/// stamps are lost or refused for a neighbour's.
#[tokio::test]
async fn a_refused_merged_stamp_call_goes_again_one_agent_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (statuses, refused, cloud, agents) = crowd(
        dir.path(),
        Relay::Mixed { refuse: true },
        4,
        5,
        async |_, _| {},
    )
    .await;
    for round in &statuses {
        assert_eq!(round, &[200; 4]);
    }
    assert!(
        refused > 0,
        "no call carried the stamps of more than one agent"
    );
    for agent in &agents {
        let info = cloud.admin().agent(agent).await.unwrap();
        assert_eq!(
            info.seq, 10,
            "{agent}: a request and a response stamp per chat"
        );
        assert_eq!(info.reserved, 0, "{agent}: every reservation settled");
    }
}

#[tokio::test]
async fn a_batch_the_control_plane_refuses_is_dropped_and_the_chain_goes_on_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let w = chats_behind(dir.path(), Relay::RefuseFirst, false, 4).await;
    assert_eq!(
        w.statuses,
        [503, 200, 200, 200],
        "refused with its batch, then not stuck behind it"
    );
    assert_eq!(w.count, 1);
    assert_eq!(
        w.upstream.requests().len(),
        3,
        "a request without a recorded stamp is not forwarded"
    );
    let page = w.cloud.admin().stamps(&w.agent, 0, 10).await.unwrap();
    let seqs: Vec<u64> = page.stamps.iter().map(|s| s.signed.stamp.seq).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6],
        "the refused seqs were reused, nothing else"
    );
    for pair in page.stamps.chunks(2) {
        assert_eq!(pair[0].signed.stamp.kind, StampKind::Request);
        assert_eq!(pair[1].signed.stamp.kind, StampKind::Response);
        assert_eq!(pair[1].signed.stamp.ref_seq, pair[0].signed.stamp.seq);
        assert_eq!(pair[1].signed.stamp.flags & flags::NOT_FORWARDED, 0);
    }
    let info = w.cloud.admin().agent(&w.agent).await.unwrap();
    assert_eq!(info.seq, 6);
}

#[tokio::test]
async fn response_stamps_in_a_refused_batch_go_again_so_their_requests_still_settle() {
    // Sealed, the batch is refused twice: with its transcripts, then without them.
    for (sealed, refusals) in [(false, 1), (true, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let w = chats_behind(dir.path(), Relay::RefuseSettling(refusals), sealed, 4).await;
        assert_eq!(w.count, refusals);
        every_forwarded_request_settled(&w, sealed).await;
    }
}

/// Every request `w` forwarded has its response stamp, with the fixture's tokens (and its
/// transcript, when `sealed`), and no reservation is left; a request stamp that rode in a
/// refused batch was refused with it (503, not forwarded).
async fn every_forwarded_request_settled(w: &Behind, sealed: bool) {
    assert_eq!(w.statuses[0], 200);
    assert!(
        w.statuses.iter().filter(|s| **s == 503).count() <= 1,
        "{:?}",
        w.statuses
    );
    let forwarded = w.upstream.requests().len();
    assert_eq!(
        forwarded,
        w.statuses.iter().filter(|s| **s == 200).count(),
        "{:?}",
        w.statuses
    );
    let page = w.cloud.admin().stamps(&w.agent, 0, 20).await.unwrap();
    let kinds: Vec<StampKind> = page.stamps.iter().map(|s| s.signed.stamp.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == StampKind::Response).count(),
        forwarded,
        "every forwarded request has its response stamp: {kinds:?}"
    );
    let answer: serde_json::Value = serde_json::from_slice(&fixture("openai-chat").0).unwrap();
    let usage = &answer["usage"];
    for response in page
        .stamps
        .iter()
        .filter(|s| s.signed.stamp.kind == StampKind::Response)
    {
        let s = &response.signed.stamp;
        let request = page
            .stamps
            .iter()
            .find(|r| r.signed.stamp.seq == s.ref_seq)
            .expect("a response settles a request in the ledger");
        assert_eq!(request.signed.stamp.kind, StampKind::Request);
        assert_eq!(
            (s.tokens_in, s.tokens_out),
            (
                usage["prompt_tokens"].as_u64().unwrap(),
                usage["completion_tokens"].as_u64().unwrap()
            )
        );
    }
    let info = w.cloud.admin().agent(&w.agent).await.unwrap();
    assert_eq!(
        (info.used, info.reserved),
        (
            forwarded as u64 * usage["total_tokens"].as_u64().unwrap(),
            0
        ),
        "every reservation settled to what was used, none left to expire"
    );
    assert!(
        !sealed || page.stamps.iter().all(|s| s.has_blob),
        "every transcript stored, the resent response's too"
    );
}

/// What a relay in front of the control plane does to appends (`POST /v1/stamps`).
#[derive(Clone, Copy, PartialEq)]
enum Relay {
    /// Behaves like a control plane from before blobs travelled with stamps: drops `blobs`
    /// from appends and `blobs_stored` from the answers. Counts the blobs it dropped.
    Older,
    /// Behaves like a proxy with a small body limit: 413 to every append that carries blobs.
    /// Counts the appends it refused.
    NoBlobs,
    /// Answers the first append with 400, and the same bytes again whenever they come back, as
    /// a control plane does to a call it cannot accept; forwards the rest. Counts the appends
    /// it refused.
    RefuseFirst,
    /// Answers 400 to the first this many appends that carry a response stamp; forwards the
    /// rest. Counts the appends it refused.
    RefuseSettling(usize),
    /// Holds every upload of wrapped data keys (`POST /v1/keys`) for [`KEY_DELAY`] before
    /// forwarding it. Counts those uploads.
    SlowKeys,
    /// Counts the appends that carry stamps of more than one agent; with `refuse`, answers them
    /// 400, as a control plane would to a call one of whose batches it cannot accept.
    Mixed { refuse: bool },
}

const KEY_DELAY: Duration = Duration::from_millis(300);

/// How an append's JSON marks a response stamp.
const SETTLING: &[u8] = b"\"kind\":\"response\"";

/// Starts a relay to the control plane at `target`; returns its URL and its count.
async fn relay_control_plane(
    target: String,
    relay: Relay,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let http = std::sync::Arc::new(Http::default());
    let refused_body = std::sync::Arc::new(std::sync::OnceLock::<Vec<u8>>::new());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (target, counter, http, refused_body) = (
                target.clone(),
                counter.clone(),
                http.clone(),
                refused_body.clone(),
            );
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (target, counter, http, refused_body) = (
                            target.clone(),
                            counter.clone(),
                            http.clone(),
                            refused_body.clone(),
                        );
                        async move {
                            let (parts, body) = req.into_parts();
                            let mut body = http_body_util::BodyExt::collect(body)
                                .await
                                .unwrap()
                                .to_bytes()
                                .to_vec();
                            let path = parts.uri.path().to_owned();
                            let appending =
                                parts.method == http::Method::POST && path == "/v1/stamps";
                            let answer = |status: u16, message: &str| {
                                let body = serde_json::json!({"error": {"message": message}});
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .header(http::header::CONTENT_TYPE, "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(
                                            body.to_string(),
                                        )))
                                        .unwrap(),
                                )
                            };
                            if appending {
                                let mut v: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap();
                                let blobs = v.get("blobs").and_then(|b| b.as_array()).map(Vec::len);
                                match relay {
                                    Relay::Older => {
                                        if let Some(n) = blobs {
                                            v.as_object_mut().unwrap().remove("blobs");
                                            counter.fetch_add(n, Ordering::SeqCst);
                                        }
                                        body = serde_json::to_vec(&v).unwrap();
                                    }
                                    Relay::NoBlobs if blobs.is_some() => {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                        return answer(413, "request body too large");
                                    }
                                    Relay::RefuseFirst
                                        if *refused_body.get_or_init(|| body.clone()) == body =>
                                    {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                        return answer(400, "this call cannot be accepted");
                                    }
                                    Relay::Mixed { refuse }
                                        if v["stamps"]
                                            .as_array()
                                            .unwrap()
                                            .iter()
                                            .map(|s| s["agent_id"].as_str().unwrap())
                                            .collect::<std::collections::HashSet<_>>()
                                            .len()
                                            > 1 =>
                                    {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                        if refuse {
                                            return answer(400, "this call cannot be accepted");
                                        }
                                    }
                                    Relay::RefuseSettling(n)
                                        if body.windows(SETTLING.len()).any(|w| w == SETTLING)
                                            && counter.load(Ordering::SeqCst) < n =>
                                    {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                        return answer(400, "this call cannot be accepted");
                                    }
                                    _ => {}
                                }
                            }
                            if relay == Relay::SlowKeys && path == "/v1/keys" {
                                counter.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(KEY_DELAY).await;
                            }
                            let headers: Vec<(String, String)> = parts
                                .headers
                                .iter()
                                .filter(|(k, _)| {
                                    *k == http::header::AUTHORIZATION
                                        || *k == http::header::CONTENT_TYPE
                                })
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                                .collect();
                            let headers: Vec<(&str, &str)> = headers
                                .iter()
                                .map(|(k, v)| (k.as_str(), v.as_str()))
                                .collect();
                            let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                            let reply = http
                                .send(
                                    parts.method.as_str(),
                                    &format!("{target}{uri}"),
                                    &headers,
                                    &body,
                                )
                                .await;
                            let mut out = reply.body.to_vec();
                            if appending && relay == Relay::Older && reply.status == 200 {
                                let mut v: serde_json::Value =
                                    serde_json::from_slice(&out).unwrap();
                                v.as_object_mut().unwrap().remove("blobs_stored");
                                out = serde_json::to_vec(&v).unwrap();
                            }
                            let resp = http::Response::builder()
                                .status(reply.status)
                                .header(http::header::CONTENT_TYPE, "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(out)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (url, count)
}

/// A TCP relay to `target` that counts how often `needle` (a request line) passes from the
/// client to the server.
async fn counting_proxy(
    target: std::net::SocketAddr,
    needle: &'static [u8],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let counter = counter.clone();
            tokio::spawn(async move {
                // The last bytes of the previous read, so a needle split across reads counts.
                let mut seen: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = client_rx.read(&mut buf).await {
                    if n == 0 || server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let keep = seen.len().min(needle.len() - 1);
                    seen.drain(..seen.len() - keep);
                    seen.extend_from_slice(&buf[..n]);
                    let found = seen.windows(needle.len()).filter(|w| *w == needle).count();
                    counter.fetch_add(found, Ordering::SeqCst);
                }
                let _ = server_tx.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            });
        }
    });
    (url, count)
}

/// A request stamp at `seq` that commits to `blob`.
fn sealed_request_stamp(
    agent: &lockstock::AgentId,
    seq: u64,
    prev_hash: lockstock::chain::Hash32,
    blob: &[u8],
) -> lockstock::chain::Stamp {
    lockstock::chain::Stamp {
        version: lockstock::chain::STAMP_VERSION,
        agent_id: agent.clone(),
        seq,
        prev_hash,
        kind: StampKind::Request,
        time_ms: seq,
        model: "m".into(),
        tokens_in: 1,
        tokens_out: 1,
        ref_seq: 0,
        flags: 0,
        status: 0,
        blob_hash: Some(lockstock::chain::Hash32::of(blob)),
    }
}
