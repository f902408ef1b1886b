//! Ids in paths and bodies: one that breaks the naming rule (so can name no sandbox or
//! template) is answered exactly as an unknown one that keeps the rule.

use crate::support::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

/// Status and error body of a request.
async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn ids_that_break_the_rule_are_answered_as_unknown_ones() {
    let t = TestServer::start().await;
    let a = t.account("ids@example.com").await;
    let k = a.key.as_str();
    // Valid (the rule) but unknown, and invalid: upper case, a dot first, too long.
    let long = "a".repeat(64);
    let unknown = "sb-nosuchsandbox";
    let routes: [(Method, &str, Value); 14] = [
        (Method::GET, "/v1/sandboxes/{}", Value::Null),
        (Method::DELETE, "/v1/sandboxes/{}", Value::Null),
        (Method::POST, "/v1/sandboxes/{}/pause", Value::Null),
        (Method::POST, "/v1/sandboxes/{}/resume", Value::Null),
        (Method::POST, "/v1/sandboxes/{}/ping", Value::Null),
        (
            Method::POST,
            "/v1/sandboxes/{}/exec",
            json!({"cmd": "true"}),
        ),
        (
            Method::POST,
            "/v1/sandboxes/{}/files/read",
            json!({"path": "/a"}),
        ),
        (Method::GET, "/v1/capsules/{}", Value::Null),
        (Method::POST, "/v1/capsules/{}/pause", Value::Null),
        (Method::GET, "/v1/capsules/{}/processes", Value::Null),
        (Method::DELETE, "/v1/capsules/{}/processes/1", Value::Null),
        (
            Method::POST,
            "/v1/capsules/{}/files/list",
            json!({"path": "/"}),
        ),
        (Method::GET, "/v1/capsules/{}/metrics", Value::Null),
        (Method::DELETE, "/v1/snapshots/{}", Value::Null),
    ];
    for (method, path, body) in routes {
        let send = |id: &str| {
            let mut r = t.keyed(method.clone(), &path.replace("{}", id), k);
            if !body.is_null() {
                r = r.json(&body);
            }
            r.send()
        };
        let (want_status, want) = answer(send(unknown).await.unwrap()).await;
        assert_eq!(want_status, 404, "{method} {path}: {want}");
        for bad in ["SB-X", ".x", long.as_str()] {
            let (status, got) = answer(send(bad).await.unwrap()).await;
            assert_eq!(status, want_status, "{method} {path} {bad}: {got}");
            assert_eq!(
                got["error"]["code"], want["error"]["code"],
                "{method} {path} {bad}"
            );
        }
    }
    // A snapshot of a sandbox id that breaks the rule: as one of an unknown sandbox.
    let mut answers = Vec::new();
    for id in [unknown, "SB-X"] {
        let r = t
            .keyed(Method::POST, "/v1/snapshots", k)
            .json(&json!({"sandbox_id": id, "name": "snap"}))
            .send()
            .await
            .unwrap();
        let (status, got) = answer(r).await;
        answers.push((status, got["error"]["code"].clone()));
    }
    assert_eq!(answers[0], (404, json!("sandbox_not_found")));
    assert_eq!(answers[1], answers[0]);
}
