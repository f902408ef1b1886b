//! Background processes against the real daemon: start, list, attach (the output produced
//! while nobody was attached first, a `dropped` count when the ring overflowed), kill by pid
//! or tag with a signal, the exit kept after the process ended, and the table's bounds.

mod common;

use common::{assert_error, http, wait_gone, Envd};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

async fn start(envd: &Envd, body: Value) -> (u16, Value) {
    let resp = http()
        .post(envd.url("/processes"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

async fn list(envd: &Envd) -> Vec<Value> {
    let v: Value = http()
        .get(envd.url("/processes"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    v["processes"].as_array().expect("processes").clone()
}

async fn kill(envd: &Envd, selector: &str, signal: Option<&str>) -> (u16, Option<Value>) {
    let mut req = http().delete(envd.url(&format!("/processes/{selector}")));
    if let Some(s) = signal {
        req = req.query(&[("signal", s)]);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.ok())
}

/// Every message of an attach session until the server closes it (at most 30 s).
async fn attach(envd: &Envd, selector: &str) -> Vec<Value> {
    let url = format!("ws://{}/processes/{selector}/stream", envd.addr);
    let (mut ws, _) = connect_async(url).await.expect("connect");
    let mut msgs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("attach ended within 30 s")
        {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return msgs,
            Some(Ok(Message::Text(t))) => msgs.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(_)) => {}
        }
    }
}

fn text_of(msgs: &[Value], kind: &str) -> String {
    msgs.iter()
        .filter(|m| m["type"] == kind)
        .map(|m| m["data"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn wait_exited(envd: &Envd, pid: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = list(envd)
            .await
            .into_iter()
            .find(|p| p["pid"] == pid)
            .expect("process still listed");
        if !p["exit_code"].is_null() {
            return p;
        }
        assert!(Instant::now() < deadline, "process {pid} did not exit: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn output_made_before_attaching_comes_first_then_live_output_and_the_kill() {
    let envd = Envd::start();
    let script = "echo \"early $FOO in $(pwd)\"; echo oops >&2; \
                  while [ ! -e go ]; do sleep 0.05; done; echo late; sleep 60";
    let dir = tempfile::tempdir().unwrap();
    let (status, p) = start(
        &envd,
        json!({"cmd": "/bin/sh", "args": ["-c", script], "tag": "srv",
               "env": {"FOO": "bar"}, "cwd": dir.path()}),
    )
    .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(
        (p["tag"].as_str(), p["running"].as_bool()),
        (Some("srv"), Some(true))
    );
    let pid = p["pid"].as_u64().unwrap();

    let listed = list(&envd).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["cmd"], "/bin/sh");
    assert_eq!(listed[0]["args"][1], script);

    // A second process may not take a running process's tag.
    let (status, body) = start(&envd, json!({"cmd": "true", "tag": "srv"})).await;
    assert_error(status, &body, 409, "process_conflict");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("ws://{}/processes/srv/stream", envd.addr);
    let (mut ws, _) = connect_async(url).await.expect("connect");
    let mut msgs: Vec<Value> = Vec::new();
    let mut released = false;
    let mut killed = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        let Message::Text(t) = m else { continue };
        msgs.push(serde_json::from_str(t.as_str()).unwrap());
        let out = text_of(&msgs, "stdout");
        if !released && out.contains("early") {
            std::fs::write(dir.path().join("go"), b"").unwrap();
            released = true;
        }
        if !killed && out.contains("late") {
            assert_eq!(kill(&envd, "srv", Some("SIGTERM")).await.0, 204);
            killed = true;
        }
        if msgs.last().unwrap()["type"] == "exit" {
            break;
        }
    }
    assert_eq!(msgs[0], json!({"type": "start", "pid": pid}));
    let dir_text = dir.path().canonicalize().unwrap();
    assert_eq!(
        text_of(&msgs, "stdout"),
        format!("early bar in {}\nlate\n", dir_text.display())
    );
    assert_eq!(text_of(&msgs, "stderr"), "oops\n");
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"type": "exit", "exit_code": -1})
    );
    assert!(wait_gone(pid as u32));

    // The exit is kept: listed as finished, a late attach gets the output and the exit, a kill
    // of a finished process is a 404.
    let p = wait_exited(&envd, pid).await;
    assert_eq!(
        (p["running"].as_bool(), p["exit_code"].as_i64()),
        (Some(false), Some(-1))
    );
    let again = attach(&envd, &pid.to_string()).await;
    assert!(text_of(&again, "stdout").contains("late"));
    assert_eq!(again.last().unwrap()["type"], "exit");
    let (status, body) = kill(&envd, "srv", None).await;
    assert_error(status, &body.unwrap(), 404, "process_not_found");
    // The tag of a finished process can be taken again.
    let (status, _) = start(&envd, json!({"cmd": "true", "tag": "srv"})).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_process_runs_on_without_a_client_and_its_exit_code_is_kept() {
    let envd = Envd::start();
    let (status, p) = start(
        &envd,
        json!({"cmd": "/bin/sh", "args": ["-c", "sleep 0.3; echo done; exit 3"]}),
    )
    .await;
    assert_eq!(status, 201, "{p}");
    let pid = p["pid"].as_u64().unwrap();
    assert_eq!(p["tag"], format!("proc-{pid}"));
    // Attach, leave at once: the process goes on.
    let url = format!("ws://{}/processes/{pid}/stream", envd.addr);
    let (ws, _) = connect_async(url).await.expect("connect");
    drop(ws);
    let p = wait_exited(&envd, pid).await;
    assert_eq!(p["exit_code"], 3);
    let msgs = attach(&envd, &format!("proc-{pid}")).await;
    assert_eq!(text_of(&msgs, "stdout"), "done\n");
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"type": "exit", "exit_code": 3})
    );
}

