//! The admin tools end to end: traffic through a real gateway (started by the real
//! `lockstock-gateway` CLI, or in-process where a test needs short data-key epochs), a real
//! control plane on a real SQLite file, then the real `lockstock-audit` and
//! `lockstock-rotate` binaries with keys in a real Liberty vault.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use lockstock::AgentId;
use lockstock::secret::ExposeSecret;
use serde_json::Value;
use support::procs::{GatewayProcess, Sandbox, sdk_many};
use support::*;

const AUDIT: &str = "lockstock-audit";
const ROTATE: &str = "lockstock-rotate";

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

struct World {
    sb: Sandbox,
    cloud: Cloud,
    upstream: Upstream,
    gw: GatewayProcess,
    /// `audit` and `other`, provisioned by the CLI.
    agents: Vec<AgentId>,
    /// The account key (hex), or empty when the gateway started without one.
    account: String,
}

/// Control plane, upstream, a vault with the keys, two agents, and a native gateway. With
/// `sealed`, the account key is made before the gateway starts (transcripts are sealed);
/// without, after (the gateway runs without one, and the admin tools still have a key).
async fn world(sealed: bool) -> World {
    let sb = Sandbox::new();
    let cloud = Cloud::start(sb.path()).await;
    let upstream = Upstream::start().await;
    sb.vault(&[
        ("LOCKSTOCK_API_KEY", cloud.admin_key.expose_secret()),
        ("LOCKSTOCK_GATEWAY_KEY", cloud.gateway_key.expose_secret()),
        ("LOCKSTOCK_URL", &cloud.url),
        ("LOCKSTOCK_UPSTREAM_URL", &upstream.url()),
    ]);
    for name in ["audit", "other"] {
        sb.ok("lockstock-gateway", &["provision", "--name", name], None);
    }
    let init = |sb: &Sandbox| {
        sb.ok("lockstock-gateway", &["account", "init"], None)
            .trim()
            .to_owned()
    };
    let mut account = String::new();
    if sealed {
        account = init(&sb);
    }
    let gw = sb.gateway(&[]).await;
    if !sealed {
        account = init(&sb);
    }
    let agents = ["LOCKSTOCK_AGENT_AUDIT", "LOCKSTOCK_AGENT_OTHER"]
        .iter()
        .map(|n| sb.ok("liberty", &["show", n], None).trim().parse().unwrap())
        .collect();
    World {
        sb,
        cloud,
        upstream,
        gw,
        agents,
        account,
    }
}

impl World {
    /// Sends the recorded request body of `fixture` (byte for byte) and has the upstream
    /// answer with that recording; returns the body sent.
    async fn send(&self, agent: &AgentId, path: &str, fixture_name: &str) -> Vec<u8> {
        let body = fixture(&format!("{fixture_name}.request")).0;
        let reply = Http::default()
            .post(
                &format!("{}{path}", self.gw.url),
                &[
                    ("x-d3cipher-agent", agent.as_str()),
                    ("x-fixture", fixture_name),
                ],
                &body,
            )
            .await;
        assert_eq!(reply.status, 200, "{fixture_name}: {}", reply.text());
        body
    }

    async fn stamps(&self, agent: &AgentId) -> Vec<lockstock::api::StampRecord> {
        self.cloud
            .admin()
            .stamps(agent, 0, 1000)
            .await
            .unwrap()
            .stamps
    }

    /// Waits for `n` stamps, every one with its blob when `blobs`.
    async fn settled(&self, agent: &AgentId, n: usize, blobs: bool) {
        eventually(15, "stamps and blobs", || async {
            let s = self.stamps(agent).await;
            s.len() == n && (!blobs || s.iter().all(|r| r.has_blob))
        })
        .await;
    }

    fn audit(&self, args: &[&str]) -> Output {
        self.sb.run(AUDIT, args, None)
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.cloud.data_dir.join("ledger.db")).unwrap()
    }

    /// Stops the control plane, runs `f` on its SQLite file, and serves it again where the
    /// gateway expects it.
    async fn with_db_offline(&mut self, f: impl FnOnce(&rusqlite::Connection)) {
        let addr = self.cloud.addr();
        self.cloud.stop().await;
        f(&self.db());
        self.cloud.serve(Some(addr)).await;
    }
}

