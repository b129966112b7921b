//! Sentinel over HTTP: a burst after a steady rate opens the breaker and records an alert;
//! the same traffic spread evenly does not; unlock resets it.

mod common;

use common::{Server, TestAgent};
use lockstock::api::{SentinelUpdate, Verdict};
use lockstock::client::ControlPlane;

async fn send(gateway: &ControlPlane, a: &mut TestAgent, n: usize) -> Vec<Verdict> {
    let stamps: Vec<_> = (0..n).map(|_| a.request(1, 1)).collect();
    gateway
        .append(&stamps)
        .await
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.verdict)
        .collect()
}

fn tripped(verdicts: &[Verdict]) -> Option<usize> {
    verdicts
        .iter()
        .position(|v| matches!(v, Verdict::Breaker { .. }))
}

#[tokio::test]
async fn a_burst_after_a_steady_rate_trips_while_steady_traffic_does_not() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut bursty = server.agent("bursty").await;
    let mut steady = server.agent("steady").await;
    let short_warmup = SentinelUpdate {
        warmup_secs: Some(10),
        ..Default::default()
    };
    admin.set_sentinel(&bursty.id, &short_warmup).await.unwrap();
    admin.set_sentinel(&steady.id, &short_warmup).await.unwrap();

    // One simulated minute: bursty at 5/s, steady at 6/s…
    for _ in 0..60 {
        assert_eq!(tripped(&send(&gateway, &mut bursty, 5).await), None);
        assert_eq!(tripped(&send(&gateway, &mut steady, 6).await), None);
        server.clock.advance_ms(1000);
    }
    // …then bursty fires 80 in one second (380 in 61 s) while steady keeps 6/s (366 + 14).
    let burst = send(&gateway, &mut bursty, 80).await;
    let at = tripped(&burst).expect("the burst trips the breaker");
    assert_eq!(at, 60, "the 61st request of the second exceeds min_burst");
    assert!(burst[..at].iter().all(|v| matches!(v, Verdict::Ok { .. })));
    assert!(
        burst[at..]
            .iter()
            .all(|v| matches!(v, Verdict::Breaker { .. }))
    );
    assert_eq!(tripped(&send(&gateway, &mut steady, 20).await), None);
    server.clock.advance_ms(1000);
    for _ in 0..30 {
        assert_eq!(tripped(&send(&gateway, &mut steady, 6).await), None);
        server.clock.advance_ms(1000);
    }

    let Verdict::Breaker { reason } = &burst[at] else {
        unreachable!()
    };
    assert!(reason.contains("61 requests in one second"), "{reason}");
    let alerts = admin.alerts().await.unwrap().alerts;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].agent_id, bursty.id);
    assert_eq!(&alerts[0].reason, reason);
    let info = admin.agent(&bursty.id).await.unwrap();
    assert_eq!(info.breaker.as_deref(), Some(reason.as_str()));
    assert!(admin.agent(&steady.id).await.unwrap().breaker.is_none());

    // The breaker stays open, also in later seconds and across a restart; responses settle.
    server.clock.advance_ms(120_000);
    let mut server = server;
    server.restart().await;
    let gateway = server.gateway();
    assert!(matches!(
        send(&gateway, &mut bursty, 1).await[0],
        Verdict::Breaker { .. }
    ));
    let settle = vec![bursty.response(1, 1, 1)];
    assert!(matches!(
        gateway.append(&settle).await.unwrap().results[0].verdict,
        Verdict::Ok { .. }
    ));

    // Unlock closes it and restarts the statistics (warm-up again: a burst is tolerated).
    let info = server.admin().unlock(&bursty.id).await.unwrap();
    assert!(info.breaker.is_none());
    assert_eq!(tripped(&send(&gateway, &mut bursty, 100).await), None);
}

#[tokio::test]
async fn the_hard_cap_applies_from_the_first_request_and_can_be_turned_off() {
    let server = Server::start().await;
    let gateway = server.gateway();
    let admin = server.admin();
    let mut a = server.agent("capped").await;
    let info = admin
        .set_sentinel(
            &a.id,
            &SentinelUpdate {
                max_per_minute: Some(Some(100)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(info.sentinel.max_per_minute, Some(100));
    assert_eq!(
        info.sentinel.warmup_secs, 300,
        "untouched fields keep their values"
    );
    for _ in 0..5 {
        assert_eq!(tripped(&send(&gateway, &mut a, 20).await), None);
        server.clock.advance_ms(10_000);
    }
    let v = send(&gateway, &mut a, 1).await;
    let Verdict::Breaker { reason } = &v[0] else {
        panic!("{v:?}")
    };
    assert!(reason.contains("cap of 100 per minute"), "{reason}");

    // Disabled: nothing trips.
    admin.unlock(&a.id).await.unwrap();
    admin
        .set_sentinel(
            &a.id,
            &SentinelUpdate {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tripped(&send(&gateway, &mut a, 500).await), None);

    // Nonsense settings are refused with a sentence.
    for bad in [
        SentinelUpdate {
            sensitivity: Some(-1.0),
            ..Default::default()
        },
        SentinelUpdate {
            max_per_minute: Some(Some(0)),
            ..Default::default()
        },
    ] {
        let e = admin.set_sentinel(&a.id, &bad).await.unwrap_err();
        assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
    }
    // A null cap clears it.
    let info = admin
        .set_sentinel(
            &a.id,
            &SentinelUpdate {
                max_per_minute: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(info.sentinel.max_per_minute, None);
}
