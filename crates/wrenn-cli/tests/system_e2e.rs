//! System end-to-end tests: the real `wrenn up` binary (control plane, host agent, SQLite) as a
//! child process, real microVMs (QEMU; TCG here), driven only through the public API over
//! loopback HTTP and WebSocket, as a user would.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`). One daemon
//! is shared by all tests (see `common`); `zz_teardown_leaves_nothing_behind` is dispatched
//! last (the harness runs tests in name order), waits for the others, destroys what is left
//! through the API, stops the daemon and checks that no VM of this data dir survives.
//!
//! Run: `WRENN_DATA_DIR=/var/lib/wrenn cargo test -p wrenn-cli --test system_e2e -- --test-threads 2`
//! (`--nocapture` shows the measured numbers).

mod common;

use base64::Engine;
use common::{enter, enter_exclusive, rss_bytes, rt, Api, PASSWORD};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Bytes that are not a deterministic pattern anyone could fake: a xorshift sequence.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn parse_time(v: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing: {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{field} {s:?}: {e}"))
}

/// Next text frame of an exec stream, parsed (bounded wait). `None` when the socket closed.
async fn next_event(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    wait: Duration,
) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(wait, ws.next())
            .await
            .expect("no exec stream event in time");
        match frame {
            None | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(t.as_str()).expect("event is JSON"))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("exec stream broke: {e}"),
        }
    }
}