fn flip_blob(db: &rusqlite::Connection, agent: &AgentId, seq: u64) {
    let (row, mut data): (i64, Vec<u8>) = db
        .query_row(
            "SELECT b.agent, b.data FROM blobs b JOIN agents a ON a.id = b.agent \
             WHERE a.agent_id = ?1 AND b.seq = ?2",
            rusqlite::params![agent.as_str(), seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    db.execute(
        "UPDATE blobs SET data = ?1 WHERE agent = ?2 AND seq = ?3",
        rusqlite::params![data, row, seq as i64],
    )
    .unwrap();
}

/// What a recorded answer says, read independently of the tool's parser.
fn recorded_reply_text(name: &str) -> String {
    let (bytes, ext) = fixture(name);
    if ext == "json" {
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        if let Some(t) = v["choices"][0]["message"]["content"].as_str() {
            return t.to_owned();
        }
        return v["content"][0]["text"].as_str().unwrap().to_owned();
    }
    let mut out = String::new();
    for line in String::from_utf8(bytes).unwrap().lines() {
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(d) else {
            continue;
        };
        for t in [
            &v["choices"][0]["delta"]["content"],
            &v["delta"]["text"],
            &v["delta"],
        ] {
            if let Some(s) = t.as_str().filter(|_| {
                v["type"].as_str().is_none_or(|ty| {
                    ty == "content_block_delta" || ty == "response.output_text.delta"
                })
            }) {
                out.push_str(s);
            }
        }
    }
    out
}

fn assert_lines_in(haystack: &str, needle: &str, what: &str) {
    for line in needle.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            haystack.contains(line),
            "{what}: {line:?} not in the output:\n{haystack}"
        );
    }
}

