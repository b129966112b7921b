//! The ledger through real HTTP: provisioning, activation, appends, reads, forks, replays,
//! blobs, wrapped keys and the account key.

mod common;

use base64::Engine;
use common::{Server, TestAgent, message, raw};
use ed25519_dalek::SigningKey;
use http::StatusCode;
use lockstock::api::{
    AccountKeyRequest, ActivateRequest, BlobUpload, GENESIS_TTL_MS, ProvisionRequest, Verdict,
    WrappedKey,
};
use lockstock::chain::{Hash32, Head, StampKind, verify_chain};
use lockstock::seal::{AccountKey, Dek};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn provision_activate_append_and_read_back() {
    let server = Server::start().await;
    let admin = server.admin();
    let gateway = server.gateway();

    let p = admin
        .provision(&ProvisionRequest {
            name: "support-bot".into(),
            provider: Some("openai".into()),
        })
        .await
        .unwrap();
    assert!(p.agent_id.as_str().starts_with("agent_") && p.agent_id.name() == "support-bot");
    assert!(p.genesis_token.starts_with("lsg_"));
    assert_eq!(p.expires_ms, common::T0 + GENESIS_TTL_MS);

    let info = admin.agent(&p.agent_id).await.unwrap();
    assert!(!info.activated && !info.locked && info.seq == 0);
    assert_eq!(info.chain_head, Head::genesis(&p.agent_id).hash);

    let key = SigningKey::from_bytes(&[9; 32]);
    let policy = gateway
        .activate(&ActivateRequest {
            agent_id: p.agent_id.clone(),
            genesis_token: p.genesis_token.clone(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
        })
        .await
        .unwrap();
    assert_eq!(policy.head, Head::genesis(&p.agent_id));
    assert_eq!(policy.remaining, None);

    let mut agent = TestAgent::new(p.agent_id.clone(), key);
    let mut sent = vec![agent.request(120, 500)];
    let answers = gateway.append(&sent).await.unwrap().results;
    assert_eq!(
        answers[0].verdict,
        Verdict::Ok {
            grant: Some(500),
            remaining: None
        }
    );
    assert_eq!(answers[0].head, agent.head);

    // A response and three more requests in one batch.
    let batch = vec![
        agent.response(1, 120, 300),
        agent.request(10, 20),
        agent.request(10, 20),
        agent.request(10, 20),
    ];
    let answers = gateway.append(&batch).await.unwrap().results;
    assert!(answers.iter().all(|a| a.verdict.appended() && !a.duplicate));
    assert_eq!(answers.last().unwrap().head, agent.head);
    sent.extend(batch);

    // Read back, across pages, and verify offline.
    let first = admin.stamps(&agent.id, 0, 3).await.unwrap();
    assert_eq!(first.stamps.len(), 3);
    assert_eq!(first.next_after, Some(3));
    let rest = admin.stamps(&agent.id, 3, 3).await.unwrap();
    assert_eq!(rest.stamps.len(), 2);
    assert_eq!(rest.next_after, None);
    let records: Vec<_> = first.stamps.into_iter().chain(rest.stamps).collect();
    for (record, original) in records.iter().zip(&sent) {
        assert_eq!(&record.signed, original);
        assert_eq!(record.hash, original.stamp.hash());
        assert_eq!(record.recorded_ms, common::T0);
        assert!(!record.has_blob);
    }
    let head = verify_chain(
        &agent.id,
        &agent.key.verifying_key(),
        Head::genesis(&agent.id),
        records.iter().map(|r| (&r.signed, Some(r.hash))),
    )
    .unwrap();
    assert_eq!(head, agent.head);

    let info = admin.agent(&agent.id).await.unwrap();
    assert_eq!((info.seq, info.chain_head), (5, agent.head.hash));
    assert_eq!(info.used, 420);
    assert_eq!(info.last_seen_ms, Some(common::T0));
    assert_eq!(info.provider.as_deref(), Some("openai"));
    assert!(info.activated);
    assert_eq!(admin.agents().await.unwrap().agents.len(), 1);

    // Everything survives a restart.
    let mut server = server;
    server.restart().await;
    let info2 = server.admin().agent(&agent.id).await.unwrap();
    assert_eq!(info2, info);
    let next = vec![agent.request(1, 1)];
    let a = server.gateway().append(&next).await.unwrap().results;
    assert!(a[0].verdict.appended(), "{:?}", a[0]);
}

#[tokio::test]
async fn genesis_tokens_work_once_and_expire() {
    let server = Server::start().await;
    let admin = server.admin();
    let gateway = server.gateway();
    let key = SigningKey::from_bytes(&[1; 32]);
    let public_key = hex::encode(key.verifying_key().as_bytes());

    let p = admin
        .provision(&ProvisionRequest {
            name: "once".into(),
            provider: None,
        })
        .await
        .unwrap();
    let wrong = gateway
        .activate(&ActivateRequest {
            agent_id: p.agent_id.clone(),
            genesis_token: format!("lsg_{}", "0".repeat(64)),
            public_key: public_key.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.status(), Some(StatusCode::FORBIDDEN));
    assert!(wrong.to_string().contains("does not match"), "{wrong}");

    let req = ActivateRequest {
        agent_id: p.agent_id.clone(),
        genesis_token: p.genesis_token.clone(),
        public_key: public_key.clone(),
    };
    gateway.activate(&req).await.unwrap();
    let again = gateway.activate(&req).await.unwrap_err();
    assert_eq!(again.status(), Some(StatusCode::CONFLICT));
    assert!(again.to_string().contains("only once"), "{again}");
    assert!(!again.to_string().contains(&p.genesis_token));

    // Expiry, by the injected clock: valid until the last millisecond, refused from then on.
    let late = admin
        .provision(&ProvisionRequest {
            name: "late".into(),
            provider: None,
        })
        .await
        .unwrap();
    server.clock.advance_ms(GENESIS_TTL_MS);
    let expired = gateway
        .activate(&ActivateRequest {
            agent_id: late.agent_id.clone(),
            genesis_token: late.genesis_token.clone(),
            public_key: public_key.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(expired.status(), Some(StatusCode::GONE));
    assert!(expired.to_string().contains("expired"), "{expired}");
    assert!(!admin.agent(&late.agent_id).await.unwrap().activated);

    let just_in_time = admin
        .provision(&ProvisionRequest {
            name: "on-time".into(),
            provider: None,
        })
        .await
        .unwrap();
    server.clock.advance_ms(GENESIS_TTL_MS - 1);
    gateway
        .activate(&ActivateRequest {
            agent_id: just_in_time.agent_id,
            genesis_token: just_in_time.genesis_token,
            public_key,
        })
        .await
        .unwrap();

    // Not a key at all, or not an Ed25519 point.
    let bad = admin
        .provision(&ProvisionRequest {
            name: "badkey".into(),
            provider: None,
        })
        .await
        .unwrap();
    for public_key in ["zz".repeat(32), "ab".repeat(31), "00".repeat(32)] {
        let e = gateway
            .activate(&ActivateRequest {
                agent_id: bad.agent_id.clone(),
                genesis_token: bad.genesis_token.clone(),
                public_key,
            })
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST), "{e}");
    }
    // The token was not consumed by the refusals.
    assert!(!admin.agent(&bad.agent_id).await.unwrap().activated);

    // Unknown agent.
    let e = gateway
        .activate(&ActivateRequest {
            agent_id: "agent_00000000_ghost".parse().unwrap(),
            genesis_token: bad.genesis_token,
            public_key: hex::encode(key.verifying_key().as_bytes()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn a_stale_prev_hash_forks_and_freezes_until_unlocked() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut a = server.agent("shared").await;
    // Two gateways hold the same credential and both start from the same head.
    let mut b = TestAgent::new(a.id.clone(), a.key.clone());

    let first = vec![a.request(1, 10)];
    assert!(
        gateway.append(&first).await.unwrap().results[0]
            .verdict
            .appended()
    );
    let stale = vec![b.request(2, 10)];
    let r = &gateway.append(&stale).await.unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Fork);
    assert_eq!(r.head, a.head, "a fork answers with the stored head");

    let info = admin.agent(&a.id).await.unwrap();
    assert!(info.locked);
    assert!(
        info.lock_reason
            .as_deref()
            .unwrap()
            .contains("fork at seq 1"),
        "{info:?}"
    );
    assert_eq!(info.seq, 1);
    let alerts = admin.alerts().await.unwrap().alerts;
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].reason.contains("fork"));

    // Frozen: the rightful chain's next request is refused with the lock verdict but recorded.
    let next = vec![a.request(1, 10)];
    let r = &gateway.append(&next).await.unwrap().results[0];
    assert!(
        matches!(&r.verdict, Verdict::Locked { reason: Some(why) } if why.contains("fork")),
        "{r:?}"
    );
    // A skipped seq is a fork too, and does not add a second alert.
    let mut gap = a.stamp(StampKind::Request);
    gap.seq += 1;
    let r = &gateway.append(&[gap.sign(&a.key)]).await.unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Fork);
    assert_eq!(admin.alerts().await.unwrap().alerts.len(), 1);

    admin.unlock(&a.id).await.unwrap();
    let next = vec![a.request(1, 10)];
    let r = &gateway.append(&next).await.unwrap().results[0];
    assert!(matches!(r.verdict, Verdict::Ok { .. }), "{r:?}");
    assert_eq!(r.head.seq, 3);
}

#[tokio::test]
async fn bad_signatures_and_unknown_agents_are_refused_and_not_appended() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let mut agent = server.agent("honest").await;

    let mut forged = agent.stamp(StampKind::Request);
    forged.tokens_out = 5;
    let forged = forged.sign(&SigningKey::from_bytes(&[66; 32]));
    let mut tampered = agent.stamp(StampKind::Request).sign(&agent.key);
    tampered.stamp.tokens_in = 999_999;
    let ghost = TestAgent::new(
        "agent_deadbeef_ghost".parse().unwrap(),
        SigningKey::from_bytes(&[3; 32]),
    )
    .stamp(StampKind::Request)
    .sign(&SigningKey::from_bytes(&[3; 32]));
    let mut malformed = agent.stamp(StampKind::Request);
    malformed.ref_seq = 7;
    let malformed = malformed.sign(&agent.key);

    let results = gateway
        .append(&[forged, tampered, ghost, malformed])
        .await
        .unwrap()
        .results;
    for (r, needle) in results.iter().zip([
        "signature",
        "signature",
        "no agent agent_deadbeef_ghost",
        "ref_seq",
    ]) {
        match &r.verdict {
            Verdict::Invalid { message } => assert!(message.contains(needle), "{message}"),
            other => panic!("expected invalid, got {other:?}"),
        }
    }
    let info = server.admin().agent(&agent.id).await.unwrap();
    assert_eq!(info.seq, 0);
    assert!(
        !info.locked,
        "a forged stamp must not be able to freeze an agent"
    );
    // The honest stamp at seq 1 still goes in.
    let ok = vec![agent.request(1, 1)];
    assert!(
        gateway.append(&ok).await.unwrap().results[0]
            .verdict
            .appended()
    );

    // An agent that is provisioned but not activated cannot stamp.
    let p = server
        .admin()
        .provision(&ProvisionRequest {
            name: "dormant".into(),
            provider: None,
        })
        .await
        .unwrap();
    let mut dormant = TestAgent::new(p.agent_id, SigningKey::from_bytes(&[4; 32]));
    let s = vec![dormant.request(1, 1)];
    let r = &gateway.append(&s).await.unwrap().results[0];
    assert!(
        matches!(&r.verdict, Verdict::Invalid { message } if message.contains("not activated"))
    );
}

