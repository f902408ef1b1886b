//! `GET /exec/stream` (WebSocket) against the real daemon: output arrives while the command
//! runs, `stop` and a lost client kill the process group, errors are reported as messages.

mod common;

use common::{wait_gone, Envd};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(envd: &Envd, start: Value) -> Ws {
    let (mut ws, _) = connect_async(envd.ws_url()).await.expect("connect");
    ws.send(Message::Text(start.to_string().into()))
        .await
        .expect("send start");
    ws
}

/// The next JSON message, or `None` when the server closed the stream. Fails after 30 s.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no message within 30 s");
        match msg {
            None | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(t.as_str()).expect("json message"))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("websocket error: {e}"),
        }
    }
}

/// Collects every message until the server closes, with the time each arrived.
async fn collect(ws: &mut Ws) -> Vec<(Instant, Value)> {
    let mut all = Vec::new();
    while let Some(m) = next(ws).await {
        all.push((Instant::now(), m));
    }
    all
}

fn text_of(msgs: &[(Instant, Value)], kind: &str) -> String {
    msgs.iter()
        .filter(|(_, m)| m["type"] == kind)
        .map(|(_, m)| m["data"].as_str().expect("data"))
        .collect()
}

#[tokio::test]
async fn output_arrives_while_the_command_runs() {
    let envd = Envd::start();
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "sh", "args": ["-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done"]}),
    )
    .await;
    let msgs = collect(&mut ws).await;
    assert_eq!(msgs[0].1["type"], "start", "{msgs:?}");
    assert!(msgs[0].1["pid"].as_u64().is_some_and(|p| p > 0));
    let (exit_at, exit) = msgs.last().expect("messages");
    assert_eq!(exit, &json!({"type": "exit", "exit_code": 0}));

    let stdout: Vec<&(Instant, Value)> =
        msgs.iter().filter(|(_, m)| m["type"] == "stdout").collect();
    assert!(stdout.len() >= 3, "output was not streamed: {msgs:?}");
    assert_eq!(
        text_of(&msgs, "stdout"),
        "line1\nline2\nline3\nline4\nline5\n"
    );
    // The first line was delivered while the command still had four sleeps to go.
    let lead = exit_at.duration_since(stdout[0].0);
    assert!(
        lead > Duration::from_millis(600),
        "first line only {lead:?} before exit"
    );
}

#[tokio::test]
async fn stderr_env_cwd_and_exit_code() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ws = open(
        &envd,
        json!({
            "type": "start",
            "cmd": "sh",
            "args": ["-c", "echo $GREETING; pwd; echo oops >&2; exit 4"],
            "env": {"GREETING": "hi"},
            "cwd": dir.path(),
        }),
    )
    .await;
    let msgs = collect(&mut ws).await;
    let cwd = dir.path().canonicalize().expect("canonical");
    assert_eq!(text_of(&msgs, "stdout"), format!("hi\n{}\n", cwd.display()));
    assert_eq!(text_of(&msgs, "stderr"), "oops\n");
    assert_eq!(
        msgs.last().expect("exit").1,
        json!({"type": "exit", "exit_code": 4})
    );
}

#[tokio::test]
async fn runs_as_the_requested_user() {
    let envd = Envd::start();
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "id", "args": ["-un"], "user": "nobody"}),
    )
    .await;
    let msgs = collect(&mut ws).await;
    assert_eq!(text_of(&msgs, "stdout"), "nobody\n");
}

#[tokio::test]
async fn utf8_characters_are_never_split_between_messages() {
    let envd = Envd::start();
    // "€" is written in two parts 300 ms apart, so envd reads it in two chunks.
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "sh", "args": ["-c", "printf 'a\\342\\202'; sleep 0.3; printf '\\254 b'"]}),
    )
    .await;
    let msgs = collect(&mut ws).await;
    for (_, m) in &msgs {
        if let Some(d) = m["data"].as_str() {
            assert!(!d.contains('\u{FFFD}'), "split character: {msgs:?}");
        }
    }
    assert_eq!(text_of(&msgs, "stdout"), "a€ b");
}

/// Starts `sleep 100` in the background of a shell, returns (leader pid, background pid).
async fn start_sleepers(ws: &mut Ws) -> (u32, u32) {
    let start = next(ws).await.expect("start");
    assert_eq!(start["type"], "start");
    let leader = start["pid"].as_u64().expect("pid") as u32;
    let mut out = String::new();
    while !out.ends_with('\n') {
        let m = next(ws).await.expect("stdout");
        assert_eq!(m["type"], "stdout", "{m}");
        out.push_str(m["data"].as_str().expect("data"));
    }
    (leader, out.trim().parse().expect("background pid"))
}

const SLEEPERS: &str = "sleep 100 & echo $!; wait";

#[tokio::test]
async fn stop_kills_the_process_group() {
    let envd = Envd::start();
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "sh", "args": ["-c", SLEEPERS]}),
    )
    .await;
    let (leader, bg) = start_sleepers(&mut ws).await;
    ws.send(Message::Text(json!({"type": "stop"}).to_string().into()))
        .await
        .expect("send stop");
    let rest = collect(&mut ws).await;
    assert_eq!(
        rest.last().expect("exit").1,
        json!({"type": "exit", "exit_code": -1})
    );
    assert!(wait_gone(leader), "leader {leader} survived stop");
    assert!(wait_gone(bg), "background {bg} survived stop");
}

#[tokio::test]
async fn a_lost_client_kills_the_process_group() {
    let envd = Envd::start();
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "sh", "args": ["-c", SLEEPERS]}),
    )
    .await;
    let (leader, bg) = start_sleepers(&mut ws).await;
    drop(ws);
    assert!(wait_gone(leader), "leader {leader} survived the disconnect");
    assert!(wait_gone(bg), "background {bg} survived the disconnect");
}

#[tokio::test]
async fn missing_command_is_an_error_message() {
    let envd = Envd::start();
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "no-such-command-xyz"}),
    )
    .await;
    let msgs = collect(&mut ws).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].1["type"], "error");
    assert!(
        msgs[0].1["data"]
            .as_str()
            .is_some_and(|d| d.contains("No such file")),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn a_bad_first_message_is_an_error_message() {
    let envd = Envd::start();
    for first in [
        json!({"type": "stop"}),
        json!({"type": "start"}),
        json!({"hello": 1}),
    ] {
        let mut ws = open(&envd, first.clone()).await;
        let msgs = collect(&mut ws).await;
        assert_eq!(msgs.len(), 1, "{first}: {msgs:?}");
        assert_eq!(msgs[0].1["type"], "error", "{first}");
    }
}

#[tokio::test]
async fn plain_http_get_is_a_bad_request() {
    let envd = Envd::start();
    let resp = common::http()
        .get(envd.url("/exec/stream"))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    common::assert_error(status, &body, 400, "bad_request");
}