const CASES: &[(&str, &str)] = &[
    ("/v1/chat/completions", "openai-chat"),
    ("/v1/chat/completions", "openai-chat-stream"),
    ("/v1/chat/completions", "openai-chat-stream-usage"),
    ("/v1/messages", "anthropic-messages"),
    ("/v1/messages", "anthropic-messages-stream"),
    ("/v1/responses", "openai-responses-stream"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_prints_exactly_the_prompts_and_answers_that_went_through_the_gateway() {
    let w = world(true).await;
    let agent = &w.agents[0];
    let mut sent = Vec::new();
    for (path, name) in CASES {
        sent.push(w.send(agent, path, name).await);
    }
    w.settled(agent, 2 * CASES.len(), true).await;

    // JSON: one object per exchange, bodies byte for byte.
    let out = w.audit(&["--agent-id", agent.as_str(), "--format", "json"]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let ex = json_lines(&out);
    assert_eq!(ex.len(), CASES.len());
    for (i, ((_, name), body)) in CASES.iter().zip(&sent).enumerate() {
        let (req, resp) = (&ex[i]["request"], &ex[i]["response"]);
        assert_eq!(req["blob"], "decrypted", "{name}: {req}");
        assert_eq!(
            req["body"].as_str().unwrap().as_bytes(),
            body.as_slice(),
            "{name} request"
        );
        assert_eq!(resp["blob"], "decrypted", "{name}: {resp}");
        assert_eq!(
            resp["body"].as_str().unwrap().as_bytes(),
            fixture(name).0.as_slice(),
            "{name} response"
        );
        assert_eq!(resp["ref_seq"], req["seq"]);
        assert_eq!(resp["status"], 200);
        assert_eq!(req["verdict"], "ok");
        assert!(resp["tokens_out"].as_u64().unwrap() > 0, "{name}: {resp}");
        assert_eq!(req["estimated"], true);
        let reply_text: String = resp["reply"]["messages"][0]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["text"].as_str().filter(|_| p["type"] == "text"))
            .collect();
        assert_eq!(reply_text, recorded_reply_text(name), "{name} reassembled");
    }
    assert_eq!(ex[0]["request"]["model"], "gpt-4o");
    assert_eq!(ex[3]["request"]["model"], "claude-3-5-haiku-latest");

    // Text: the prompts and the (reassembled) answers, readable.
    let out = w.audit(&["--agent-id", "audit"]);
    let (shown, err) = text(&out);
    assert!(out.status.success(), "{err}");
    for (_, name) in CASES {
        assert_lines_in(&shown, &recorded_reply_text(name), name);
    }
    for prompt in [
        "user: What is 4200 + 42?",
        "user: Hello!",
        "system: You are a helpful assistant. Be concise and to the point.",
        "user: Are you capable of describing an image?",
        "user: Two names for a pet pelican, be brief",
        "user: What is 2+2?",
    ] {
        assert!(shown.contains(prompt), "{prompt:?} not in:\n{shown}");
    }
    assert_eq!(shown.matches("=== seq ").count(), CASES.len(), "{shown}");
    assert!(shown.contains("(streamed, stop: end_turn)"), "{shown}");

    // Time window: everything is before now + 1h, nothing after it.
    let out = w.audit(&["--agent-id", "audit", "--format", "json", "--since", "1h"]);
    assert_eq!(json_lines(&out).len(), CASES.len());
    let later = format!("@{}", lockstock_cli::admin::timefmt::now_ms() / 1000 + 3600);
    let out = w.audit(&["--agent-id", "audit", "--format", "json", "--since", &later]);
    assert!(out.status.success() && out.stdout.is_empty());
    let out = w.audit(&["--agent-id", "audit", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("RFC 3339"), "{}", text(&out).1);

    // Nothing was sent back: the ledger is exactly as before.
    assert_eq!(w.stamps(agent).await.len(), 2 * CASES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traffic_is_read_back_as_the_upstream_received_it() {
    let w = world(true).await;
    let agent = &w.agents[0];
    let cases = [
        "openai_chat",
        "openai_stream_usage",
        "anthropic_messages",
        "anthropic_stream",
    ];
    sdk_many(&cases, &w.gw.url, Some(agent.as_str())).await;
    w.settled(agent, 2 * cases.len(), true).await;
    let received = w.upstream.requests();
    assert_eq!(received.len(), cases.len());

    let out = w.audit(&["--agent-id", agent.as_str(), "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let ex = json_lines(&out);
    assert_eq!(ex.len(), cases.len());
    for (e, got) in ex.iter().zip(&received) {
        // No budget, usage asked for already: the gateway forwarded the body unchanged.
        assert_eq!(
            e["request"]["body"].as_str().unwrap().as_bytes(),
            got.body.as_ref()
        );
        let name = got.headers["x-fixture"].to_str().unwrap();
        assert_eq!(
            e["response"]["body"].as_str().unwrap().as_bytes(),
            fixture(name).0.as_slice(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_account_key_is_refused_before_anything_is_printed() {
    let w = world(true).await;
    let agent = &w.agents[0];
    w.send(agent, "/v1/chat/completions", "openai-chat").await;
    w.settled(agent, 2, true).await;
    let wrong = lockstock::seal::AccountKey::generate().to_hex();

    let out = w.audit(&["--agent-id", "audit", "--account-key", &wrong]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.is_empty(), "partial output: {stdout}");
    assert!(stderr.contains("refusing"), "{stderr}");
    assert!(stderr.contains("nothing was decrypted"), "{stderr}");
    assert!(
        stderr.contains("visible to other users"),
        "argv warning: {stderr}"
    );
    assert!(
        !stderr.contains(wrong.as_str()),
        "the key is echoed: {stderr}"
    );

    // The same from the environment (no argv warning), in JSON mode.
    let mut sb_cmd = w.sb.command(support::procs::bin(AUDIT));
    let out = sb_cmd
        .args(["--agent-id", "audit", "--format", "json"])
        .env("LOCKSTOCK_ACCOUNT_KEY", wrong.as_str())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(!text(&out).1.contains("visible to other users"));

    // The right key by flag works (with the warning), and so does Liberty's.
    let out = w.audit(&["--agent-id", "audit", "--account-key", &w.account]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).1.contains("visible to other users"));
    assert!(w.audit(&["--agent-id", "audit"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_by_verify_and_refused_entry_by_entry_by_audit() {
    let mut w = world(true).await;
    let (agent, other) = (w.agents[0].clone(), w.agents[1].clone());
    for _ in 0..3 {
        w.send(&agent, "/v1/chat/completions", "openai-chat").await;
    }
    w.send(&other, "/v1/messages", "anthropic-messages").await;
    w.settled(&agent, 6, true).await;
    w.settled(&other, 2, true).await;

    let out = w.audit(&["verify", "--all"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches(": ok: ").count(), 2, "{stdout}");
    assert!(stdout.contains("1 data keys opened"), "{stdout}");

    // An out-of-band copy of the agent's public key: the right one verifies, another does not.
    let public = w
        .cloud
        .admin()
        .agent(&agent)
        .await
        .unwrap()
        .public_key
        .unwrap();
    let out = w.audit(&[
        "verify",
        "--agent-id",
        agent.as_str(),
        "--public-key",
        &public,
    ]);
    assert!(out.status.success(), "{}", text(&out).0);
    let stranger = hex::encode(
        lockstock::agent::signing_key(&seed(), &agent)
            .verifying_key()
            .to_bytes(),
    );
    let out = w.audit(&[
        "verify",
        "--agent-id",
        agent.as_str(),
        "--public-key",
        &stranger,
    ]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("differs from the one given"), "{stdout}");
    assert!(
        stdout.contains("seq 1: signature does not verify"),
        "{stdout}"
    );

    // A batch carries one signature, on its last stamp. An answer's stamp (seq 2) rides in the
    // next request's batch when that request comes within the gateway's linger (2 ms, the
    // usual case here); then seq 3's signature is the one that vouches for it.
    let mut seq2_signed = true;
    w.with_db_offline(|db| {
        seq2_signed = db
            .query_row(
                "SELECT length(signature) > 0 FROM stamps \
                 WHERE seq = 2 AND agent = (SELECT id FROM agents WHERE agent_id = ?1)",
                [agent.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        // A stamp (seq 3, the second request), a blob (seq 4, its answer, whose stamp is
        // intact and covered by seq 4 or 5) and the other agent's wrapped data key each get
        // one bit flipped.
        flip_blob(db, &agent, 4);
        db.execute(
            "UPDATE stamps SET tokens_in = (tokens_in | 1) - (tokens_in & 1) \
             WHERE seq = 3 AND agent = (SELECT id FROM agents WHERE agent_id = ?1)",
            [agent.as_str()],
        )
        .unwrap();
        let mut wrapped: Vec<u8> = db
            .query_row(
                "SELECT wrapped FROM wrapped_keys WHERE agent = (SELECT id FROM agents WHERE agent_id = ?1)",
                [other.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        wrapped[40] ^= 0x80;
        db.execute(
            "UPDATE wrapped_keys SET wrapped = ?1 WHERE agent = (SELECT id FROM agents WHERE agent_id = ?2)",
            rusqlite::params![wrapped, other.as_str()],
        )
        .unwrap();
    })
    .await;

    let out = w.audit(&["verify", "--agent-id", agent.as_str()]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&format!("{agent}: seq 4: blob hash mismatch (the stored blob is not the one its stamp commits to)").as_str()),
        "{stdout}"
    );
    assert!(
        lines.contains(&format!("{agent}: seq 3: signature does not verify").as_str()),
        "{stdout}"
    );
    assert!(
        lines.contains(
            &format!("{agent}: seq 3: the recorded hash does not match the stamp's contents")
                .as_str()
        ),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("seq 4:").count(),
        1,
        "seq 4 still links to seq 3: {stdout}"
    );
    // Unsigned, seq 2 lost its cover with seq 3's contents.
    let uncovered = format!("{agent}: seq 2: it is unsigned and no valid signature covers it");
    assert_eq!(
        !seq2_signed,
        lines.iter().any(|l| l.starts_with(&uncovered)),
        "{stdout}"
    );
    assert_eq!(stdout.contains("seq 2:"), !seq2_signed, "{stdout}");
    let problems = if seq2_signed { 3 } else { 4 };
    assert!(
        stdout.contains(&format!("FAILED: {problems} problem(s) in 6 stamps")),
        "{stdout}"
    );

    let out = w.audit(&["verify", "--agent-id", "other"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("does not open with the account key: the wrapped key was altered"),
        "{stdout}"
    );
    assert!(w.audit(&["verify", "--all"]).status.code() == Some(1));

    // A rotation cannot re-wrap a data key that does not open: it stops before changing anything.
    let keys_before = w.cloud.admin().keys(&agent).await.unwrap().keys;
    let out = w.sb.run(ROTATE, &["--generate"], None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("do not open with the old key"), "{stderr}");
    assert!(stderr.contains("nothing was lost"), "{stderr}");
    assert_eq!(
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_KEY"], None)
            .trim(),
        w.account
    );
    let account = w.cloud.admin().account().await.unwrap();
    let old_id = lockstock::seal::AccountKey::from_hex(&w.account)
        .unwrap()
        .public_key()
        .key_id();
    assert_eq!(account.key_id.as_deref(), Some(old_id.as_str()));
    assert_eq!(
        w.cloud.admin().keys(&agent).await.unwrap().keys,
        keys_before,
        "nothing uploaded"
    );

    // Audit refuses exactly the damaged entries, says why, and shows the rest.
    let out = w.audit(&["--agent-id", agent.as_str(), "--format", "json"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    let ex = json_lines(&out);
    assert_eq!(ex.len(), 3);
    assert_eq!(ex[0]["request"]["blob"], "decrypted");
    if seq2_signed {
        assert_eq!(ex[0]["response"]["blob"], "decrypted");
    } else {
        assert_eq!(ex[0]["response"]["blob"], "refused");
        assert!(
            ex[0]["response"]["reason"]
                .as_str()
                .unwrap()
                .contains("no valid signature covers it")
        );
    }
    assert_eq!(ex[1]["request"]["blob"], "refused");
    assert!(
        ex[1]["request"]["reason"]
            .as_str()
            .unwrap()
            .contains("signature does not verify")
    );
    assert_eq!(ex[1]["response"]["blob"], "refused");
    assert!(
        ex[1]["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("blob hash mismatch")
    );
    assert_eq!(ex[2]["request"]["blob"], "decrypted");
    assert_eq!(ex[2]["response"]["blob"], "decrypted");
    assert_eq!(
        ex[2]["response"]["body"].as_str().unwrap().as_bytes(),
        fixture("openai-chat").0.as_slice()
    );
    assert_eq!(
        stderr.contains("seq 2: refused: its stamp does not verify"),
        !seq2_signed,
        "{stderr}"
    );
    assert!(
        stderr.contains("seq 4: refused: blob hash mismatch"),
        "{stderr}"
    );
    assert!(
        stderr.contains("seq 3: refused: its stamp does not verify"),
        "{stderr}"
    );

    let out = w.audit(&["--agent-id", "other"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout.matches("the wrapped key was altered").count(),
        2,
        "{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_never_sealed_or_not_uploaded_show_as_not_available() {
    // Sealed world: one blob goes missing.
    let mut w = world(true).await;
    let agent = w.agents[0].clone();
    w.send(&agent, "/v1/chat/completions", "openai-chat").await;
    w.settled(&agent, 2, true).await;
    w.with_db_offline(|db| {
        db.execute(
            "DELETE FROM blobs WHERE seq = 2 AND agent = (SELECT id FROM agents WHERE agent_id = ?1)",
            [agent.as_str()],
        )
        .unwrap();
    })
    .await;
    let out = w.audit(&["--agent-id", "audit"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("user: What is 4200 + 42?"), "{stdout}");
    assert!(
        stdout.contains("blob not available: the stamp commits to a blob the control plane does not have (not uploaded yet, or lost)"),
        "{stdout}"
    );
    let out = w.audit(&["verify", "--agent-id", "audit"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("note: seq 2: blob not available"),
        "{stdout}"
    );

    // A gateway without an account key seals nothing.
    let w = world(false).await;
    let agent = w.agents[0].clone();
    w.send(&agent, "/v1/messages", "anthropic-messages").await;
    w.settled(&agent, 2, false).await;
    assert!(
        w.stamps(&agent)
            .await
            .iter()
            .all(|s| s.signed.stamp.blob_hash.is_none())
    );
    let out = w.audit(&["--agent-id", "audit", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let ex = json_lines(&out);
    assert_eq!(ex.len(), 1);
    for side in ["request", "response"] {
        assert_eq!(ex[0][side]["blob"], "unavailable");
        assert!(
            ex[0][side]["reason"]
                .as_str()
                .unwrap()
                .contains("blob not available: the gateway ran without an account key"),
            "{}",
            ex[0][side]
        );
    }
    assert!(w.audit(&["verify", "--all"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_shows_new_exchanges_as_they_are_stamped() {
    use std::io::BufRead;
    let w = world(true).await;
    let other = w.agents[1].clone();
    let mut child =
        w.sb.command(support::procs::bin(AUDIT))
            .args([
                "--agent-id",
                "other",
                "--format",
                "json",
                "--follow",
                "--poll-ms",
                "100",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "nothing to show yet");
    let sent = w
        .send(&other, "/v1/messages", "anthropic-messages-stream")
        .await;
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the exchange is shown while following");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["request"]["body"].as_str().unwrap().as_bytes(),
        sent.as_slice()
    );
    assert_eq!(
        v["response"]["body"].as_str().unwrap().as_bytes(),
        fixture("anthropic-messages-stream").0.as_slice()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// An in-process gateway that starts a new data-key epoch for every blob, so a few requests
/// make many wrapped keys to rotate.
async fn short_epoch_gateway(w: &World, public: &str) -> Gateway {
    let seed_hex = w.sb.ok("liberty", &["show", "MLS_SEED"], None);
    let seed = lockstock::secret::key_from_hex(seed_hex.trim()).unwrap();
    let agents: Vec<&AgentId> = w.agents.iter().collect();
    let mut cfg = gateway_config(
        &w.cloud,
        &w.upstream.url(),
        &seed,
        &agents,
        Some(lockstock::seal::AccountPublicKey::from_hex(public).unwrap()),
    );
    cfg.limits.dek_epoch = Duration::ZERO;
    Gateway::start(cfg).await
}

async fn chat_via(gw: &Gateway, agent: &AgentId) {
    let r = Http::default()
        .post(
            &format!("{}/v1/chat/completions", gw.url),
            &[("x-d3cipher-agent", agent.as_str())],
            &fixture("openai-chat.request").0,
        )
        .await;
    assert_eq!(r.status, 200);
}

fn bodies(o: &Output) -> Vec<(String, String)> {
    assert!(o.status.success(), "{}", text(o).1);
    json_lines(o)
        .iter()
        .map(|e| {
            (
                e["request"]["body"].as_str().unwrap().to_owned(),
                e["response"]["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_interrupted_halfway_resumes_and_everything_stays_readable() {
    let mut w = world(true).await;
    // The native gateway's epochs are an hour long; this one's last a single blob.
    w.gw.terminate();
    let old_public =
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_PUBLIC_KEY"], None)
            .trim()
            .to_owned();
    let old_key = w.account.clone();
    let gw = short_epoch_gateway(&w, &old_public).await;
    let (a, b) = (w.agents[0].clone(), w.agents[1].clone());
    for _ in 0..3 {
        chat_via(&gw, &a).await;
        chat_via(&gw, &b).await;
    }
    w.settled(&a, 6, true).await;
    w.settled(&b, 6, true).await;
    let keys = |agent: AgentId| {
        let cp = w.cloud.admin();
        async move { cp.keys(&agent).await.unwrap().keys }
    };
    assert_eq!(keys(a.clone()).await.len(), 6, "one epoch per blob");
    let before_a = bodies(&w.audit(&["--agent-id", a.as_str(), "--format", "json"]));
    let before_b = bodies(&w.audit(&["--agent-id", b.as_str(), "--format", "json"]));
    assert_eq!((before_a.len(), before_b.len()), (3, 3));

    // Dry run: counts, and nothing changes (not even Liberty).
    let out = w.sb.run(ROTATE, &["--generate", "--dry-run"], None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("agents: 2"), "{stdout}");
    assert!(
        stdout.contains("data keys wrapped to the old key: 12"),
        "{stdout}"
    );
    assert!(stdout.contains("wrappings to add: 12"), "{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    assert_eq!(keys(a.clone()).await.len(), 6);
    assert!(
        !w.sb
            .ok("liberty", &["list"], None)
            .contains("LOCKSTOCK_ACCOUNT_KEY_NEXT")
    );

    // Killed after the first agent's wrappings are uploaded.
    let mut cmd = w.sb.command(support::procs::bin(ROTATE));
    let out = cmd
        .arg("--generate")
        .env("LOCKSTOCK_TEST_ROTATE_KILL_AFTER", "6")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out).1);
    let next =
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_KEY_NEXT"], None)
            .trim()
            .to_owned();
    assert_eq!(
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_KEY"], None)
            .trim(),
        old_key
    );
    let (ka, kb) = (keys(a.clone()).await, keys(b.clone()).await);
    assert_eq!(
        ka.len() + kb.len(),
        18,
        "half re-wrapped: both wrappings coexist"
    );
    // In between, everything is readable with the old key, as before.
    assert_eq!(
        bodies(&w.audit(&["--agent-id", a.as_str(), "--format", "json"])),
        before_a
    );
    assert_eq!(
        bodies(&w.audit(&["--agent-id", b.as_str(), "--format", "json"])),
        before_b
    );

    // Traffic goes on meanwhile, sealed to the old key: a new epoch to re-wrap on resume.
    chat_via(&gw, &b).await;
    w.settled(&b, 8, true).await;

    // A different new key is refused while one is pending.
    let other_new = lockstock::seal::AccountKey::generate().to_hex();
    let out = w.sb.run(ROTATE, &["--new-key", "-"], Some(&other_new));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("is pending"), "{}", text(&out).1);

    let out = w.sb.run(ROTATE, &["--resume"], None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(stderr.contains("6 already re-wrapped"), "{stderr}");
    assert!(stderr.contains("restart them now"), "{stderr}");
    assert_eq!(
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_KEY"], None)
            .trim(),
        next
    );
    let new_public = lockstock::seal::AccountKey::from_hex(&next)
        .unwrap()
        .public_key();
    assert_eq!(
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_PUBLIC_KEY"], None)
            .trim(),
        new_public.to_hex()
    );
    assert!(
        !w.sb
            .ok("liberty", &["list"], None)
            .contains("LOCKSTOCK_ACCOUNT_KEY_NEXT")
    );
    let account = w.cloud.admin().account().await.unwrap();
    assert_eq!(
        account.key_id.as_deref(),
        Some(new_public.key_id().as_str())
    );
    let (ka, kb) = (keys(a.clone()).await, keys(b.clone()).await);
    assert_eq!((ka.len(), kb.len()), (6, 8), "old wrappings retired");
    assert!(
        ka.iter()
            .chain(&kb)
            .all(|k| k.key_id == new_public.key_id())
    );

    // After: the same transcripts with the new key; the old key is refused.
    assert_eq!(
        bodies(&w.audit(&["--agent-id", a.as_str(), "--format", "json"])),
        before_a
    );
    let after_b = bodies(&w.audit(&["--agent-id", b.as_str(), "--format", "json"]));
    assert_eq!(&after_b[..3], &before_b[..]);
    assert_eq!(after_b.len(), 4);
    let out = w.audit(&["--agent-id", a.as_str(), "--account-key", &old_key]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(w.audit(&["verify", "--all"]).status.success());

    // A gateway still running with the old public key seals what nobody can read now: audit
    // says why (the operator was told to restart it).
    chat_via(&gw, &a).await;
    w.settled(&a, 8, true).await;
    let out = w.audit(&["--agent-id", a.as_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .0
            .contains("gateway still running with an older account key"),
        "{}",
        text(&out).0
    );

    // Running again once complete is refused cleanly (nothing pending).
    let out = w.sb.run(ROTATE, &["--resume"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no rotation is pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_after_the_switch_is_finished_by_running_it_again() {
    let w = world(true).await;
    let agent = w.agents[0].clone();
    w.send(&agent, "/v1/chat/completions", "openai-chat").await;
    w.settled(&agent, 2, true).await;
    let before = bodies(&w.audit(&["--agent-id", "audit", "--format", "json"]));

    // Do what an interrupted run leaves behind after the switch: the account on the new key,
    // the new key only in LOCKSTOCK_ACCOUNT_KEY_NEXT.
    let old = lockstock::seal::AccountKey::from_hex(&w.account).unwrap();
    let new = lockstock::seal::AccountKey::generate();
    w.sb.ok(
        "liberty",
        &["add", "LOCKSTOCK_ACCOUNT_KEY_NEXT"],
        Some(&new.to_hex()),
    );
    let cp = w.cloud.admin();
    for k in cp.keys(&agent).await.unwrap().keys {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let dek = old
            .unwrap_dek(&agent, k.epoch, &b64.decode(&k.wrapped).unwrap())
            .unwrap();
        let mut nk = k.clone();
        nk.key_id = new.public_key().key_id();
        nk.wrapped = b64.encode(dek.wrap(&new.public_key(), &agent).unwrap());
        cp.put_keys(vec![nk]).await.unwrap();
    }
    cp.set_account_key(&lockstock::api::AccountKeyRequest {
        public_key: new.public_key().to_hex(),
        verification_hash: new.verification_hash(),
        retire_key_id: Some(old.public_key().key_id()),
    })
    .await
    .unwrap();

    // Until it is finished, audit falls back to the pending key, and says so.
    let out = w.audit(&["--agent-id", "audit", "--format", "json"]);
    assert_eq!(bodies(&out), before);
    assert!(text(&out).1.contains("--resume"), "{}", text(&out).1);

    let out = w.sb.run(ROTATE, &["--generate"], None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("already on key"), "{stdout}");
    assert_eq!(
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_KEY"], None)
            .trim(),
        new.to_hex().as_str()
    );
    assert!(
        !w.sb
            .ok("liberty", &["list"], None)
            .contains("LOCKSTOCK_ACCOUNT_KEY_NEXT")
    );
    let out = w.audit(&["--agent-id", "audit", "--format", "json"]);
    assert_eq!(bodies(&out), before);
    assert!(text(&out).1.is_empty(), "{}", text(&out).1);
}

/// Finds `needle` in the file at `path` without loading it whole.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().saturating_sub(needle.len());
        carry.drain(..keep);
    }
}

#[test]
fn the_decrypt_path_is_in_the_admin_tools_and_not_in_the_gateway() {
    let marker = lockstock::seal::open::DECRYPT_PATH_MARKER.as_bytes();
    assert_eq!(marker, b"lockstock:transcript-decrypt-path:v1");
    for bin in [AUDIT, ROTATE] {
        assert!(
            file_contains(&support::procs::bin(bin), marker),
            "{bin} lacks the decrypt path marker"
        );
    }
    assert!(
        !file_contains(&support::procs::bin("lockstock-gateway"), marker),
        "the gateway binary links the transcript decrypt path"
    );
}

/// The memory region of process `pid` where one of `needles` is, if any (writable regions:
/// heap, stacks, data).
fn memory_contains(pid: u32, needles: &[&[u8]]) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = match std::fs::File::open(format!("/proc/{pid}/mem")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "SKIPPED the memory scan: /proc/{pid}/mem is not readable here ({e}; ptrace restricted)"
            );
            return None;
        }
        Err(e) => panic!("/proc/{pid}/mem: {e}"),
    };
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        if !perms.starts_with("rw") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for n in needles {
            if buf.windows(n.len()).any(|w| w == *n) {
                return Some(line.to_owned());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_process_never_holds_the_account_secret() {
    let w = world(true).await;
    let secret = w.account.clone();
    assert_eq!(secret.len(), 64);
    let public =
        w.sb.ok("liberty", &["show", "LOCKSTOCK_ACCOUNT_PUBLIC_KEY"], None)
            .trim()
            .to_owned();
    let pid = w.gw.child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let upper = secret.to_uppercase();
    for (what, bytes) in [("environment", &environ), ("command line", &cmdline)] {
        let s = String::from_utf8_lossy(bytes);
        assert!(
            !s.contains(&secret) && !s.contains(&upper),
            "account key in the gateway's {what}"
        );
    }
    // It does seal: to the public half only.
    let agent = &w.agents[0];
    w.send(agent, "/v1/chat/completions", "openai-chat").await;
    w.settled(agent, 2, true).await;
    let keys = w.cloud.admin().keys(agent).await.unwrap().keys;
    let public_id = lockstock::seal::AccountPublicKey::from_hex(&public)
        .unwrap()
        .key_id();
    assert!(keys.iter().all(|k| k.key_id == public_id));

    // Its configuration carries the public key, never the secret.
    let config = w.sb.ok("lockstock-gateway", &["config"], None);
    assert!(config.contains(&public), "{config}");
    assert!(!config.contains(&secret), "{config}");
    assert!(config.contains("never given to the gateway"), "{config}");
    // Nothing it wrote (pid file, logs, spool) holds the secret.
    for dir in ["state", "data", "home", "config"] {
        let root = w.sb.path().join(dir);
        if root.exists() {
            for f in walk(&root) {
                assert!(
                    !file_contains(&f, secret.as_bytes()),
                    "account key in {}",
                    f.display()
                );
            }
        }
    }
    assert!(!w.gw.logs().contains(&secret));

    // Nor its memory: neither the hex nor the 32 bytes.
    let raw = hex::decode(&secret).unwrap();
    if let Some(region) = memory_contains(pid, &[secret.as_bytes(), upper.as_bytes(), &raw]) {
        panic!("the account key is in the gateway's memory ({region})");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
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
