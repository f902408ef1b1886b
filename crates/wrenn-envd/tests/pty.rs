//! Interactive terminals against the real daemon: a shell on a real pseudo-terminal (a tty,
//! `TERM`, the caller's variables and cwd), output and keystrokes as binary messages, resize
//! seen by `stty size`, Ctrl-C reaching the foreground job, reconnecting by tag with the
//! earlier output replayed, kill, the exit code, and the errors of a bad first message.

mod common;

use common::Envd;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(envd: &Envd, first: Value) -> Ws {
    let url = format!("ws://{}/pty", envd.addr);
    let (mut ws, _) = connect_async(url).await.expect("connect");
    ws.send(Message::Text(first.to_string().into()))
        .await
        .expect("send");
    ws
}

async fn control(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a control message in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

async fn key(ws: &mut Ws, s: &str) {
    ws.send(Message::Binary(s.as_bytes().to_vec().into()))
        .await
        .expect("send");
}

/// Output until `want` appears (panics after 10 s); also returns any control message seen.
async fn until(ws: &mut Ws, want: &str) -> String {
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.contains(want) {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in {out:?}"))
            .expect("open")
            .expect("frame");
        match m {
            Message::Binary(b) => out.push_str(&String::from_utf8_lossy(&b)),
            Message::Text(t) => out.push_str(&format!("<{t}>")),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn a_shell_on_a_real_terminal() {
    // Started as a guest's init may start it: Ctrl-C must still reach the terminal's jobs.
    let envd = Envd::start_ignoring_interrupts();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "/bin/sh", "cols": 100, "rows": 30,
               "envs": {"GREETING": "hi-there"}, "cwd": dir.path()}),
    )
    .await;
    let started = control(&mut ws).await;
    assert_eq!(started["type"], "started");
    let tag = started["tag"].as_str().expect("tag").to_string();
    assert!(started["pid"].as_u64().expect("pid") > 1);

    key(
        &mut ws,
        "tty; echo \"T=$TERM G=$GREETING D=$(pwd)\"; stty size\n",
    )
    .await;
    let out = until(&mut ws, "30 100").await;
    assert!(out.contains("/dev/pts/"), "{out}");
    let d = dir.path().canonicalize().unwrap();
    assert!(
        out.contains(&format!("T=xterm-256color G=hi-there D={}", d.display())),
        "{out}"
    );

    ws.send(Message::Text(
        json!({"type":"resize","cols":132,"rows":43})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    key(&mut ws, "stty size\n").await;
    until(&mut ws, "43 132").await;

    // Ctrl-C reaches the foreground job, not the shell.
    key(&mut ws, "sleep 100\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    key(&mut ws, "\x03").await;
    key(&mut ws, "echo after-$((1+1))\n").await;
    until(&mut ws, "after-2").await;

    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    let pong = until(&mut ws, "pong").await;
    assert!(pong.contains(r#"<{"type":"pong"}>"#), "{pong}");

    // Leave and connect again: the earlier output is replayed, the shell still runs.
    key(&mut ws, "echo before-leaving\n").await;
    until(&mut ws, "before-leaving\r\n").await;
    drop(ws);
    let mut again = open(&envd, json!({"type": "connect", "tag": tag})).await;
    let started = control(&mut again).await;
    assert_eq!(started["tag"], tag.as_str());
    until(&mut again, "before-leaving").await;
    key(&mut again, "exit 3\n").await;
    let end = until(&mut again, "exit_code").await;
    assert!(end.contains(r#"{"type":"exit","exit_code":3}"#), "{end}");

    // Its end was seen: the tag is gone.
    let mut gone = open(&envd, json!({"type": "connect", "tag": tag})).await;
    let e = control(&mut gone).await;
    assert_eq!(
        (e["type"].as_str(), e["fatal"].as_bool()),
        (Some("error"), Some(true))
    );
}

#[tokio::test]
async fn kill_ends_the_terminal_and_bad_starts_are_errors() {
    let envd = Envd::start();
    let mut ws = open(&envd, json!({"type": "start", "cmd": "/bin/sh"})).await;
    assert_eq!(control(&mut ws).await["type"], "started");
    ws.send(Message::Text(r#"{"type":"kill"}"#.into()))
        .await
        .unwrap();
    let end = control(&mut ws).await;
    assert_eq!(end, json!({"type": "exit", "exit_code": 137}));

    for first in [
        json!({"type": "start", "cmd": "/no/such/program"}),
        json!({"type": "start", "cmd": "/bin/sh", "cols": 0}),
        json!({"type": "connect", "tag": "nobody"}),
        json!({"type": "resize", "cols": 10, "rows": 10}),
        json!({"type": "bogus"}),
    ] {
        let mut ws = open(&envd, first.clone()).await;
        let e = control(&mut ws).await;
        assert_eq!(e["type"], "error", "{first}: {e}");
        assert_eq!(e["fatal"], true, "{first}: {e}");
    }
}

#[tokio::test]
async fn job_control_and_a_bounded_replay() {
    let envd = Envd::start_ignoring_interrupts();
    let mut ws = open(
        &envd,
        json!({"type": "start", "cmd": "/bin/sh", "args": ["-i"]}),
    )
    .await;
    let tag = control(&mut ws).await["tag"].as_str().unwrap().to_string();
    // Ctrl-Z stops the foreground job; the shell lists it and takes it back.
    key(&mut ws, "sleep 100\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    key(&mut ws, "\x1a").await;
    key(&mut ws, "jobs; echo listed-$((3+4))\n").await;
    let out = until(&mut ws, "listed-7").await;
    assert!(out.contains("Stopped"), "{out}");
    key(&mut ws, "kill -9 %1; echo killed-$((4+4))\n").await;
    until(&mut ws, "killed-8").await;

    // 200 KiB of output, then leave: a reconnect replays at most the ring's 64 KiB, the end
    // of it included.
    key(
        &mut ws,
        "head -c 204800 /dev/zero | tr '\\0' x; echo; echo end-$((5+5))\n",
    )
    .await;
    until(&mut ws, "end-10\r\n").await;
    drop(ws);
    let mut again = open(&envd, json!({"type": "connect", "tag": tag})).await;
    assert_eq!(control(&mut again).await["type"], "started");
    let mut replay = Vec::new();
    while !String::from_utf8_lossy(&replay).contains("end-10") {
        let m = tokio::time::timeout(Duration::from_secs(10), again.next())
            .await
            .expect("replay in time")
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            replay.extend_from_slice(&b);
        }
    }
    assert!(replay.len() <= 64 * 1024, "replayed {} bytes", replay.len());
    assert!(replay.len() > 32 * 1024, "replayed {} bytes", replay.len());
    again
        .send(Message::Text(r#"{"type":"kill"}"#.into()))
        .await
        .unwrap();
}
