//! Budgets: reservations hold what was granted until the response settles, so concurrent
//! requests can never be granted more than is left.

mod common;

use common::Server;
use lockstock::api::{StampResult, Verdict};
use lockstock::chain::{StampKind, flags};

fn grant_of(r: &StampResult) -> Option<(u64, Option<u64>)> {
    match r.verdict {
        Verdict::Ok { grant, remaining } => Some((grant.unwrap_or(0), remaining)),
        _ => None,
    }
}

#[tokio::test]
async fn remaining_falls_as_responses_settle_and_raising_restores_service() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut a = server.agent("spender").await;
    let info = admin.set_budget(&a.id, Some(1000)).await.unwrap();
    assert_eq!(
        (info.budget, info.used, info.remaining),
        (Some(1000), 0, Some(1000))
    );

    let send = async |stamps: Vec<lockstock::chain::SignedStamp>| {
        gateway
            .append(&stamps)
            .await
            .unwrap()
            .results
            .remove(0)
            .verdict
    };
    // Prompt 100, cap 300: all 300 granted, 400 reserved.
    let v = send(vec![a.request(100, 300)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: Some(300),
            remaining: Some(600)
        }
    );
    let info = admin.agent(&a.id).await.unwrap();
    assert_eq!((info.reserved, info.remaining), (400, Some(600)));
    // The response settles what was really used (100 in, 200 out): 700 left.
    let v = send(vec![a.response(1, 100, 200)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: None,
            remaining: Some(700)
        }
    );
    assert_eq!(gateway.policy(&a.id).await.unwrap().remaining, Some(700));
    // Asking for more than is left is clamped to what is left.
    let v = send(vec![a.request(100, 5000)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: Some(600),
            remaining: Some(0)
        }
    );
    // Nothing left while that request is in flight.
    let v = send(vec![a.request(1, 10)]).await;
    assert_eq!(v, Verdict::Budget);
    // It used less than granted: the rest comes back.
    let v = send(vec![a.response(3, 100, 550)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: None,
            remaining: Some(50)
        }
    );
    let v = send(vec![a.request(10, 100)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: Some(40),
            remaining: Some(0)
        }
    );
    let v = send(vec![a.response(6, 10, 40)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: None,
            remaining: Some(0)
        }
    );
    // A prompt alone bigger than what is left: the budget verdict.
    let v = send(vec![a.request(1, 1)]).await;
    assert_eq!(v, Verdict::Budget);
    let info = admin.agent(&a.id).await.unwrap();
    assert_eq!(
        (info.used, info.reserved, info.remaining),
        (1000, 0, Some(0))
    );

    // Raising the budget: N is what the agent may still spend from now.
    let info = admin.set_budget(&a.id, Some(500)).await.unwrap();
    assert_eq!(
        (info.budget, info.used, info.remaining),
        (Some(500), 0, Some(500))
    );
    let v = send(vec![a.request(50, 100)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: Some(100),
            remaining: Some(350)
        }
    );
    // Unlimited: the cap is granted as asked and nothing is reserved.
    admin.set_budget(&a.id, None).await.unwrap();
    let v = send(vec![a.request(50, 100)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: Some(100),
            remaining: None
        }
    );
    let mut uncapped = a.stamp(StampKind::Request);
    uncapped.flags = flags::UNCAPPED;
    let v = send(vec![a.sign(uncapped)]).await;
    assert_eq!(
        v,
        Verdict::Ok {
            grant: None,
            remaining: None
        }
    );
}

#[tokio::test]
async fn uncapped_requests_get_the_default_cap_under_a_budget() {
    let server = Server::start_with(|c| c.default_output_cap = 256).await;
    let mut a = server.agent("uncapped").await;
    server
        .admin()
        .set_budget(&a.id, Some(10_000))
        .await
        .unwrap();
    let mut s = a.stamp(StampKind::Request);
    s.flags = flags::UNCAPPED;
    s.tokens_in = 44;
    let r = server.gateway().append(&[a.sign(s)]).await.unwrap().results;
    assert_eq!(
        r[0].verdict,
        Verdict::Ok {
            grant: Some(256),
            remaining: Some(9_700)
        }
    );
}

