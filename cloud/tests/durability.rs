//! kill -9 the real server while eight clients append (and its checkpoint thread copies the
//! WAL into the database file); every acknowledged stamp survives and every chain verifies end
//! to end after a restart.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use binary::{Proc, init_with_binary};
use lockstock::AgentId;
use lockstock::chain::{Hash32, Head, verify_chain};
use lockstock::client::ControlPlane;

/// Every stamp of an agent, paged.
async fn all_stamps(admin: &ControlPlane, id: &AgentId) -> Vec<lockstock::api::StampRecord> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = admin.stamps(id, after, 1000).await.unwrap();
        out.extend(page.stamps);
        match page.next_after {
            Some(next) => after = next,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_stamps_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (admin_key, gateway_key) = init_with_binary(dir.path());
    let mut server = Proc::serve(dir.path(), &[], "http");
    let admin = server.client(&admin_key);
    let gateway = server.client(&gateway_key);

    let mut agents = Vec::new();
    for i in 0..8 {
        let agent = common::new_agent(&admin, &gateway, &format!("durable-{i}")).await;
        admin
            .set_budget(&agent.id, Some(1_000_000_000))
            .await
            .unwrap();
        agents.push(agent);
    }

    let db_file = dir.path().join("ledger.db");
    let db_len = || std::fs::metadata(&db_file).unwrap().len();
    let before = db_len();

    // (agent, seq) -> hash, for every stamp the server acknowledged.
    let acked: Arc<Mutex<HashMap<(AgentId, u64), Hash32>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, mut agent) in agents.into_iter().enumerate() {
        let gateway = gateway.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            loop {
                // Alternate single stamps and small batches, like a gateway would.
                let mut stamps = vec![agent.request(10, 20)];
                let req_seq = agent.head.seq;
                if (round + i as u64).is_multiple_of(2) {
                    stamps.push(agent.response(req_seq, 10, 5));
                    stamps.push(agent.request(10, 20));
                }
                round += 1;
                match gateway.append(&stamps).await {
                    Ok(resp) => {
                        let mut acked = acked.lock().unwrap();
                        for (s, r) in stamps.iter().zip(&resp.results) {
                            assert!(r.verdict.appended(), "{r:?}");
                            acked.insert((s.stamp.agent_id.clone(), s.stamp.seq), s.stamp.hash());
                        }
                    }
                    Err(e) => return (agent, round, e),
                }
            }
        }));
    }

    // Let them run, then kill -9 in the middle of it.
    let start = Instant::now();
    while (acked.lock().unwrap().len() < 2000 || db_len() == before)
        && start.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only checkpoints write the database file: the kill lands while they run.
    assert!(db_len() > before, "no checkpoint ran during the appends");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut heads = Vec::new();
    for t in tasks {
        let (agent, rounds, err) = t.await.unwrap();
        assert!(rounds > 1, "{}: the client was still appending", agent.id);
        assert!(err.is_unreachable() || err.status().is_none(), "{err}");
        heads.push(agent);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "only {} stamps were acknowledged",
        acked.len()
    );

    // Restart on the same data and check everything.
    let server = Proc::serve(dir.path(), &[], "http");
    let admin = server.client(&admin_key);
    let mut found = 0;
    for agent in &heads {
        let records = all_stamps(&admin, &agent.id).await;
        let head = verify_chain(
            &agent.id,
            &agent.key.verifying_key(),
            Head::genesis(&agent.id),
            records.iter().map(|r| (&r.signed, Some(r.hash))),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", agent.id));
        let info = admin.agent(&agent.id).await.unwrap();
        assert_eq!((info.seq, info.chain_head), (head.seq, head.hash));
        let by_seq: HashMap<u64, Hash32> = records
            .iter()
            .map(|r| (r.signed.stamp.seq, r.hash))
            .collect();
        for ((id, seq), hash) in &acked {
            if id == &agent.id {
                assert_eq!(
                    by_seq.get(seq),
                    Some(hash),
                    "{id} seq {seq} was acknowledged but lost"
                );
                found += 1;
            }
        }
        // The chain goes on where the ledger says it ends.
        assert!(!info.locked, "{info:?}");
    }
    assert_eq!(found, acked.len());
    eprintln!("{found} acknowledged stamps survived kill -9");
}
