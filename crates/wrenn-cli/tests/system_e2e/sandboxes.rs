//! A sandbox's life through the API (exec, streams, files, pause, isolation) and snapshots.

use crate::common::{enter, rt};
use crate::{next_event, parse_time, pseudo_random};
use base64::Engine;
use futures_util::SinkExt;
use serde_json::{json, Value};
use sha2::Digest;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

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
