//! Background processes end to end: the real `wrenn up` (control plane, host agent) as a
//! child process and a real microVM, driven through `/v1/capsules/{id}/exec` and
//! `/v1/capsules/{id}/processes…` as the SDK's `Commands` calls them. A background process
//! is started, listed, attached to (getting the output it made while nobody was attached),
//! killed by tag; another survives a pause and resume of its VM and goes on running.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`) built with
//! this tree's envd. Slots 9700-9749, network prefix `cp`.
//! Run: `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test procs_e2e`

mod common;

use common::{enter, rt, Api};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn attach(api: &Api, id: &str, selector: &str) -> Ws {
    let url = api
        .suite
        .url(&format!("/v1/capsules/{id}/processes/{selector}/stream"))
        .replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", api.key.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("attach")
        .0
}

/// Reads events until `until` holds for the events so far, or the stream ends (60 s at most).
async fn read_until(ws: &mut Ws, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no event in time; so far: {events:?}"))
        {
            Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    events
}

fn text(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["data"].as_str().unwrap_or_default())
        .collect()
}

async fn background(api: &Api, id: &str, script: &str, tag: &str, envs: Value) -> u64 {
    let (s, v) = api
        .post(
            &format!("/v1/capsules/{id}/exec"),
            json!({"cmd": "/bin/sh", "args": ["-c", script], "background": true,
                   "tag": tag, "envs": envs, "cwd": "/tmp"}),
        )
        .await;
    assert_eq!(s, 202, "background exec: {v}");
    assert_eq!(v["tag"], tag);
    v["pid"].as_u64().expect("pid")
}

async fn listed(api: &Api, id: &str) -> Vec<Value> {
    let (s, v) = api.get(&format!("/v1/capsules/{id}/processes")).await;
    assert_eq!(s, 200, "list: {v}");
    v["processes"].as_array().expect("processes").clone()
}

#[test]
fn background_processes_in_a_real_vm() {
    common::use_slots("cp", 9700);
    rt().block_on(async {
        let t = enter().await;
        let api = t.suite.api(&t.suite.alice);
        let (sb, _) = api.create(json!({})).await;
        let id = sb["id"].as_str().unwrap().to_string();

        // Foreground, as `Commands.run` sends it: envs and cwd apply.
        let (s, v) = api
            .post(
                &format!("/v1/capsules/{id}/exec"),
                json!({"cmd": "/bin/sh", "args": ["-c", "echo $GREETING; pwd"],
                       "background": false, "timeout_sec": 60,
                       "envs": {"GREETING": "hello"}, "cwd": "/tmp"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["stdout"].as_str(), v["exit_code"].as_i64()),
            (Some("hello\n/tmp\n"), Some(0))
        );

        // Started, listed, attached to late: the output made before comes first.
        let pid = background(
            &api,
            &id,
            "echo \"early $GREETING in $(pwd)\"; echo warn >&2; sleep 600",
            "srv",
            json!({"GREETING": "hi"}),
        )
        .await;
        let procs = listed(&api, &id).await;
        let p = procs
            .iter()
            .find(|p| p["tag"] == "srv")
            .unwrap_or_else(|| panic!("srv not listed: {procs:?}"));
        assert_eq!(p["pid"], pid);
        assert_eq!(p["cmd"], "/bin/sh");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut ws = attach(&api, &id, &pid.to_string()).await;
        let events = read_until(&mut ws, |e| {
            text(e, "stdout").contains('\n') && text(e, "stderr").contains('\n')
        })
        .await;
        assert_eq!(events[0], json!({"type": "start", "pid": pid}));
        assert_eq!(text(&events, "stdout"), "early hi in /tmp\n");
        assert_eq!(text(&events, "stderr"), "warn\n");

        // Killed by tag: the attached client sees the exit; the list no longer has it.
        let (s, v) = api
            .delete(&format!("/v1/capsules/{id}/processes/srv?signal=SIGTERM"))
            .await;
        assert_eq!(s, 204, "{v}");
        let events = read_until(&mut ws, |e| e.last().is_some_and(|e| e["type"] == "exit")).await;
        assert_eq!(
            events.last().unwrap(),
            &json!({"type": "exit", "exit_code": -1})
        );
        assert!(listed(&api, &id).await.iter().all(|p| p["tag"] != "srv"));
        let (s, v) = api
            .delete(&format!("/v1/capsules/{id}/processes/srv"))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{v}"
        );

        // A process survives a pause and resume of its VM and goes on where it was.
        let script =
            "echo before; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo after; sleep 600";
        let pid = background(&api, &id, script, "survivor", json!({})).await;
        let mut ws = attach(&api, &id, "survivor").await;
        read_until(&mut ws, |e| text(e, "stdout").contains("before")).await;
        drop(ws);
        api.pause(&id).await;
        let (s, v) = api.get(&format!("/v1/capsules/{id}/processes")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("invalid_state")),
            "{v}"
        );
        api.resume(&id).await;
        let procs = listed(&api, &id).await;
        assert!(
            procs
                .iter()
                .any(|p| p["tag"] == "survivor" && p["pid"] == pid),
            "not listed after resume: {procs:?}"
        );
        api.sh(&id, "touch /tmp/go").await;
        let mut ws = attach(&api, &id, "survivor").await;
        let events = read_until(&mut ws, |e| text(e, "stdout").contains("after")).await;
        assert_eq!(text(&events, "stdout"), "before\nafter\n");
        let (s, v) = api
            .delete(&format!("/v1/capsules/{id}/processes/{pid}"))
            .await;
        assert_eq!(s, 204, "{v}");
        let events = read_until(&mut ws, |e| e.last().is_some_and(|e| e["type"] == "exit")).await;
        assert_eq!(events.last().unwrap()["exit_code"], -1);

        api.destroy(&id).await;
        drop(t);
        let s = common::started_suite().expect("suite");
        let _x = common::enter_exclusive().await;
        let status = s.stop(nix::sys::signal::Signal::SIGTERM).await;
        assert!(status.success(), "wrenn up exit: {status}");
    });
}
