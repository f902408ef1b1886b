//! A tenant's error body never carries the host's details: with the (simulated) agent
//! answering errors full of host paths, addresses and command lines, the 5xx body is the
//! failure's kind and the request id (the detail is in the log under that id), and the 4xx
//! bodies that pass the agent's words on have them stripped.

mod support;

use reqwest::Method;
use serde_json::json;
use support::TestServer;
use wrenn_server::agent::sim_faults::SimOp;
use wrenn_types::agent::AgentErrorCode;

const HOST_WORDS: &str = "qemu-system-x86_64 -drive file=/var/lib/wrenn/sandboxes/sb-1/disk.qcow2 \
     failed; agent http://10.0.0.7:7070/v1 guest 10.11.0.2:49983";

/// The body and request id of an answer; asserts the status.
async fn answer(r: reqwest::Response, status: u16) -> (String, String) {
    assert_eq!(r.status().as_u16(), status);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    (r.text().await.unwrap(), id)
}

fn assert_clean(body: &str) {
    for leak in [
        "/var/lib",
        "wrenn/",
        "10.0.0.7",
        "10.11.0.2",
        "7070",
        "qemu",
        "-drive",
    ] {
        assert!(!body.contains(leak), "{leak:?} in {body}");
    }
}

#[tokio::test]
async fn agent_failures_reach_tenants_without_host_details() {
    let t = TestServer::start().await;
    let k = t.account("tenant@example.com").await.key;

    // A 502: the kind and the request id, nothing of the agent's words.
    t.sim
        .set_fail_with(SimOp::Create, AgentErrorCode::Internal, HOST_WORDS);
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &k)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (body, id) = answer(r, 502).await;
    assert_clean(&body);
    assert!(body.contains(&id), "no request id {id} in {body}");
    assert!(body.contains("agent_error"), "{body}");

    // The client's own request id is the one named.
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &k)
        .header("x-request-id", "trace-me-42")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (body, _) = answer(r, 502).await;
    assert!(body.contains("trace-me-42"), "{body}");
    t.sim.set_fail(SimOp::Create, false);

    // A 409 passes the agent's message on, stripped.
    let sb = t.sandbox(&k, json!({})).await;
    let id = sb["id"].as_str().unwrap();
    t.sim
        .set_fail_with(SimOp::Pause, AgentErrorCode::Conflict, HOST_WORDS);
    let (body, _) = answer(t.op(&k, id, "pause").await, 409).await;
    assert_clean(&body);
    assert!(body.contains("conflict"), "{body}");
    t.sim.set_fail(SimOp::Pause, false);

    // A 400 likewise.
    t.sim.set_fail_with(
        SimOp::Pause,
        AgentErrorCode::BadRequest,
        "cannot pause: /run/wrenn/qmp-sb-1.sock refused at 10.0.0.7:7070",
    );
    let (body, _) = answer(t.op(&k, id, "pause").await, 400).await;
    assert_clean(&body);
    assert!(body.contains("cannot pause"), "{body}");
}
