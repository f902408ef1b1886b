//! The host agent's [`EnvdClient`] against the real daemon: every method, and the error
//! kinds the agent maps to API errors.

mod common;

use bytes::Bytes;
use common::{random_bytes, Envd, BIN};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use wrenn_agent::envd_client::{next_message, send_message, EnvdClient, EnvdError};
use wrenn_types::envd::{Encoding, EnvdErrorCode, ExecRequest};
use wrenn_types::stream::{ClientMessage, ServerMessage};

fn client(envd: &Envd) -> EnvdClient {
    EnvdClient::new(envd.addr).expect("client")
}

fn req(cmd: &str, args: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        cwd: None,
        user: None,
        timeout_sec: None,
        max_output_bytes: None,
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn wait_ready_sees_a_daemon_that_is_still_starting() {
    let addr = free_port();
    let c = EnvdClient::new(addr).expect("client");
    // Start polling before the daemon exists, as the agent does right after booting a VM.
    let mut child = Command::new(BIN)
        .args(["--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envd");
    let ready = c.wait_ready(Duration::from_secs(20)).await;
    let _ = child.kill();
    let _ = child.wait();
    let h = ready.expect("envd became ready");
    assert_eq!(h.status, "ok");
}

#[tokio::test]
async fn wait_ready_gives_up_when_nothing_answers() {
    let c = EnvdClient::new(free_port()).expect("client");
    let e = c
        .wait_ready(Duration::from_millis(300))
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, EnvdError::NotReady { .. }), "{e:?}");
}

#[tokio::test]
async fn unreachable_envd_is_a_connect_error() {
    let c = EnvdClient::new(free_port()).expect("client");
    let e = c.health().await.expect_err("nothing listens");
    assert!(matches!(e, EnvdError::Connect { .. }), "{e:?}");
    assert_eq!(e.code(), None);
}

#[tokio::test]
async fn health_and_exec() {
    let envd = Envd::start();
    let c = client(&envd);
    assert_eq!(c.health().await.expect("health").status, "ok");

    let mut r = req("sh", &["-c", "echo $X; exit 3"]);
    r.env.insert("X".into(), "from-client".into());
    let out = c.exec(&r).await.expect("exec");
    assert_eq!(out.stdout, "from-client\n");
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.encoding, Encoding::Utf8);

    let mut r = req("sleep", &["30"]);
    r.timeout_sec = Some(1);
    let out = c.exec(&r).await.expect("exec");
    assert!(out.timed_out);
    assert_eq!(out.exit_code, -1);
}

#[tokio::test]
async fn envd_errors_keep_status_and_code() {
    let envd = Envd::start();
    let c = client(&envd);
    let e = c
        .exec(&req("no-such-command-xyz", &[]))
        .await
        .expect_err("missing command");
    assert_eq!(e.code(), Some(EnvdErrorCode::ExecFailed), "{e:?}");
    assert_eq!(e.status(), Some(400));

    let e = c.read_file("/no/such/file").await.expect_err("missing");
    assert_eq!(e.code(), Some(EnvdErrorCode::NotFound), "{e:?}");
    assert_eq!(e.status(), Some(404));

    let e = c
        .write_file("relative.txt", "x")
        .await
        .expect_err("relative path");
    assert_eq!(e.code(), Some(EnvdErrorCode::BadRequest), "{e:?}");
}

#[tokio::test]
async fn files_stream_both_ways() {
    let envd = Envd::start();
    let c = client(&envd);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/data.bin");
    let p = path.to_str().expect("path");
    let data = random_bytes(3 * 1024 * 1024 + 7, 99);

    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    c.write_file(
        p,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await
    .expect("write");
    assert_eq!(std::fs::read(&path).expect("disk"), data);

    let mut stream = Box::pin(c.read_file_stream(p).await.expect("read"));
    let mut back = Vec::new();
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(back, data);

    let resp = c.read_file(p).await.expect("read");
    assert_eq!(resp.content_length(), Some(data.len() as u64));

    let owned = dir.path().join("owned.txt");
    c.write_file_as(owned.to_str().expect("path"), "nobody", "hi")
        .await
        .expect("write as nobody");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&owned).expect("meta").uid(), 65534);
}

#[tokio::test]
async fn set_clock_to_now() {
    let envd = Envd::start();
    client(&envd)
        .set_clock(SystemTime::now())
        .await
        .expect("set clock");
}

#[tokio::test]
async fn exec_stream_round_trip() {
    let envd = Envd::start();
    let c = client(&envd);
    let mut ws = c.exec_stream().await.expect("connect");
    send_message(
        &mut ws,
        &ClientMessage::Start {
            cmd: "sh".into(),
            args: vec!["-c".into(), "echo one; echo two >&2; exit 5".into()],
            env: BTreeMap::new(),
            cwd: None,
            user: None,
        },
    )
    .await
    .expect("start");
    let mut msgs = Vec::new();
    while let Some(m) = next_message(&mut ws).await.expect("message") {
        msgs.push(m);
    }
    assert!(
        matches!(msgs[0], ServerMessage::Start { pid } if pid > 0),
        "{msgs:?}"
    );
    assert!(msgs.contains(&ServerMessage::Stdout {
        data: "one\n".into()
    }));
    assert!(msgs.contains(&ServerMessage::Stderr {
        data: "two\n".into()
    }));
    assert_eq!(msgs.last(), Some(&ServerMessage::Exit { exit_code: 5 }));
}

#[tokio::test]
async fn exec_stream_stop() {
    let envd = Envd::start();
    let c = client(&envd);
    let mut ws = c.exec_stream().await.expect("connect");
    send_message(
        &mut ws,
        &ClientMessage::Start {
            cmd: "sleep".into(),
            args: vec!["100".into()],
            env: BTreeMap::new(),
            cwd: None,
            user: None,
        },
    )
    .await
    .expect("start");
    let first = next_message(&mut ws).await.expect("message");
    let Some(ServerMessage::Start { pid }) = first else {
        panic!("expected start, got {first:?}");
    };
    send_message(&mut ws, &ClientMessage::Stop)
        .await
        .expect("stop");
    let mut last = None;
    while let Some(m) = next_message(&mut ws).await.expect("message") {
        last = Some(m);
    }
    assert_eq!(last, Some(ServerMessage::Exit { exit_code: -1 }));
    assert!(common::wait_gone(pid));
}