#[tokio::test]
async fn output_beyond_the_ring_is_dropped_and_counted() {
    let envd = Envd::start();
    // 3 MiB of 'a', then a marker: the ring keeps the last 1 MiB.
    let script = "head -c 3145728 /dev/zero | tr '\\0' a; echo; echo END";
    let (status, p) = start(&envd, json!({"cmd": "/bin/sh", "args": ["-c", script]})).await;
    assert_eq!(status, 201);
    let pid = p["pid"].as_u64().unwrap();
    wait_exited(&envd, pid).await;
    let msgs = attach(&envd, &pid.to_string()).await;
    assert_eq!(msgs[0]["type"], "start");
    assert_eq!(msgs[1]["type"], "dropped", "{}", msgs[1]);
    let dropped = msgs[1]["bytes"].as_u64().unwrap();
    let kept = text_of(&msgs, "stdout");
    assert!(kept.ends_with("\nEND\n"));
    assert_eq!(dropped + kept.len() as u64, 3145728 + 5);
    assert!(kept.len() <= 1024 * 1024, "{} bytes kept", kept.len());
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"type": "exit", "exit_code": 0})
    );
}

#[tokio::test]
async fn selectors_signals_and_the_table_are_bounded() {
    let envd = Envd::start();
    let (status, body) = kill(&envd, "12345678", None).await;
    assert_error(status, &body.unwrap(), 404, "process_not_found");
    let (status, body) = kill(&envd, "no-such-tag", None).await;
    assert_error(status, &body.unwrap(), 404, "process_not_found");
    let (status, body) = kill(&envd, "a%20b", None).await;
    assert_error(status, &body.unwrap(), 400, "bad_request");
    for bad in [
        json!({"cmd": "true", "tag": "123"}),
        json!({"cmd": "true", "tag": "a b"}),
    ] {
        let (status, body) = start(&envd, bad).await;
        assert_error(status, &body, 400, "bad_request");
    }
    let (status, body) = start(&envd, json!({"cmd": "/no/such/program"})).await;
    assert_error(status, &body, 400, "exec_failed");

    let mut pids = Vec::new();
    for i in 0..32 {
        let (status, p) = start(
            &envd,
            json!({"cmd": "sleep", "args": ["60"], "tag": format!("s{i}")}),
        )
        .await;
        assert_eq!(status, 201, "{p}");
        pids.push(p["pid"].as_u64().unwrap());
    }
    let (status, body) = start(&envd, json!({"cmd": "sleep", "args": ["60"]})).await;
    assert_error(status, &body, 409, "process_conflict");
    let (status, _) = kill(&envd, "s0", Some("SIGHUP")).await;
    assert_eq!(status, 400);
    // Once one has exited, its entry makes room.
    assert_eq!(kill(&envd, "s0", Some("SIGKILL")).await.0, 204);
    assert_eq!(kill(&envd, &pids[1].to_string(), None).await.0, 204);
    wait_exited(&envd, pids[0]).await;
    let (status, _) = start(&envd, json!({"cmd": "true"})).await;
    assert_eq!(status, 201);
    for pid in &pids[2..] {
        assert_eq!(kill(&envd, &pid.to_string(), None).await.0, 204);
        assert!(wait_gone(*pid as u32));
    }
}
