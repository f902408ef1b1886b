//! The per-sandbox egress policy (`network` on create) against the simulated agent: what the
//! control plane refuses before any host is asked (counts, syntax, allowing what no sandbox
//! may reach), and that a valid policy reaches the agent as given, on `/v1/sandboxes` and
//! `/v1/capsules` alike.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{assert_error, TestServer};
use wrenn_types::network::SandboxNetwork;

async fn create(t: &TestServer, key: &str, path: &str, body: Value) -> reqwest::Response {
    t.keyed(Method::POST, path, key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_valid_policy_reaches_the_agent_on_both_apis() {
    let t = TestServer::start().await;
    let a = t.account("net-pass@example.com").await;
    let network = json!({
        "allow_internet_access": false,
        "allow_out": ["10.200.0.0/16", "db.internal.example"],
        "deny_out": ["203.0.113.7"]
    });
    let want = SandboxNetwork {
        allow_internet_access: Some(false),
        allow_out: vec!["10.200.0.0/16".into(), "db.internal.example".into()],
        deny_out: vec!["203.0.113.7".into()],
    };
    for path in ["/v1/sandboxes", "/v1/capsules"] {
        let r = create(&t, &a.key, path, json!({"network": network})).await;
        assert_eq!(r.status(), 201, "{path}");
        let v: Value = r.json().await.unwrap();
        let id = v["id"].as_str().unwrap();
        assert_eq!(t.sim.sandbox_network(id), Some(want.clone()), "{path}");
    }
    // Without the field the agent is given no policy (the default one).
    let v = t.sandbox(&a.key, json!({})).await;
    assert_eq!(t.sim.sandbox_network(v["id"].as_str().unwrap()), None);
    // `internet` is accepted for `allow_internet_access`.
    let r = create(
        &t,
        &a.key,
        "/v1/capsules",
        json!({"network": {"internet": false}}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let got = t.sim.sandbox_network(v["id"].as_str().unwrap()).unwrap();
    assert!(!got.internet());
}

#[tokio::test]
async fn invalid_policies_are_refused_before_any_host_is_asked() {
    let t = TestServer::start().await;
    let a = t.account("net-bad@example.com").await;
    let too_many: Vec<String> = (0..65).map(|i| format!("198.51.100.{i}")).collect();
    let names: Vec<String> = (0..17).map(|i| format!("h{i}.example.com")).collect();
    let cases = [
        (json!({"allow_out": ["10.0.0.1/8"]}), "bits set"),
        (json!({"allow_out": ["not a host"]}), "neither"),
        (json!({"deny_out": ["10.0.0.0/33"]}), "prefix length"),
        (json!({"allow_out": ["127.0.0.1"]}), "loopback"),
        (json!({"allow_out": ["10.11.0.0/24"]}), "sandboxes"),
        (json!({"allow_out": ["0.0.0.0/0"]}), "overlaps"),
        (json!({"deny_out": too_many}), "at most 64"),
        (json!({"allow_out": names}), "domain names"),
        (json!({"allow_out": "1.2.3.4"}), ""),
        (json!({"allow_internet_access": "yes"}), ""),
    ];
    // Each API answers in its own words: the seed's `bad_request`, the SDK's
    // `invalid_request`.
    for (path, code) in [
        ("/v1/sandboxes", "bad_request"),
        ("/v1/capsules", "invalid_request"),
    ] {
        for (network, why) in &cases {
            let r = create(&t, &a.key, path, json!({"network": network})).await;
            if why.is_empty() {
                // Wrong types are a malformed body.
                assert_eq!(r.status(), 400, "{path} {network}");
                continue;
            }
            let v = assert_error(r, 400, code).await;
            let msg = v.to_string();
            assert!(msg.contains(why), "{path} {network}: {msg}");
            // Nothing of the host's address plan leaks into the message.
            assert!(!msg.contains("10.12."), "{msg}");
        }
    }
    // No sandbox was made for any of them.
    let list: Value = t
        .keyed(Method::GET, "/v1/sandboxes", &a.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}