#[tokio::test]
async fn a_replayed_stamp_is_answered_as_before_and_not_appended_twice() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut agent = server.agent("retry").await;
    admin.set_budget(&agent.id, Some(1000)).await.unwrap();

    let batch = vec![agent.request(100, 200), agent.response(1, 100, 50)];
    let first = gateway.append(&batch).await.unwrap().results;
    assert_eq!(
        first[0].verdict,
        Verdict::Ok {
            grant: Some(200),
            remaining: Some(700)
        }
    );
    // The gateway did not hear back and retries the same batch.
    let again = gateway.append(&batch).await.unwrap().results;
    for (a, b) in first.iter().zip(&again) {
        assert!(b.duplicate);
        assert_eq!(a.verdict, b.verdict, "the originally recorded verdict");
        assert_eq!(b.head, agent.head);
    }
    let info = admin.agent(&agent.id).await.unwrap();
    assert_eq!(info.seq, 2);
    assert_eq!(info.used, 150, "no double debit");
    assert_eq!(info.remaining, Some(850));
    assert_eq!(
        admin.stamps(&agent.id, 0, 100).await.unwrap().stamps.len(),
        2
    );
    assert!(!info.locked);

    // A different stamp at a taken seq is a fork, not a replay.
    let mut other = agent.stamp(StampKind::Request);
    other.seq = 1;
    other.prev_hash = lockstock::chain::genesis_hash(&agent.id);
    other.tokens_in = 1;
    let r = &gateway
        .append(&[other.sign(&agent.key)])
        .await
        .unwrap()
        .results[0];
    assert_eq!(r.verdict, Verdict::Fork);
    assert!(admin.agent(&agent.id).await.unwrap().locked);
}

