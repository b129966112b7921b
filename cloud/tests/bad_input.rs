//! Bad input gets a 4xx with a sentence and changes nothing.

mod common;

use common::{Server, message, raw};
use lockstock::chain::{Hash32, StampKind};

#[tokio::test]
async fn malformed_bodies_are_refused_with_a_sentence_and_nothing_is_stored() {
    let server = Server::start().await;
    let gw = server.gateway_key().to_owned();
    let admin = server.admin_key().to_owned();
    let agent = server.agent("victim").await;
    let id = agent.id.to_string();

    // A valid stamp as JSON, to corrupt field by field.
    let mut blob_stamp = agent.stamp(StampKind::Request);
    blob_stamp.blob_hash = Some(Hash32::of(b"blob"));
    let good = serde_json::to_value(blob_stamp.sign(&agent.key)).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut s = good.clone();
        s[field] = value;
        serde_json::to_vec(&serde_json::json!({ "stamps": [s] })).unwrap()
    };
    let with_blobs = |blobs: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({ "stamps": [good], "blobs": blobs })).unwrap()
    };
    let blob = |seq: u64, kind: &str, data: &str| serde_json::json!({"agent_id": id, "seq": seq, "kind": kind, "data": data});
    let huge = format!(r#"{{"name":"{}"}}"#, "a".repeat(5 * 1024 * 1024)).into_bytes();

    // (key, method, path, body, expected status, words the message must contain)
    type Case = (
        &'static str,
        &'static str,
        String,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("gw", "POST", "/v1/stamps".into(), b"{\"stamps\": [".to_vec(), 400, "not valid JSON"),
        ("gw", "POST", "/v1/stamps".into(), b"{\"stamps\": 7}".to_vec(), 400, "expected fields and types"),
        ("gw", "POST", "/v1/stamps".into(), b"".to_vec(), 400, "empty"),
        ("gw", "POST", "/v1/stamps".into(), b"{\"stamps\":[]} trailing".to_vec(), 400, "not valid JSON"),
        ("gw", "POST", "/v1/stamps".into(), b"{\"stamps\":[]}".to_vec(), 400, "at least one stamp"),
        ("gw", "POST", "/v1/stamps".into(), b"{\"stamps\":\"\xff\xfe\"}".to_vec(), 400, "UTF-8"),
        ("gw", "POST", "/v1/stamps".into(), with("prev_hash", "zz".repeat(32).into()), 400, "64 hex"),
        ("gw", "POST", "/v1/stamps".into(), with("signature", "***".into()), 400, "base64"),
        ("gw", "POST", "/v1/stamps".into(), with("seq", (-1).into()), 400, "expected fields and types"),
        ("gw", "POST", "/v1/stamps".into(), with("tokens_in", 1e30.into()), 400, "expected fields and types"),
        ("gw", "POST", "/v1/stamps".into(), with("kind", "question".into()), 400, "expected fields and types"),
        ("gw", "POST", "/v1/stamps".into(), with("agent_id", "bob".into()), 400, "agent ids look like"),
        ("gw", "POST", "/v1/stamps".into(), huge.clone(), 413, "limit of 4 MiB"),
        // Blobs sent with their stamps ("YmxvYg==" is the blob the stamp commits to).
        ("gw", "POST", "/v1/stamps".into(), with_blobs("YmxvYg==".into()), 400, "expected fields and types"),
        ("gw", "POST", "/v1/stamps".into(), with_blobs(serde_json::json!([blob(1, "request", "%%%")])), 400, "not valid base64"),
        ("gw", "POST", "/v1/stamps".into(), with_blobs(serde_json::json!([blob(1, "request", "YmxvYg")])), 400, "not valid base64"),
        ("gw", "POST", "/v1/stamps".into(), with_blobs(serde_json::json!([blob(2, "request", "YmxvYg==")])), 400, "no stamp in this call"),
        ("gw", "POST", "/v1/stamps".into(), with_blobs(serde_json::json!([blob(1, "request", "b3RoZXI=")])), 400, "does not match the SHA-256"),
        ("gw", "POST", "/v1/stamps".into(), with_blobs(serde_json::json!([blob(1, "response", "YmxvYg==")])), 400, "not a response stamp"),
        ("gw", "POST", "/v1/stamps".into(),
            with_blobs(serde_json::json!([blob(1, "request", "YmxvYg=="), blob(1, "request", "YmxvYg==")])),
            400, "at most one blob per stamp"),
        ("admin", "POST", "/v1/agents".into(), huge, 413, "limit"),
        ("admin", "POST", "/v1/agents".into(), br#"{"name":"has space"}"#.to_vec(), 400, "agent names"),
        ("admin", "POST", "/v1/agents".into(), br#"{"nom":"x"}"#.to_vec(), 400, "missing field `name`"),
        ("admin", "PUT", format!("/v1/agents/{id}/budget"), br#"{"tokens":"lots"}"#.to_vec(), 400, "expected fields and types"),
        ("admin", "PUT", format!("/v1/agents/{id}/budget"), br#"{"tokens":-5}"#.to_vec(), 400, "expected fields and types"),
        ("admin", "GET", "/v1/agents/agent_00000000_nobody".into(), vec![], 404, "no agent agent_00000000_nobody"),
        ("admin", "GET", "/v1/agents/not-an-id".into(), vec![], 400, "agent ids look like"),
        ("admin", "PUT", "/v1/agents/agent_00000000_nobody/budget".into(), br#"{"tokens":5}"#.to_vec(), 404, "no agent"),
        ("admin", "POST", "/v1/agents/agent_00000000_nobody/lock".into(), b"{}".to_vec(), 404, "no agent"),
        ("admin", "GET", format!("/v1/agents/{id}/stamps?limit=lots"), vec![], 400, "non-negative integers"),
        ("admin", "GET", format!("/v1/agents/{id}/blobs/first"), vec![], 400, "not a sequence number"),
        ("admin", "GET", "/v1/agents/agent_00000000_nobody/stamps".into(), vec![], 404, "no agent"),
        ("admin", "PUT", "/v1/account/key".into(), br#"{"public_key":"xyz","verification_hash":"00"}"#.to_vec(), 400, "64 hex"),
        ("gw", "POST", "/v1/blobs".into(),
            serde_json::to_vec(&serde_json::json!({"blobs":[{"agent_id": id, "seq": 1, "kind": "request", "data": "%%%"}]})).unwrap(),
            400, "not valid base64"),
        ("gw", "POST", "/v1/blobs".into(),
            serde_json::to_vec(&serde_json::json!({"blobs":[{"agent_id": "agent_00000000_nobody", "seq": 1, "kind": "request", "data": "YmxvYg=="}]})).unwrap(),
            404, "no agent"),
        ("gw", "POST", "/v1/agents/activate".into(),
            serde_json::to_vec(&serde_json::json!({"agent_id": id, "genesis_token": "lsg_x", "public_key": "not hex"})).unwrap(),
            400, "64 hex"),
        ("gw", "POST", "/v1/keys".into(),
            serde_json::to_vec(&serde_json::json!({"keys":[{"agent_id": id, "epoch": 1, "key_id": "0011223344556677", "wrapped": "@@"}]})).unwrap(),
            400, "not valid base64"),
    ];
    for (who, method, path, body, status, needle) in cases {
        let key = if who == "gw" { &gw } else { &admin };
        let (got, resp) = raw(&server.url, method, &path, Some(key), body).await;
        assert_eq!(got, status, "{method} {path}: {resp}");
        let msg = message(&resp);
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
        assert!(msg.len() < 400, "a sentence, not a dump: {msg}");
    }

    // Nothing was stored.
    let admin_cp = server.admin();
    let agents = admin_cp.agents().await.unwrap().agents;
    assert_eq!(agents.len(), 1);
    let info = &agents[0];
    assert_eq!(
        (info.seq, info.used, info.budget, info.locked),
        (0, 0, None, false)
    );
    assert!(
        admin_cp
            .stamps(&agent.id, 0, 10)
            .await
            .unwrap()
            .stamps
            .is_empty()
    );
    assert!(admin_cp.keys(&agent.id).await.unwrap().keys.is_empty());
    assert!(admin_cp.alerts().await.unwrap().alerts.is_empty());
    assert_eq!(admin_cp.account().await.unwrap().public_key, None);

    // The stamp the corrupted copies came from is still perfectly acceptable.
    let body = serde_json::to_vec(&serde_json::json!({ "stamps": [good] })).unwrap();
    let (status, resp) = raw(&server.url, "POST", "/v1/stamps", Some(&gw), body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["results"][0]["verdict"]["verdict"], "ok");
}

#[tokio::test]
async fn oversized_blobs_and_batches_are_refused() {
    let server = Server::start().await;
    let gw = server.gateway_key().to_owned();
    let mut agent = server.agent("big").await;
    // One byte over the blob limit, in valid base64.
    use base64::Engine;
    let data =
        base64::engine::general_purpose::STANDARD
            .encode(vec![0u8; lockstock::api::MAX_BLOB_BYTES + 1]);
    let body = serde_json::to_vec(&serde_json::json!({"blobs":[{"agent_id": agent.id, "seq": 1, "kind": "request", "data": data}]})).unwrap();
    let (status, resp) = raw(&server.url, "POST", "/v1/blobs", Some(&gw), body).await;
    assert_eq!(status, 413, "{resp}");
    assert!(message(&resp).contains("seq 1"), "{resp}");

    // A body beyond the blob route's own limit is cut off before it is read whole.
    let body = vec![b' '; lockstock_cloud::BLOBS_LIMIT + 1];
    let (status, _) = raw(&server.url, "POST", "/v1/blobs", Some(&gw), body).await;
    assert_eq!(status, 413);

    let stamps: Vec<_> = (0..=lockstock::api::MAX_STAMPS_PER_APPEND)
        .map(|_| agent.request(1, 1))
        .collect();
    let e = server.gateway().append(&stamps).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400));
    assert!(e.to_string().contains("at most 1024 stamps"), "{e}");
    assert_eq!(server.admin().agent(&agent.id).await.unwrap().seq, 0);
}