#[test]
fn auth_and_api_keys() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let http = &s.http;
        let email = "carol@example.com";
        let r = http
            .post(s.url("/v1/auth/signup"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let signup: Value = r.json().await.unwrap();
        assert_eq!(signup["email"], email);
        for f in ["token", "user_id", "team_id"] {
            assert!(
                signup[f].as_str().is_some_and(|v| !v.is_empty()),
                "{signup}"
            );
        }
        let r = http
            .post(s.url("/v1/auth/signup"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "email_taken");

        let r = http
            .post(s.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(s.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let login: Value = r.json().await.unwrap();
        assert_eq!(login["team_id"], signup["team_id"]);
        let token = login["token"].as_str().unwrap();

        let r = http
            .post(s.url("/v1/api-keys"))
            .bearer_auth(token)
            .json(&json!({"name": "laptop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let key: Value = r.json().await.unwrap();
        let plain = key["key"].as_str().unwrap().to_string();
        let prefix = key["key_prefix"].as_str().unwrap().trim_end_matches('.');
        assert!(
            plain.starts_with(prefix) && plain.starts_with("wrn_"),
            "{key}"
        );
        let r = http
            .get(s.url("/v1/api-keys"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list: Value = r.json().await.unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["name"], "laptop");
        assert!(list[0]["key"].is_null(), "plaintext key listed: {list:?}");

        // The key works for sandbox calls (an empty list), a JWT does not, and after
        // deletion the key is refused.
        let api = Api {
            suite: s,
            key: plain.clone(),
        };
        let (st, v) = api.get("/v1/sandboxes").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v, json!([]));
        let r = http
            .get(s.url("/v1/sandboxes"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .delete(s.url(&format!("/v1/api-keys/{}", key["id"].as_str().unwrap())))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let (st, v) = api.get("/v1/sandboxes").await;
        assert_eq!(st, 401, "{v}");
    });
}

#[test]
fn sandbox_lifecycle_exec_stream_files_pause_and_isolation() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let bob = s.api(&s.bob);

        // Defaults from an empty body.
        let (sb, took) = api.create(json!({})).await;
        eprintln!("[numbers] create (defaults) through the API: {took:?}");
        let id = sb["id"].as_str().unwrap().to_string();
        assert_eq!(sb["template"], "minimal");
        assert_eq!(sb["vcpus"], 1);
        assert_eq!(sb["memory_mb"], 512);
        assert_eq!(sb["timeout_sec"], 0);
        assert_eq!(sb["guest_ip"], "172.16.0.2");
        let host_ip = sb["host_ip"].as_str().unwrap();
        assert!(host_ip.parse::<std::net::Ipv4Addr>().is_ok(), "{sb}");
        let created = parse_time(&sb, "created_at");
        let started = parse_time(&sb, "started_at");
        assert!(started >= created, "{sb}");
        parse_time(&sb, "last_updated");

        // List and get show it; another team sees nothing.
        let (st, list) = api.get("/v1/sandboxes").await;
        assert_eq!(st, 200);
        let mine: Vec<&Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{list}");
        assert_eq!(mine[0]["status"], "running");
        let (st, got) = api.get(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(st, 200);
        assert_eq!(got["id"], id.as_str());
        assert_eq!(got["host_ip"], host_ip);
        let (_, theirs) = bob.get("/v1/sandboxes").await;
        assert!(
            !theirs.as_array().unwrap().iter().any(|v| v["id"] == id.as_str()),
            "{theirs}"
        );

        // Exec: python, env and cwd, binary output, exit codes.
        let v = api
            .exec(&id, json!({"cmd": "python3", "args": ["-c", "print(6*7)"]}))
            .await;
        assert_eq!(v["stdout"], "42\n");
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["encoding"], "utf-8");
        assert_eq!(v["sandbox_id"], id.as_str());
        assert_eq!(v["cmd"], "python3");
        let v = api
            .exec(
                &id,
                json!({"cmd": "sh", "args": ["-c", "echo \"$GREETING\"; pwd"],
                       "env": {"GREETING": "hello from env"}, "cwd": "/tmp"}),
            )
            .await;
        assert_eq!(v["stdout"], "hello from env\n/tmp\n", "{v}");
        let v = api
            .exec(
                &id,
                json!({"cmd": "sh", "args": ["-c", "printf '\\377\\376\\000A'; echo oops >&2; exit 7"]}),
            )
            .await;
        assert_eq!(v["exit_code"], 7, "{v}");
        assert_eq!(v["encoding"], "base64", "{v}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["stdout"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, vec![0xff, 0xfe, 0x00, b'A']);
        let err = base64::engine::general_purpose::STANDARD
            .decode(v["stderr"].as_str().unwrap())
            .unwrap();
        assert_eq!(err, b"oops\n");
        let (st, v) = api
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"cmd": "/no/such/program"}),
            )
            .await;
        assert!(
            (st == 200 && v["exit_code"] != 0) || (st >= 400 && v["error"]["code"].is_string()),
            "missing program: {st} {v}"
        );

        // Exec stream: lines arrive while the command runs.
        let mut ws = api.exec_stream(&id).await.expect("exec stream opens");
        ws.send(Message::Text(
            json!({"type": "start", "cmd": "sh",
                   "args": ["-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.5; done; echo done >&2"]})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
        let begun = Instant::now();
        let (mut out, mut err, mut at, mut exit) = (String::new(), String::new(), vec![], None);
        while let Some(ev) = next_event(&mut ws, Duration::from_secs(60)).await {
            match ev["type"].as_str().unwrap() {
                "start" => assert!(ev["pid"].as_u64().unwrap() > 0, "{ev}"),
                "stdout" => {
                    at.push(begun.elapsed());
                    out.push_str(ev["data"].as_str().unwrap());
                }
                "stderr" => err.push_str(ev["data"].as_str().unwrap()),
                "exit" => exit = Some(ev["exit_code"].as_i64().unwrap()),
                other => panic!("unexpected event {other}: {ev}"),
            }
        }
        assert_eq!(exit, Some(0));
        assert_eq!(out, "line1\nline2\nline3\nline4\nline5\n");
        assert_eq!(err, "done\n");
        assert!(
            *at.last().unwrap() - at[0] >= Duration::from_millis(1500),
            "output arrived all at once: {at:?}"
        );

        // Stop kills a long-running command.
        let mut ws = api.exec_stream(&id).await.expect("exec stream opens");
        ws.send(Message::Text(
            json!({"type": "start", "cmd": "sh",
                   "args": ["-c", "echo ready; exec sleep 7777"]})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
        loop {
            let ev = next_event(&mut ws, Duration::from_secs(60))
                .await
                .expect("stream closed before output");
            if ev["type"] == "stdout" {
                assert_eq!(ev["data"], "ready\n");
                break;
            }
        }
        let running = api.sh(&id, "pgrep -f 'sleep [7]777' || true").await;
        assert!(!running.trim().is_empty(), "the streamed command is not running");
        let stopped_at = Instant::now();
        ws.send(Message::Text(json!({"type": "stop"}).to_string().into()))
            .await
            .unwrap();
        let mut exit = None;
        while let Some(ev) = next_event(&mut ws, Duration::from_secs(30)).await {
            if ev["type"] == "exit" {
                exit = ev["exit_code"].as_i64();
            }
        }
        assert_eq!(exit, Some(-1), "a stopped command ends by a signal");
        eprintln!("[numbers] exec stream stop -> exit: {:?}", stopped_at.elapsed());
        let left = api.sh(&id, "pgrep -f 'sleep [7]777' || true").await;
        assert_eq!(left.trim(), "", "stopped command still running");

        // Ping.
        let (st, v) = api.post_empty(&format!("/v1/sandboxes/{id}/ping")).await;
        assert_eq!(st, 204, "{v}");

        // Files: buffered write/read, byte for byte (every byte value, binary).
        let data = pseudo_random(3 * 1024 * 1024 + 17, 42);
        let (st, v) = api
            .write_file(&id, "/home/user/data/blob.bin", data.clone())
            .await;
        assert_eq!(st, 204, "{v}");
        let (st, back) = api.read_file(&id, "/home/user/data/blob.bin", false).await;
        assert_eq!(st, 200);
        assert!(back == data, "files/read differs ({} bytes)", back.len());
        let sum = api
            .sh(&id, "sha256sum /home/user/data/blob.bin | cut -d' ' -f1")
            .await;
        assert_eq!(sum.trim(), hex::encode(sha2::Sha256::digest(&data)));
        let (st, _) = api.read_file(&id, "/home/user/nope.txt", false).await;
        assert_eq!(st, 404);
        // Streamed write/read.
        let sdata = pseudo_random(9 * 1024 * 1024 + 3, 7);
        let form = reqwest::multipart::Form::new()
            .text("path", "/home/user/data/streamed.bin")
            .part(
                "file",
                reqwest::multipart::Part::stream(sdata.clone()).file_name("s.bin"),
            );
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/write"),
            )
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
        let (st, back) = api
            .read_file(&id, "/home/user/data/streamed.bin", true)
            .await;
        assert_eq!(st, 200);
        assert!(back == sdata, "files/stream/read differs ({} bytes)", back.len());
        let (st, _) = api.read_file(&id, "/home/user/nope.txt", true).await;
        assert_eq!(st, 404);

        // Another team: every operation on this sandbox is a 404.
        let (st, v) = bob.get(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["error"]["code"], "sandbox_not_found");
        let (st, _) = bob
            .post(&format!("/v1/sandboxes/{id}/exec"), json!({"cmd": "true"}))
            .await;
        assert_eq!(st, 404);
        for op in ["ping", "pause", "resume"] {
            let (st, v) = bob.post_empty(&format!("/v1/sandboxes/{id}/{op}")).await;
            assert_eq!(st, 404, "{op}: {v}");
        }
        let (st, _) = bob
            .read_file(&id, "/home/user/data/blob.bin", false)
            .await;
        assert_eq!(st, 404);
        let (st, _) = bob.write_file(&id, "/tmp/x", b"x".to_vec()).await;
        assert_eq!(st, 404);
        assert_eq!(bob.exec_stream(&id).await.err(), Some(404));
        let (st, _) = bob
            .post("/v1/snapshots", json!({"sandbox_id": id, "name": "stolen"}))
            .await;
        assert_eq!(st, 404);
        let (st, _) = bob.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(st, 404);
        assert_eq!(api.status(&id).await, "running");

        // Pause and resume keep a background process and the files.
        api.sh(
            &id,
            "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done' \
             >/dev/null 2>&1 </dev/null & echo $! > /home/user/counter.pid",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let took = api.pause(&id).await;
        eprintln!("[numbers] pause (512 MB) through the API: {took:?}");
        assert_eq!(api.status(&id).await, "paused");
        let (st, v) = api
            .post(&format!("/v1/sandboxes/{id}/exec"), json!({"cmd": "true"}))
            .await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(v["error"]["code"], "sandbox_not_running");
        let (st, _) = api.post_empty(&format!("/v1/sandboxes/{id}/pause")).await;
        assert_eq!(st, 409);
        let (st, _) = api.post_empty(&format!("/v1/sandboxes/{id}/ping")).await;
        assert_eq!(st, 409);
        let (st, _) = api.read_file(&id, "/home/user/data/blob.bin", true).await;
        assert_eq!(st, 409);
        assert_eq!(api.exec_stream(&id).await.err(), Some(409));
        let took = api.resume(&id).await;
        eprintln!("[numbers] resume (512 MB) through the API: {took:?}");
        let (st, back) = api.read_file(&id, "/home/user/data/blob.bin", false).await;
        assert_eq!(st, 200);
        assert!(back == data, "file changed across pause/resume");
        let out = api
            .sh(
                &id,
                "kill -0 $(cat /home/user/counter.pid) && echo alive; \
                 a=$(cat /tmp/count); sleep 1; b=$(cat /tmp/count); \
                 [ \"$b\" -gt \"$a\" ] && echo counting",
            )
            .await;
        assert_eq!(out, "alive\ncounting\n");
        let (st, _) = api.post_empty(&format!("/v1/sandboxes/{id}/resume")).await;
        assert_eq!(st, 409, "resuming a running sandbox");

        api.destroy(&id).await;
        let (st, _) = api.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(st, 404);
    });
}

#[test]
fn snapshots_create_list_overwrite_and_delete() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let (sb, _) = api.create(json!({"memory_mb": 256})).await;
        let origin = sb["id"].as_str().unwrap().to_string();
        api.sh(&origin, "echo first > /home/user/snap.txt").await;

        let name = "sx-snap";
        let t0 = Instant::now();
        let (st, tpl) = api
            .post("/v1/snapshots", json!({"sandbox_id": origin, "name": name}))
            .await;
        eprintln!(
            "[numbers] snapshot (256 MB) through the API: {:?}",
            t0.elapsed()
        );
        assert_eq!(st, 201, "{tpl}");
        assert_eq!(tpl["name"], name);
        assert_eq!(tpl["type"], "snapshot");
        assert_eq!(tpl["vcpus"], 1);
        assert_eq!(tpl["memory_mb"], 256);
        assert!(tpl["size_bytes"].as_i64().unwrap() > 0, "{tpl}");
        parse_time(&tpl, "created_at");
        // The sandbox became the template.
        let (st, _) = api.get(&format!("/v1/sandboxes/{origin}")).await;
        assert_eq!(st, 404);

        let (st, snaps) = api.get("/v1/snapshots?type=snapshot").await;
        assert_eq!(st, 200);
        let snaps = snaps.as_array().unwrap();
        assert!(snaps.iter().all(|t| t["type"] == "snapshot"), "{snaps:?}");
        assert!(snaps.iter().any(|t| t["name"] == name), "{snaps:?}");
        let (_, bases) = api.get("/v1/snapshots?type=base").await;
        let bases = bases.as_array().unwrap();
        assert!(bases.iter().any(|t| t["name"] == "minimal"), "{bases:?}");
        assert!(!bases.iter().any(|t| t["name"] == name), "{bases:?}");
        let (_, all) = api.get("/v1/snapshots").await;
        assert!(all.as_array().unwrap().len() >= snaps.len() + bases.len());
        // Other teams neither see nor use it.
        let bob = s.api(&s.bob);
        let (_, theirs) = bob.get("/v1/snapshots?type=snapshot").await;
        assert_eq!(theirs, json!([]));
        let (st, v) = bob.post("/v1/sandboxes", json!({"template": name})).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["error"]["code"], "template_not_found");

        // A sandbox from the snapshot has the file and the snapshot's size.
        let (c1, took) = api.create(json!({"template": name})).await;
        eprintln!("[numbers] create from a snapshot through the API: {took:?}");
        assert_eq!(c1["template"], name);
        let c1 = c1["id"].as_str().unwrap().to_string();
        assert_eq!(api.sh(&c1, "cat /home/user/snap.txt").await, "first\n");

        // The name is taken: 409 without overwrite, and the sandbox keeps running.
        let (st, v) = api
            .post("/v1/snapshots", json!({"sandbox_id": c1, "name": name}))
            .await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(v["error"]["code"], "snapshot_exists");
        assert_eq!(api.status(&c1).await, "running");
        api.sh(&c1, "echo second > /home/user/snap.txt").await;
        let (st, v) = api
            .post(
                "/v1/snapshots?overwrite=true",
                json!({"sandbox_id": c1, "name": name}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let (st, _) = api.get(&format!("/v1/sandboxes/{c1}")).await;
        assert_eq!(st, 404);
        let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
        assert_eq!(
            snaps
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == name)
                .count(),
            1,
            "{snaps}"
        );

        let (c2, _) = api.create(json!({"template": name})).await;
        let c2 = c2["id"].as_str().unwrap().to_string();
        assert_eq!(api.sh(&c2, "cat /home/user/snap.txt").await, "second\n");

        // Deleting the snapshot does not break the sandbox made from it.
        let (st, v) = api.delete(&format!("/v1/snapshots/{name}")).await;
        assert_eq!(st, 204, "{v}");
        let (st, v) = api.delete(&format!("/v1/snapshots/{name}")).await;
        assert_eq!(st, 404, "{v}");
        let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
        assert!(!snaps.as_array().unwrap().iter().any(|t| t["name"] == name));
        let (st, v) = api.post("/v1/sandboxes", json!({"template": name})).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["error"]["code"], "template_not_found");
        api.sh(&c2, "echo third >> /home/user/snap.txt").await;
        api.pause(&c2).await;
        api.resume(&c2).await;
        assert_eq!(
            api.sh(&c2, "cat /home/user/snap.txt").await,
            "second\nthird\n"
        );
        api.destroy(&c2).await;
    });
}

#[test]
fn idle_sandbox_pauses_itself_and_resumes_intact() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        // The timeout leaves room for a slow answer on a loaded host: a ping or status call
        // that takes a second or two must not leave the sandbox idle past its timeout.
        let (sb, _) = api.create(json!({"timeout_sec": 5, "memory_mb": 256})).await;
        assert_eq!(sb["timeout_sec"], 5);
        let id = sb["id"].as_str().unwrap().to_string();
        api.sh(
            &id,
            "echo kept > /home/user/idle.txt; \
             setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done' \
             >/dev/null 2>&1 </dev/null & echo $! > /home/user/counter.pid",
        )
        .await;

        // A command that runs longer than the timeout is activity: it is not cut off.
        let v = api
            .exec(
                &id,
                json!({"cmd": "sh", "args": ["-c", "sleep 7; echo finished"], "timeout_sec": 60}),
            )
            .await;
        assert_eq!(v["stdout"], "finished\n", "{v}");
        assert_eq!(api.status(&id).await, "running");

        // Pings keep it running past its timeout.
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let (st, v) = api.post_empty(&format!("/v1/sandboxes/{id}/ping")).await;
            assert_eq!(st, 204, "pinged sandbox was paused: {v}");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }

        // Left alone, it pauses by itself.
        let idle_from = Instant::now();
        let deadline = idle_from + Duration::from_secs(120);
        loop {
            let status = api.status(&id).await;
            if status == "paused" {
                break;
            }
            assert_eq!(status, "running");
            assert!(Instant::now() < deadline, "idle sandbox never auto-paused");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "[numbers] auto-pause observed {:?} after the last ping (timeout 5 s, reaper {} ms)",
            idle_from.elapsed(),
            common::REAPER_INTERVAL_MS
        );
        let (st, v) = api
            .post(&format!("/v1/sandboxes/{id}/exec"), json!({"cmd": "true"}))
            .await;
        assert_eq!(st, 409, "{v}");
        let (st, _) = api.post_empty(&format!("/v1/sandboxes/{id}/ping")).await;
        assert_eq!(st, 409);

        api.resume(&id).await;
        let out = api
            .sh(
                &id,
                "cat /home/user/idle.txt; kill -0 $(cat /home/user/counter.pid) && echo alive; \
                 a=$(cat /tmp/count); sleep 1; b=$(cat /tmp/count); \
                 [ \"$b\" -gt \"$a\" ] && echo counting",
            )
            .await;
        assert_eq!(out, "kept\nalive\ncounting\n");
        api.destroy(&id).await;
    });
}