#[tokio::test]
async fn locks_record_attempts_and_responses_still_settle() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut agent = server.agent("lockme").await;
    admin.set_budget(&agent.id, Some(1000)).await.unwrap();
    let r = gateway
        .append(&[agent.request(100, 100)])
        .await
        .unwrap()
        .results;
    assert!(matches!(r[0].verdict, Verdict::Ok { .. }));

    let info = admin
        .lock(&agent.id, Some("incident 42".into()))
        .await
        .unwrap();
    assert!(info.locked && info.lock_reason.as_deref() == Some("incident 42"));
    let policy = gateway.policy(&agent.id).await.unwrap();
    assert!(policy.locked);
    assert_eq!(policy.head, agent.head);

    let r = gateway
        .append(&[agent.request(1, 1), agent.response(1, 100, 40)])
        .await
        .unwrap()
        .results;
    assert_eq!(
        r[0].verdict,
        Verdict::Locked {
            reason: Some("incident 42".into())
        }
    );
    assert_eq!(
        r[1].verdict,
        Verdict::Ok {
            grant: None,
            remaining: Some(860)
        }
    );
    let page = admin.stamps(&agent.id, 0, 10).await.unwrap();
    assert_eq!(
        page.stamps.len(),
        3,
        "the refused attempt is in the audit trail"
    );
    assert!(matches!(page.stamps[1].verdict, Verdict::Locked { .. }));

    let info = admin.unlock(&agent.id).await.unwrap();
    assert!(!info.locked && info.lock_reason.is_none());
    let r = gateway
        .append(&[agent.request(1, 1)])
        .await
        .unwrap()
        .results;
    assert!(matches!(r[0].verdict, Verdict::Ok { .. }));
}

