//! Limits on exec against the simulated agent: the configured output cap reaches the agent and
//! its truncation flags and byte counts come back on `/v1/sandboxes/{id}/exec` and the
//! capsules' foreground exec; execs and streams over the per-sandbox or per-team limit are
//! `429 quota_exceeded` (a stream's before the upgrade), and a slot is given back when its
//! exec answers or its stream ends.

mod support;

use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::{assert_error, TestServer};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use wrenn_server::config::ExecLimits;

async fn server(limits: ExecLimits) -> TestServer {
    TestServer::start_with(move |c| {
        c.exec_limits = limits;
        c.reaper_interval = Duration::from_secs(3600);
        c.reconcile_interval = Duration::from_secs(3600);
    })
    .await
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn output_is_capped_and_the_answer_says_so() {
    let t = server(ExecLimits {
        max_output_bytes: 1000,
        ..ExecLimits::default()
    })
    .await;
    let acc = t.account("cap@example.com").await;
    let sb = t.sandbox(&acc.key, json!({})).await;
    let id = sb["id"].as_str().unwrap();

    // `seq 1000` prints 3893 bytes: 1000 of them come back.
    let v = json_of(
        t.exec(&acc.key, id, json!({"cmd": "seq", "args": ["1000"]}))
            .await,
    )
    .await;
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1000);
    assert!(v["stdout"].as_str().unwrap().starts_with("1\n2\n3\n"));
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stderr_truncated"], false);
    assert_eq!(v["stdout_bytes"], 3893);
    assert_eq!(v["stderr_bytes"], 0);

    // Under the cap nothing is cut and the counts are the output's length.
    let v = json_of(
        t.exec(&acc.key, id, json!({"cmd": "echo", "args": ["hi"]}))
            .await,
    )
    .await;
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["stdout_truncated"], false);
    assert_eq!(v["stdout_bytes"], 3);

    // The capsules' foreground exec is the same exec.
    let r = t
        .keyed(Method::POST, &format!("/v1/capsules/{id}/exec"), &acc.key)
        .json(&json!({"cmd": "seq", "args": ["1000"]}))
        .send()
        .await
        .unwrap();
    let v = json_of(r).await;
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1000, "{v}");
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stdout_bytes"], 3893);
}

/// Starts a buffered `sleep secs` on `id` in the background; its answer's status.
fn sleeper(t: &TestServer, key: &str, id: &str, secs: &str) -> tokio::task::JoinHandle<u16> {
    let req = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/exec"), key)
        .json(&json!({"cmd": "sleep", "args": [secs]}))
        .send();
    tokio::spawn(async move { req.await.unwrap().status().as_u16() })
}

async fn stream(t: &TestServer, id: &str, key: &str) -> Result<(), u16> {
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        t.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            Ok(())
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

#[tokio::test]
async fn concurrent_execs_over_the_limits_are_429() {
    let t = server(ExecLimits {
        per_sandbox: 2,
        per_team: 3,
        ..ExecLimits::default()
    })
    .await;
    let acc = t.account("busy@example.com").await;
    let other = t.account("other@example.com").await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let sb = t.sandbox(&acc.key, json!({})).await;
            v.push(sb["id"].as_str().unwrap().to_string());
        }
        v
    };
    let theirs = t.sandbox(&other.key, json!({})).await;
    let theirs = theirs["id"].as_str().unwrap().to_string();

    // Two on the first sandbox fill it.
    let held = [
        sleeper(&t, &acc.key, &ids[0], "3"),
        sleeper(&t, &acc.key, &ids[0], "3"),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = assert_error(
        t.exec(&acc.key, &ids[0], json!({"cmd": "echo", "args": ["x"]}))
            .await,
        429,
        "quota_exceeded",
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per sandbox"),
        "{v}"
    );
    // A stream is refused the same way, before the upgrade.
    assert_eq!(stream(&t, &ids[0], &acc.key).await, Err(429));

    // A third on another sandbox fills the team.
    let third = sleeper(&t, &acc.key, &ids[1], "3");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = assert_error(
        t.exec(&acc.key, &ids[2], json!({"cmd": "echo", "args": ["x"]}))
            .await,
        429,
        "quota_exceeded",
    )
    .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("per team"),
        "{v}"
    );
    // Another team is not held back.
    let r = t
        .exec(&other.key, &theirs, json!({"cmd": "echo", "args": ["x"]}))
        .await;
    assert_eq!(r.status(), 200);

    // Once they answer, the slots are free again.
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(third.await.unwrap(), 200);
    let r = t
        .exec(&acc.key, &ids[0], json!({"cmd": "echo", "args": ["x"]}))
        .await;
    assert_eq!(r.status(), 200);
    // A stream that ended gave its slot back too (once the server saw it close).
    for _ in 0..3 {
        assert_eq!(stream(&t, &ids[2], &acc.key).await, Ok(()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b) = (
        sleeper(&t, &acc.key, &ids[2], "0.5"),
        sleeper(&t, &acc.key, &ids[2], "0.5"),
    );
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (200, 200));
}

#[tokio::test]
async fn exec_stream_slot_is_held_while_it_runs() {
    let t = server(ExecLimits {
        per_sandbox: 1,
        ..ExecLimits::default()
    })
    .await;
    let acc = t.account("held@example.com").await;
    let sb = t.sandbox(&acc.key, json!({})).await;
    let id = sb["id"].as_str().unwrap();
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        t.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", acc.key.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "start", "cmd": "sleep", "args": ["600"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_error(
        t.exec(&acc.key, id, json!({"cmd": "echo", "args": ["x"]}))
            .await,
        429,
        "quota_exceeded",
    )
    .await;
    drop(ws);
    // The server notices the closed socket and gives the slot back.
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = t
            .exec(&acc.key, id, json!({"cmd": "echo", "args": ["x"]}))
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
}