#[test]
fn restart_keeps_accounts_keys_templates_and_sandboxes() {
    rt().block_on(async {
        let x = enter_exclusive().await;
        let s = x.suite;
        // An account of its own: its sandbox list holds exactly what this test made.
        let dave = s.new_account("dave").await;
        let api = s.api(&dave);
        let (r, _) = api.create(json!({"memory_mb": 256})).await;
        let r = r["id"].as_str().unwrap().to_string();
        let (p, _) = api.create(json!({"memory_mb": 256})).await;
        let p = p["id"].as_str().unwrap().to_string();
        api.sh(
            &r,
            "echo r > /home/user/r.txt; \
             setsid sh -c 'while true; do date +%s%N > /tmp/tick.new; mv /tmp/tick.new /tmp/tick; sleep 0.2; done' \
             >/dev/null 2>&1 </dev/null & echo $! > /home/user/ticker.pid",
        )
        .await;
        api.sh(&p, "echo p > /home/user/p.txt").await;
        let (st, v) = api
            .post("/v1/snapshots", json!({"sandbox_id": p, "name": "sx-keep"}))
            .await;
        assert_eq!(st, 201, "{v}");
        let (p2, _) = api.create(json!({"template": "sx-keep"})).await;
        let p2 = p2["id"].as_str().unwrap().to_string();
        api.pause(&p2).await;

        let keys = |token: String| async move {
            let r = s
                .http
                .get(s.url("/v1/api-keys"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut list = r.json::<Value>().await.unwrap();
            // `last_used` moves with every call; the rest must stay.
            for k in list.as_array_mut().unwrap() {
                assert!(k["last_used"].is_string(), "key used but not marked: {k}");
                k.as_object_mut().unwrap().remove("last_used");
            }
            list
        };
        let keys_before = keys(dave.token.clone()).await;
        let (_, snaps_before) = api.get("/v1/snapshots?type=snapshot").await;
        let ids = |list: &Value| {
            let mut v: Vec<(String, String)> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap().to_string(),
                        s["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let (_, list) = api.get("/v1/sandboxes").await;
        let mut expected = vec![(r.clone(), "running".to_string()), (p2.clone(), "paused".into())];
        expected.sort();
        assert_eq!(ids(&list), expected);

        for signal in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGKILL,
        ] {
            let (running, paused) = if signal == nix::sys::signal::Signal::SIGTERM {
                (&r, &p2)
            } else {
                (&p2, &r)
            };
            let status = s.stop(signal).await;
            if signal == nix::sys::signal::Signal::SIGTERM {
                assert!(status.success(), "wrenn up exit after SIGTERM: {status}");
            }
            // Down means down: the API refuses connections.
            let probe = s
                .http
                .get(s.url("/openapi.yaml"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            assert!(probe.is_err(), "API still answers after {signal}");
            let took = s.start_again().await;
            eprintln!("[numbers] wrenn up ready again after {signal}: {took:?}");

            // Accounts: login works, the old session and the key still work.
            let r2 = s
                .http
                .post(s.url("/v1/auth/login"))
                .json(&json!({"email": dave.email, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert_eq!(r2.status(), 200, "login after {signal}");
            assert_eq!(keys(dave.token.clone()).await, keys_before);
            let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
            assert_eq!(snaps, snaps_before, "templates after {signal}");
            let (st, list) = api.get("/v1/sandboxes").await;
            assert_eq!(st, 200);
            let mut expected = vec![
                (running.clone(), "running".to_string()),
                (paused.clone(), "paused".into()),
            ];
            expected.sort();
            assert_eq!(ids(&list), expected, "sandboxes after {signal}");

            // The running one answers; the paused one resumes with its state.
            let v = api
                .exec(running, json!({"cmd": "python3", "args": ["-c", "print(6*7)"]}))
                .await;
            assert_eq!(v["stdout"], "42\n", "exec after {signal}");
            api.resume(paused).await;
            let expect_file = if paused == &r { "r\n" } else { "p\n" };
            let file = if paused == &r { "r.txt" } else { "p.txt" };
            assert_eq!(
                api.sh(paused, &format!("cat /home/user/{file}")).await,
                expect_file
            );
            // The ticker of `r` survived both the restart and its pause.
            let out = api
                .sh(
                    &r,
                    "kill -0 $(cat /home/user/ticker.pid) && echo alive; \
                     a=$(cat /tmp/tick); sleep 1; b=$(cat /tmp/tick); \
                     [ \"$b\" -gt \"$a\" ] && echo ticking",
                )
                .await;
            assert_eq!(out, "alive\nticking\n", "after {signal}");
            // Prepare the next round: the other one paused.
            if signal == nix::sys::signal::Signal::SIGTERM {
                api.pause(&r).await;
            }
        }

        // The kept template still makes working sandboxes.
        let (c, _) = api.create(json!({"template": "sx-keep"})).await;
        let c = c["id"].as_str().unwrap().to_string();
        assert_eq!(api.sh(&c, "cat /home/user/p.txt").await, "p\n");
        for id in [&r, &p2, &c] {
            api.destroy(id).await;
        }
        let (st, v) = api.delete("/v1/snapshots/sx-keep").await;
        assert_eq!(st, 204, "{v}");
    });
}

/// A generated upload: `chunks` chunks of one pseudo-random block, each stamped with its index
/// (so reordered or repeated chunks change the digest), hashed as it is produced.
fn generated_body(
    total: u64,
    hasher: Arc<std::sync::Mutex<sha2::Sha256>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    const CHUNK: usize = 1024 * 1024;
    let block = pseudo_random(CHUNK, 99);
    futures_util::stream::unfold(0u64, move |sent| {
        let hasher = hasher.clone();
        let mut chunk = block.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK as u64) as usize;
            chunk.truncate(n);
            let idx = (sent / CHUNK as u64).to_le_bytes();
            let stamp = idx.len().min(n);
            chunk[..stamp].copy_from_slice(&idx[..stamp]);
            hasher.lock().unwrap().update(&chunk);
            Some((Ok(chunk), sent + n as u64))
        }
    })
}

#[test]
fn big_file_streams_through_with_bounded_memory() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let (sb, _) = api.create(json!({})).await;
        let id = sb["id"].as_str().unwrap().to_string();
        let dir = "/home/user";
        let avail: u64 = api
            .sh(&id, &format!("df -B1 --output=avail {dir} | tail -n 1"))
            .await
            .trim()
            .parse()
            .unwrap();
        const GIB: u64 = 1024 * 1024 * 1024;
        const MIB: u64 = 1024 * 1024;
        // Leave a little room for the guest itself.
        let fits = avail.saturating_sub(48 * MIB) / MIB * MIB;
        let size = GIB.min(fits);
        eprintln!(
            "[numbers] guest free space at {dir}: {} MiB; big file size: {} MiB",
            avail / MIB,
            size / MIB
        );
        assert!(size >= 256 * MIB, "guest disk too small for a big file: {avail} bytes free");

        let pid = s.daemon_pid();
        let baseline = rss_bytes(pid).unwrap();
        let peak = Arc::new(AtomicU64::new(baseline));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    if let Some(r) = rss_bytes(pid) {
                        peak.fetch_max(r, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };

        let path = format!("{dir}/big.bin");
        let hasher = Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
        let body = reqwest::Body::wrap_stream(generated_body(size, hasher.clone()));
        let form = reqwest::multipart::Form::new().text("path", path.clone()).part(
            "file",
            reqwest::multipart::Part::stream_with_length(body, size).file_name("big.bin"),
        );
        let t0 = Instant::now();
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/write"),
            )
            .multipart(form)
            .timeout(Duration::from_secs(1800))
            .send()
            .await
            .unwrap();
        let up = t0.elapsed();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
        let sent_digest = hex::encode(
            std::mem::replace(&mut *hasher.lock().unwrap(), sha2::Sha256::new()).finalize(),
        );
        let peak_up = peak.load(Ordering::SeqCst);
        let on_disk: u64 = api
            .sh(&id, &format!("stat -c %s {path}"))
            .await
            .trim()
            .parse()
            .unwrap();
        assert_eq!(on_disk, size);

        let t0 = Instant::now();
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/read"),
            )
            .json(&json!({ "path": path }))
            .timeout(Duration::from_secs(1800))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut got = 0u64;
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("download broke");
            got += chunk.len() as u64;
            h.update(&chunk);
        }
        let down = t0.elapsed();
        done.store(true, Ordering::SeqCst);
        sampler.await.unwrap();
        let peak_all = peak.load(Ordering::SeqCst);
        assert_eq!(got, size, "downloaded size");
        assert_eq!(hex::encode(h.finalize()), sent_digest, "download differs");

        let mb = size as f64 / MIB as f64;
        eprintln!(
            "[numbers] {} MiB up in {up:?} ({:.1} MiB/s), down in {down:?} ({:.1} MiB/s)",
            size / MIB,
            mb / up.as_secs_f64(),
            mb / down.as_secs_f64()
        );
        eprintln!(
            "[numbers] wrenn up VmRSS: baseline {} MiB, peak during upload {} MiB, peak overall {} MiB",
            baseline / MIB,
            peak_up / MIB,
            peak_all / MIB
        );
        assert!(
            peak_all.saturating_sub(baseline) < 64 * MIB,
            "wrenn up grew by {} MiB while streaming {} MiB",
            (peak_all - baseline) / MIB,
            size / MIB
        );
        api.sh(&id, &format!("rm {path}")).await;
        api.destroy(&id).await;
    });
}

/// Every file under `dir`, symlinks not followed.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            files_under(&entry.path(), out);
        } else if meta.is_file() {
            out.push(entry.path());
        }
    }
}

