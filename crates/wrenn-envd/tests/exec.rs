//! `POST /exec` and `GET /health` against the real daemon running real processes.

mod common;

use base64::Engine as _;
use common::{assert_error, exec, wait_gone, Envd};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn health_reports_ok_and_version() {
    let envd = Envd::start();
    let h: serde_json::Value = common::http()
        .get(envd.url("/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn unknown_route_is_a_json_404() {
    let envd = Envd::start();
    let resp = common::http()
        .get(envd.url("/nope"))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn echo_stdout_stderr_and_exit_codes() {
    let envd = Envd::start();
    let (s, r) = exec(&envd, json!({"cmd": "echo", "args": ["hello", "world"]})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["stdout"], "hello world\n");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["encoding"], "utf-8");
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["truncated"], false);
    assert!(r["duration_ms"].is_u64());

    let (s, r) = exec(
        &envd,
        json!({"cmd": "sh", "args": ["-c", "echo out; echo err >&2; exit 7"]}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["exit_code"], 7);
}

#[tokio::test]
async fn env_is_clean_plus_requested_and_cwd_is_honoured() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "echo \"$FOO|$LANG|$USER|$PATH\"; pwd; env | grep -c WRENN_TEST_LEAK || true";
    let (s, r) = exec(
        &envd,
        json!({
            "cmd": "sh",
            "args": ["-c", script],
            "env": {"FOO": "bar baz"},
            "cwd": dir.path(),
        }),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let out = r["stdout"].as_str().expect("stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "bar baz|C.UTF-8|root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(
        std::path::Path::new(lines[1]),
        dir.path().canonicalize().expect("canonical")
    );
    // The harness starts envd with WRENN_TEST_LEAK set; it must not reach commands.
    assert_eq!(lines[2], "0");

    // Without cwd, commands start in the user's home.
    let (_, r) = exec(
        &envd,
        json!({"cmd": "sh", "args": ["-c", "pwd; echo $HOME"]}),
    )
    .await;
    let out = r["stdout"].as_str().expect("stdout");
    let mut it = out.lines();
    let (pwd, home) = (it.next(), it.next());
    assert_eq!(pwd, home, "{out}");
}

#[tokio::test]
async fn invalid_utf8_output_comes_back_as_base64() {
    let envd = Envd::start();
    let (s, r) = exec(
        &envd,
        json!({"cmd": "sh", "args": ["-c", "printf '\\377\\376ok'; printf 'e' >&2"]}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["encoding"], "base64");
    let b64 = base64::engine::general_purpose::STANDARD;
    let out = b64
        .decode(r["stdout"].as_str().expect("stdout"))
        .expect("b64");
    let err = b64
        .decode(r["stderr"].as_str().expect("stderr"))
        .expect("b64");
    assert_eq!(out, b"\xff\xfeok");
    assert_eq!(err, b"e");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let envd = Envd::start();
    let began = Instant::now();
    let (s, r) = exec(
        &envd,
        json!({
            "cmd": "sh",
            "args": ["-c", "sleep 100 & echo $!; sleep 100"],
            "timeout_sec": 1,
        }),
    )
    .await;
    let took = began.elapsed();
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["exit_code"], -1);
    // Nowhere near the 100 s the commands would take.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let bg: u32 = r["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .expect("background pid");
    assert!(wait_gone(bg), "background child {bg} survived the timeout");
}

#[tokio::test]
async fn output_is_capped_but_the_command_finishes() {
    let envd = Envd::start();
    // 1 MB of output against a 1000-byte cap: envd must keep draining or `head` would block.
    let (s, r) = exec(
        &envd,
        json!({
            "cmd": "sh",
            "args": ["-c", "head -c 1000000 /dev/zero | tr '\\0' a; echo done >&2"],
            "max_output_bytes": 1000,
        }),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["truncated"], true);
    assert_eq!(r["stdout"].as_str().expect("stdout"), "a".repeat(1000));
    assert_eq!(r["stderr"], "done\n");
    // Each stream says whether it was cut, and counts every byte the command wrote.
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr_truncated"], false);
    assert_eq!(r["stdout_bytes"], 1_000_000);
    assert_eq!(r["stderr_bytes"], 5);
}

#[tokio::test]
async fn a_character_cut_by_the_cap_is_dropped_whole() {
    let envd = Envd::start();
    // "é" is two bytes: a cap of 5 ends inside the third one.
    let (s, r) = exec(
        &envd,
        json!({"cmd": "printf", "args": ["ééééé"], "max_output_bytes": 5}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["encoding"], "utf-8");
    assert_eq!(r["stdout"], "éé");
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stdout_bytes"], 10);
}

#[tokio::test]
async fn daemon_flag_caps_output_for_every_request() {
    let envd = Envd::start_with(&["--max-output-bytes", "100"]);
    let (_, r) = exec(
        &envd,
        json!({"cmd": "sh", "args": ["-c", "head -c 5000 /dev/zero | tr '\\0' b"], "max_output_bytes": 4000}),
    )
    .await;
    assert_eq!(r["stdout"].as_str().expect("stdout").len(), 100);
    assert_eq!(r["truncated"], true);
}

#[tokio::test]
async fn runs_as_another_user() {
    let envd = Envd::start();
    let (s, r) = exec(
        &envd,
        json!({"cmd": "sh", "args": ["-c", "id -un; id -u; echo $HOME; pwd"], "user": "nobody"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    // nobody's home (/nonexistent) does not exist, so the command starts in /.
    assert_eq!(r["stdout"], "nobody\n65534\n/nonexistent\n/\n");

    let (s, r) = exec(&envd, json!({"cmd": "id", "user": "no-such-user"})).await;
    assert_error(s, &r, 400, "unknown_user");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let envd = Envd::start();
    let (s, r) = exec(&envd, json!({"cmd": "definitely-not-a-command-xyz"})).await;
    assert_error(s, &r, 400, "exec_failed");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("No such file")),
        "{r}"
    );

    let (s, r) = exec(&envd, json!({"cmd": "true", "cwd": "/no/such/dir"})).await;
    assert_error(s, &r, 400, "bad_request");

    let (s, r) = exec(&envd, json!({"cmd": ""})).await;
    assert_error(s, &r, 400, "bad_request");

    let (s, r) = exec(&envd, json!({"args": ["x"]})).await;
    assert_error(s, &r, 400, "bad_request");

    let resp = common::http()
        .post(envd.url("/exec"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_error(status, &body, 400, "bad_request");
}

#[tokio::test]
async fn clock_accepts_now_and_rejects_nonsense() {
    let envd = Envd::start();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    // Setting the clock to the current time really calls clock_settime without moving it.
    let resp = common::http()
        .post(envd.url("/clock"))
        .json(&json!({"unix_ms": now_ms}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 204);

    let resp = common::http()
        .post(envd.url("/clock"))
        .json(&json!({"unix_ms": u64::MAX}))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_error(status, &body, 400, "bad_request");
}

#[tokio::test]
async fn a_caller_that_gives_up_takes_the_command_with_it() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = format!(
        "echo $$ > {p}.tmp; sleep 100 & echo $! >> {p}.tmp; mv {p}.tmp {p}; wait",
        p = pids.display()
    );
    // A client that sends its request and then disconnects before the answer.
    let body = json!({"cmd": "sh", "args": ["-c", script]}).to_string();
    let mut conn = tokio::net::TcpStream::connect(envd.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /exec HTTP/1.1\r\nHost: envd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    conn.write_all(body.as_bytes()).await.expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);
    let text = std::fs::read_to_string(&pids).expect("pid file written by the command");
    let pids: Vec<u32> = text
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    for pid in pids {
        assert!(wait_gone(pid), "process {pid} outlived its caller");
    }
}

#[tokio::test]
async fn a_background_process_does_not_hold_the_answer() {
    let envd = Envd::start();
    let began = Instant::now();
    // The background sleep inherits stdout and keeps the pipe open after the shell exits.
    let (s, r) = exec(
        &envd,
        json!({"cmd": "sh", "args": ["-c", "sleep 100 & echo $!"]}),
    )
    .await;
    let took = began.elapsed();
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["timed_out"], false);
    assert!(
        took < Duration::from_secs(30),
        "answer waited for the background process: {took:?}"
    );
    let bg: i32 = r["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .expect("background pid");
    // The command finished normally, so its background process was left running.
    assert!(
        !common::process_gone(bg as u32),
        "background process was killed"
    );
    // SAFETY: kill(2) on a pid this test's command just started; no memory involved.
    unsafe { libc::kill(bg, libc::SIGKILL) };
}