#[tokio::test]
async fn blobs_must_match_their_stamp() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut agent = server.agent("sealed").await;
    let blob = b"LSB1 pretend this is sealed".to_vec();
    let mut s = agent.stamp(StampKind::Request);
    s.blob_hash = Some(Hash32::of(&blob));
    let plain = vec![agent.sign(s), agent.request(1, 1)];
    gateway.append(&plain).await.unwrap();

    let upload = |seq: u64, kind: StampKind, data: &[u8]| BlobUpload {
        agent_id: agent.id.clone(),
        seq,
        kind,
        data: b64(data),
    };
    // Wrong bytes, a stamp with no blob, a missing stamp, the wrong kind: refused, naming the seq.
    for (up, status, needle) in [
        (upload(1, StampKind::Request, b"other"), 400, "seq 1"),
        (upload(2, StampKind::Request, &blob), 400, "seq 2"),
        (upload(9, StampKind::Request, &blob), 409, "seq 9"),
        (upload(1, StampKind::Response, &blob), 400, "seq 1"),
    ] {
        let e = gateway.upload_blobs(&[up]).await.unwrap_err();
        assert_eq!(e.status().unwrap().as_u16(), status, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    // All or nothing: a good blob next to a bad one is not stored either.
    let e = gateway
        .upload_blobs(&[
            upload(1, StampKind::Request, &blob),
            upload(2, StampKind::Request, &blob),
        ])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(admin.blob(&agent.id, 1).await.unwrap(), None);

    assert_eq!(
        gateway
            .upload_blobs(&[upload(1, StampKind::Request, &blob)])
            .await
            .unwrap(),
        1
    );
    // Idempotent.
    gateway
        .upload_blobs(&[upload(1, StampKind::Request, &blob)])
        .await
        .unwrap();
    assert_eq!(admin.blob(&agent.id, 1).await.unwrap().unwrap(), blob);
    assert_eq!(admin.blob(&agent.id, 2).await.unwrap(), None);
    let page = admin.stamps(&agent.id, 0, 10).await.unwrap();
    assert!(page.stamps[0].has_blob && !page.stamps[1].has_blob);
}

#[tokio::test]
async fn blobs_sent_with_their_stamps_are_stored_in_the_same_call_unless_refused() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut agent = server.agent("inline").await;
    let (asked, answered) = (
        b"LSB1 sealed question".to_vec(),
        b"LSB1 sealed answer".to_vec(),
    );
    let id = agent.id.clone();
    let upload = |seq: u64, kind: StampKind, data: &[u8]| BlobUpload {
        agent_id: id.clone(),
        seq,
        kind,
        data: b64(data),
    };

    let mut request = agent.stamp(StampKind::Request);
    request.blob_hash = Some(Hash32::of(&asked));
    let request = agent.sign(request);
    let mut response = agent.stamp(StampKind::Response);
    response.ref_seq = 1;
    response.blob_hash = Some(Hash32::of(&answered));
    let response = agent.sign(response);
    let plain = agent.request(1, 1);
    let call = vec![request, response, plain];
    let blobs = vec![
        upload(2, StampKind::Response, &answered),
        upload(1, StampKind::Request, &asked),
    ];
    let resp = gateway.append_with_blobs(&call, &blobs).await.unwrap();
    assert!(resp.results.iter().all(|r| r.verdict.appended()));
    assert_eq!(resp.blobs_stored, Some(2));
    assert_eq!(admin.blob(&agent.id, 1).await.unwrap().unwrap(), asked);
    assert_eq!(admin.blob(&agent.id, 2).await.unwrap().unwrap(), answered);
    let page = admin.stamps(&agent.id, 0, 10).await.unwrap();
    let has_blob: Vec<bool> = page.stamps.iter().map(|s| s.has_blob).collect();
    assert_eq!(has_blob, [true, true, false]);

    // A retry of the whole call is answered as before and stores nothing twice.
    let again = gateway.append_with_blobs(&call, &blobs).await.unwrap();
    assert!(again.results.iter().all(|r| r.duplicate));
    assert_eq!(admin.blob(&agent.id, 1).await.unwrap().unwrap(), asked);

    // A call without blobs says so (a gateway tells this control plane from an older one).
    assert_eq!(
        gateway
            .append(&[agent.request(1, 1)])
            .await
            .unwrap()
            .blobs_stored,
        Some(0)
    );

    // A refused stamp's blob is dropped: nothing in the chain commits to it.
    let mut gap = agent.stamp(StampKind::Request);
    gap.seq += 1;
    gap.blob_hash = Some(Hash32::of(&asked));
    let seq = gap.seq;
    let resp = gateway
        .append_with_blobs(
            &[gap.sign(&agent.key)],
            &[upload(seq, StampKind::Request, &asked)],
        )
        .await
        .unwrap();
    assert_eq!(resp.results[0].verdict, Verdict::Fork);
    assert_eq!(resp.blobs_stored, Some(0));
    assert_eq!(admin.blob(&agent.id, seq).await.unwrap(), None);
}