#[test]
fn data_dir_secrets_disks_and_memory_are_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let (sb, _) = api.create(json!({"memory_mb": 256})).await;
        let id = sb["id"].as_str().unwrap().to_string();
        // A pause leaves the memory and device state in files too.
        api.pause(&id).await;

        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.data_dir), 0o700, "{}", s.data_dir.display());
        // Directly in it: the agent token, the JWT secret, the SQLite database and its journals.
        let mut top = Vec::new();
        for entry in std::fs::read_dir(&s.data_dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                assert_eq!(mode(&entry.path()) & 0o077, 0, "{name} is open to others");
                top.push(name);
            }
        }
        for secret in ["agent_token", "jwt_secret", "wrenn.db"] {
            assert!(top.iter().any(|n| n == secret), "no {secret} in {top:?}");
        }

        // The sandbox's own files (disk layers, memory, device state, console) are closed to
        // others (what QEMU writes itself gets its daemon umask, 027: group root may read); the
        // base image it links to is the public one.
        let mut files = Vec::new();
        files_under(&s.data_dir.join("sandboxes").join(&id), &mut files);
        assert!(files.len() > 2, "{files:?}");
        let base = std::fs::metadata(s.data_dir.join("images/templates/minimal/rootfs.ext4"))
            .map(|m| (m.dev(), m.ino()))
            .unwrap();
        for file in &files {
            let meta = std::fs::metadata(file).unwrap();
            if (meta.dev(), meta.ino()) != base {
                assert_eq!(
                    mode(file) & 0o007,
                    0,
                    "{} is open to others",
                    file.display()
                );
            }
        }

        // Another user reads none of it: not the database, not the sandbox's disk or memory.
        files.push(s.data_dir.join("wrenn.db"));
        for file in &files {
            let out = std::process::Command::new("cat")
                .arg(file)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            assert!(!out.status.success(), "user nobody read {}", file.display());
        }
        api.resume(&id).await;
        api.destroy(&id).await;
    });
}

