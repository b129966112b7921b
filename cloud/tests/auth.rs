//! Who may call what: the gateway key gets 403 on every admin route, anything else gets 401.

mod common;

use common::{Server, message, raw};
use lockstock::api::ProvisionRequest;

/// Every admin route, with a body it would accept from the admin key.
fn admin_routes(agent: &str) -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("POST", "/v1/agents".into(), r#"{"name":"x"}"#),
        ("GET", "/v1/agents".into(), ""),
        ("GET", format!("/v1/agents/{agent}"), ""),
        (
            "POST",
            format!("/v1/agents/{agent}/lock"),
            r#"{"reason":"r"}"#,
        ),
        ("POST", format!("/v1/agents/{agent}/unlock"), "{}"),
        (
            "PUT",
            format!("/v1/agents/{agent}/budget"),
            r#"{"tokens":5}"#,
        ),
        (
            "PUT",
            format!("/v1/agents/{agent}/sentinel"),
            r#"{"enabled":false}"#,
        ),
        (
            "GET",
            format!("/v1/agents/{agent}/stamps?after=0&limit=10"),
            "",
        ),
        ("GET", format!("/v1/agents/{agent}/blobs/1"), ""),
        ("GET", format!("/v1/agents/{agent}/keys"), ""),
        ("GET", "/v1/account".into(), ""),
        (
            "PUT",
            "/v1/account/key".into(),
            r#"{"public_key":"1111111111111111111111111111111111111111111111111111111111111111","verification_hash":"2222222222222222222222222222222222222222222222222222222222222222"}"#,
        ),
        ("GET", "/v1/alerts".into(), ""),
        ("POST", "/v1/keys/rotate-gateway".into(), "{}"),
    ]
}

fn gateway_routes(agent: &str) -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("POST", "/v1/agents/activate".into(), "{}"),
        ("POST", "/v1/stamps".into(), r#"{"stamps":[]}"#),
        ("POST", "/v1/blobs".into(), r#"{"blobs":[]}"#),
        ("POST", "/v1/keys".into(), r#"{"keys":[]}"#),
        ("GET", format!("/v1/agents/{agent}/policy"), ""),
    ]
}

#[tokio::test]
async fn the_gateway_key_gets_403_on_every_admin_route() {
    let server = Server::start().await;
    let agent = server.agent("target").await.id.to_string();
    let before = server.admin().agent(&agent.parse().unwrap()).await.unwrap();
    for (method, path, body) in admin_routes(&agent) {
        let (status, body) = raw(
            &server.url,
            method,
            &path,
            Some(server.gateway_key()),
            body.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["type"], "permission_error");
        assert!(message(&body).contains("admin key"), "{body}");
    }
    // Nothing changed: no agent provisioned, no lock, no budget, the gateway key still works.
    let after = server.admin().agent(&agent.parse().unwrap()).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(server.admin().agents().await.unwrap().agents.len(), 1);
    server
        .gateway()
        .policy(&agent.parse().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn no_key_or_a_wrong_key_gets_401_everywhere_but_health() {
    let server = Server::start().await;
    let agent = server.agent("target").await.id.to_string();
    let wrong_admin = format!("lsk_admin_{}", "0".repeat(64));
    let near_miss = format!("{}x", server.admin_key());
    let routes: Vec<_> = admin_routes(&agent)
        .into_iter()
        .chain(gateway_routes(&agent))
        .collect();
    for (method, path, body) in &routes {
        for key in [
            None,
            Some(wrong_admin.as_str()),
            Some(near_miss.as_str()),
            Some(""),
        ] {
            let (status, resp) =
                raw(&server.url, method, path, key, body.as_bytes().to_vec()).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {resp}");
            assert_eq!(resp["error"]["type"], "authentication_error");
            let text = resp.to_string();
            assert!(!text.contains(&near_miss), "never echo a key: {text}");
        }
    }
    // A key in the wrong scheme is refused too.
    let client = lockstock::http::client(Default::default());
    let req = http::Request::get(format!("{}/v1/agents", server.url))
        .header("authorization", format!("Basic {}", server.admin_key()))
        .body(lockstock::http::full(Vec::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 401);
    // Health is public on purpose (load balancers, container health checks).
    let (status, _) = raw(&server.url, "GET", "/v1/health", None, vec![]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_admin_key_may_do_gateway_work() {
    let server = Server::start().await;
    let admin = server.admin();
    let p = admin
        .provision(&ProvisionRequest {
            name: "self-service".into(),
            provider: None,
        })
        .await
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    admin
        .activate(&lockstock::api::ActivateRequest {
            agent_id: p.agent_id.clone(),
            genesis_token: p.genesis_token,
            public_key: hex::encode(key.verifying_key().as_bytes()),
        })
        .await
        .unwrap();
    let mut agent = common::TestAgent::new(p.agent_id.clone(), key);
    let r = admin.append(&[agent.request(1, 1)]).await.unwrap();
    assert!(r.results[0].verdict.appended());
    assert_eq!(admin.policy(&p.agent_id).await.unwrap().head, agent.head);
}

#[tokio::test]
async fn rotating_the_gateway_key_retires_the_old_one_at_once() {
    let server = Server::start().await;
    let old = server.gateway();
    old.health().await.unwrap();
    let agent = server.agent("rot").await;
    let new_key = server
        .admin()
        .rotate_gateway_key()
        .await
        .unwrap()
        .gateway_key;
    assert!(new_key.starts_with("lsk_gateway_") && new_key != server.gateway_key());
    let e = old.policy(&agent.id).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
    let new = server.client_with(&new_key);
    new.policy(&agent.id).await.unwrap();
    // The new key is a gateway key: still no admin work.
    let e = new.agents().await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403));
    // And it survives a restart (only its hash is stored).
    let mut server = server;
    server.restart().await;
    server
        .client_with(&new_key)
        .policy(&agent.id)
        .await
        .unwrap();
}