#[tokio::test]
async fn wrapped_keys_are_never_overwritten_and_rotation_never_strands_a_blob() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let agent = server.agent("keys").await;

    let old = AccountKey::generate();
    let info = admin
        .set_account_key(&AccountKeyRequest {
            public_key: old.public_key().to_hex(),
            verification_hash: old.verification_hash(),
            retire_key_id: None,
        })
        .await
        .unwrap();
    let old_id = old.public_key().key_id();
    assert_eq!(info.key_id.as_deref(), Some(old_id.as_str()));
    assert_eq!(admin.account().await.unwrap(), info);

    let wrap = |key: &AccountKey, dek: &Dek| WrappedKey {
        agent_id: agent.id.clone(),
        epoch: dek.epoch,
        key_id: key.public_key().key_id(),
        wrapped: b64(&dek.wrap(&key.public_key(), &agent.id).unwrap()),
    };
    let deks = [Dek::generate(1), Dek::generate(2)];
    let first: Vec<WrappedKey> = deks.iter().map(|d| wrap(&old, d)).collect();
    gateway.put_keys(first.clone()).await.unwrap();
    // Same bytes again: fine. Different bytes for the same (agent, epoch, key): never.
    gateway.put_keys(vec![first[0].clone()]).await.unwrap();
    let e = gateway
        .put_keys(vec![wrap(&old, &Dek::generate(1))])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT));

    // Rotation: the new key wraps only epoch 1 so far; retiring the old key must refuse.
    let new = AccountKey::generate();
    admin.put_keys(vec![wrap(&new, &deks[0])]).await.unwrap();
    let req = AccountKeyRequest {
        public_key: new.public_key().to_hex(),
        verification_hash: new.verification_hash(),
        retire_key_id: Some(old_id.clone()),
    };
    let e = admin.set_account_key(&req).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT));
    assert!(e.to_string().contains("1 data key"), "{e}");
    assert_eq!(
        admin.account().await.unwrap().key_id.as_deref(),
        Some(old_id.as_str())
    );
    assert_eq!(admin.keys(&agent.id).await.unwrap().keys.len(), 3);

    admin.put_keys(vec![wrap(&new, &deks[1])]).await.unwrap();
    let info = admin.set_account_key(&req).await.unwrap();
    assert_eq!(info.key_id, Some(new.public_key().key_id()));
    let keys = admin.keys(&agent.id).await.unwrap().keys;
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.key_id == new.public_key().key_id()));
    assert_eq!(keys.iter().map(|k| k.epoch).collect::<Vec<_>>(), [1, 2]);

    // Bad input is refused whole.
    for bad in [
        WrappedKey {
            key_id: "XYZ".into(),
            ..wrap(&new, &Dek::generate(5))
        },
        WrappedKey {
            wrapped: "not base64!".into(),
            ..wrap(&new, &Dek::generate(5))
        },
        WrappedKey {
            agent_id: "agent_00000000_nobody".parse().unwrap(),
            ..wrap(&new, &Dek::generate(5))
        },
    ] {
        let e = gateway.put_keys(vec![bad]).await.unwrap_err();
        assert!(e.status().is_some_and(|s| s.is_client_error()), "{e:?}");
    }
    assert_eq!(admin.keys(&agent.id).await.unwrap().keys.len(), 2);
}