#[test]
fn zz_teardown_leaves_nothing_behind() {
    rt().block_on(async {
        common::wait_for_other_tests().await;
        let Some(s) = common::started_suite() else {
            eprintln!("no other test started the daemon; nothing to tear down");
            return;
        };
        let x = enter_exclusive().await;
        assert!(std::ptr::eq(x.suite, s));
        // Whatever failed tests left: destroyed through the API.
        for account in s.accounts() {
            let api = s.api(&account);
            let (st, list) = api.get("/v1/sandboxes").await;
            assert_eq!(st, 200, "{list}");
            for sb in list.as_array().unwrap() {
                api.destroy(sb["id"].as_str().unwrap()).await;
            }
            let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
            for t in snaps.as_array().unwrap() {
                let (st, v) = api
                    .delete(&format!("/v1/snapshots/{}", t["name"].as_str().unwrap()))
                    .await;
                assert_eq!(st, 204, "{v}");
            }
        }
        let qemus: Vec<_> = common::processes_of(&s.data_dir)
            .into_iter()
            .filter(|(pid, _)| *pid as u32 != s.daemon_pid())
            .collect();
        assert!(qemus.is_empty(), "VMs left after destroying all: {qemus:?}");
        let status = s.stop(nix::sys::signal::Signal::SIGTERM).await;
        assert!(status.success(), "wrenn up exit: {status}");
        let left = common::processes_of(&s.data_dir);
        assert!(left.is_empty(), "processes left after stopping: {left:?}");
        // With every sandbox gone, a clean stop leaves no network namespace of its prefix
        // (idle pooled slots are removed at shutdown).
        let prefix = format!("{}-", common::NET_PREFIX);
        let netns = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let kept: Vec<&str> = netns
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(
            kept.is_empty(),
            "network namespaces left after shutdown: {kept:?}"
        );
        for sub in ["sandboxes", "templates"] {
            let dir = s.data_dir.join(sub);
            let entries: Vec<_> = std::fs::read_dir(&dir)
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(
                entries.is_empty(),
                "{} not empty: {entries:?}",
                dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&s.data_dir);
    });
}