/// 50 request stamps in one batch against 1,000 tokens: reservations add up to at most 1,000.
#[tokio::test]
async fn fifty_requests_in_one_batch_never_exceed_the_budget() {
    let server = Server::start().await;
    let mut a = server.agent("batch").await;
    server.admin().set_budget(&a.id, Some(1000)).await.unwrap();
    let stamps: Vec<_> = (0..50).map(|_| a.request(5, 50)).collect();
    let results = server.gateway().append(&stamps).await.unwrap().results;
    let granted: Vec<u64> = results.iter().filter_map(grant_of).map(|g| g.0).collect();
    let spent: u64 = granted.iter().map(|g| g + 5).sum();
    assert_eq!(spent, 1000, "reserved exactly what was there");
    assert_eq!(granted.len(), 19, "{granted:?}");
    assert_eq!(granted[18], 5, "the last one gets what was left");
    assert!(results[19..].iter().all(|r| r.verdict == Verdict::Budget));
    assert_eq!(
        server.admin().agent(&a.id).await.unwrap().remaining,
        Some(0)
    );
}

/// Many agents at once, each with its own 1,000-token budget and 50 requests in flight
/// (sent as ten back-to-back calls of five, as a gateway's chain writer would): no agent is
/// ever granted more than its budget, whatever the interleaving in the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_agents_never_exceed_their_budgets() {
    let server = Server::start().await;
    let mut agents = Vec::new();
    for i in 0..10 {
        let a = server.agent(&format!("conc-{i}")).await;
        server.admin().set_budget(&a.id, Some(1000)).await.unwrap();
        agents.push(a);
    }
    let tasks: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            let gateway = server.gateway();
            tokio::spawn(async move {
                let mut reserved = 0;
                let mut refused = 0;
                for _ in 0..10 {
                    let stamps: Vec<_> = (0..5).map(|_| a.request(3 + i as u64, 40)).collect();
                    for r in gateway.append(&stamps).await.unwrap().results {
                        match grant_of(&r) {
                            Some((g, _)) => reserved += g + 3 + i as u64,
                            None => {
                                assert_eq!(r.verdict, Verdict::Budget);
                                refused += 1;
                            }
                        }
                    }
                }
                (a, reserved, refused)
            })
        })
        .collect();
    for t in tasks {
        let (a, reserved, refused) = t.await.unwrap();
        assert!(reserved <= 1000, "{}: {reserved} reserved", a.id);
        assert!(
            reserved > 950 && refused > 0,
            "{}: {reserved}, {refused}",
            a.id
        );
        let info = server.admin().agent(&a.id).await.unwrap();
        assert_eq!(info.reserved, reserved);
        assert_eq!(info.seq, 50);
    }
}

#[tokio::test]
async fn unsettled_reservations_expire_and_survive_restarts_until_then() {
    let mut server =
        Server::start_with(|c| c.reservation_ttl = std::time::Duration::from_secs(60)).await;
    let mut a = server.agent("lost").await;
    server.admin().set_budget(&a.id, Some(1000)).await.unwrap();
    let r = server
        .gateway()
        .append(&[a.request(100, 400)])
        .await
        .unwrap()
        .results;
    assert_eq!(grant_of(&r[0]), Some((400, Some(500))));

    // The response never comes. A restart rebuilds the reservation from the ledger…
    server.clock.advance_ms(30_000);
    server.restart().await;
    let info = server.admin().agent(&a.id).await.unwrap();
    assert_eq!((info.reserved, info.remaining), (500, Some(500)));
    // …and a settled one is not rebuilt.
    let r = server
        .gateway()
        .append(&[a.request(10, 10), a.response(2, 10, 10)])
        .await
        .unwrap()
        .results;
    assert!(r.iter().all(|r| r.verdict.appended()));
    server.restart().await;
    let info = server.admin().agent(&a.id).await.unwrap();
    assert_eq!((info.reserved, info.used), (500, 20));
    // After the TTL the tokens come back.
    server.clock.advance_ms(30_001);
    let info = server.admin().agent(&a.id).await.unwrap();
    assert_eq!((info.reserved, info.remaining), (0, Some(980)));
    server.restart().await;
    assert_eq!(server.admin().agent(&a.id).await.unwrap().reserved, 0);
}