#[tokio::test]
async fn health_is_public_and_unknown_routes_are_json_404s() {
    let server = Server::start().await;
    let (status, body) = raw(&server.url, "GET", "/v1/health", None, vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = raw(
        &server.url,
        "GET",
        "/v1/nope",
        Some(server.admin_key()),
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    assert!(message(&body).contains("/v1/nope"));
    let (status, body) = raw(
        &server.url,
        "DELETE",
        "/v1/agents",
        Some(server.admin_key()),
        vec![],
    )
    .await;
    assert_eq!(status, 405);
    assert!(message(&body).contains("DELETE"));
}

#[tokio::test]
async fn the_dashboard_is_static_and_locked_down() {
    use http_body_util::BodyExt;
    let server = Server::start().await;
    let client = lockstock::http::client(Default::default());
    for (path, kind, needle) in [
        ("/", "text/html", "sessionStorage"),
        ("/dashboard.js", "text/javascript", "Authorization"),
    ] {
        let req = http::Request::get(format!("{}{path}", server.url))
            .body(lockstock::http::full(Vec::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains(needle), "{path}");
        assert!(!text.contains(server.admin_key()));
    }
}

#[tokio::test]
async fn one_signature_covers_its_batch_and_no_stamp_goes_in_uncovered() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut agent = server.agent("batched").await;
    let invalid = |results: &[lockstock::api::StampResult], needle: &str| {
        for r in results {
            match &r.verdict {
                Verdict::Invalid { message } => assert!(message.contains(needle), "{message}"),
                other => panic!("expected invalid, got {other:?}"),
            }
        }
    };
    // request, response, request: signed once, on the last, as the gateway sends them.
    let batch = |agent: &mut TestAgent| {
        agent.head = Head::genesis(&agent.id);
        let mut b = vec![agent.request(5, 10)];
        b.push(agent.response(1, 5, 7));
        b.push(agent.request(3, 10));
        b[0].signature = None;
        b[1].signature = None;
        b
    };

    // Alone, an unsigned stamp proves nothing.
    let lone = batch(&mut agent).remove(0);
    let results = gateway.append(&[lone]).await.unwrap().results;
    invalid(&results, "no validly signed stamp");

    // A forged signature on the last stamp takes the whole batch down with it.
    let mut forged = batch(&mut agent);
    forged[2] = forged[2]
        .stamp
        .clone()
        .sign(&SigningKey::from_bytes(&[66; 32]));
    let results = gateway.append(&forged).await.unwrap().results;
    assert_eq!(results.len(), 3);
    invalid(&results[..2], "no validly signed stamp");
    invalid(&results[2..], "signature");

    // A batch cut short of its signature.
    let cut = batch(&mut agent)[..2].to_vec();
    invalid(
        &gateway.append(&cut).await.unwrap().results,
        "no validly signed stamp",
    );

    let info = admin.agent(&agent.id).await.unwrap();
    assert_eq!(info.seq, 0, "nothing uncovered was appended");
    assert!(!info.locked, "refused stamps must not freeze the agent");

    // The real batch goes in whole, is stored as sent, and re-verifies offline.
    let sent = batch(&mut agent);
    let results = gateway.append(&sent).await.unwrap().results;
    assert!(
        results
            .iter()
            .all(|r| matches!(r.verdict, Verdict::Ok { .. })),
        "{results:?}"
    );
    let page = admin.stamps(&agent.id, 0, 10).await.unwrap();
    let stored: Vec<_> = page.stamps.iter().map(|r| r.signed.clone()).collect();
    assert_eq!(stored, sent);
    let head = verify_chain(
        &agent.id,
        &agent.key.verifying_key(),
        Head::genesis(&agent.id),
        page.stamps.iter().map(|r| (&r.signed, Some(r.hash))),
    )
    .unwrap();
    assert_eq!(head, agent.head);

    // A retry of the same bytes is recognised, as for stamps signed one by one.
    let again = gateway.append(&sent).await.unwrap().results;
    assert!(again.iter().all(|r| r.duplicate), "{again:?}");
    assert_eq!(admin.agent(&agent.id).await.unwrap().seq, 3);
}

/// A call signed once is checked by its handler when it arrives alone and batched with others
/// on the verifier thread when calls arrive together; either way each call gets the verdict of
/// its own signature, and a forged one takes down nothing but itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_each_get_the_verdict_of_their_own_signature() {
    const AGENTS: usize = 24;
    const ROUNDS: usize = 6;
    let server = Server::start().await;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        agents.push(server.agent(&format!("crowd-{i}")).await);
    }
    let forged_key = SigningKey::from_bytes(&[66; 32]);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(AGENTS));
    let tasks: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(i, mut agent)| {
            let (gateway, start, forged_key) =
                (server.gateway(), start.clone(), forged_key.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut appended = 0;
                for round in 0..ROUNDS {
                    let forge = (i + round) % 3 == 0;
                    let before = agent.head;
                    // request and response, signed once on the last as a gateway sends them
                    let mut call = vec![agent.request(2, 10)];
                    call.push(agent.response(call[0].stamp.seq, 2, 5));
                    call[0].signature = None;
                    if forge {
                        call[1] = call[1].stamp.clone().sign(&forged_key);
                    }
                    let results = gateway.append(&call).await.unwrap().results;
                    assert_eq!(results.len(), 2);
                    if forge {
                        agent.head = before;
                        for r in &results {
                            assert!(
                                matches!(&r.verdict, Verdict::Invalid { .. }),
                                "agent {i} round {round}: a forged call was accepted: {r:?}"
                            );
                        }
                    } else {
                        for r in &results {
                            assert!(
                                matches!(r.verdict, Verdict::Ok { .. }),
                                "agent {i} round {round}: an honest call was refused: {r:?}"
                            );
                        }
                        appended += 2;
                    }
                }
                (agent, appended)
            })
        })
        .collect();
    let admin = server.admin();
    for task in tasks {
        let (agent, appended) = task.await.unwrap();
        let info = admin.agent(&agent.id).await.unwrap();
        assert_eq!(info.seq, appended, "{}", agent.id);
        assert!(!info.locked, "a forged call must not freeze {}", agent.id);
    }
}
