//! End-to-end tests of the host agent with real microVMs: the agent's internal API served on
//! loopback, QEMU (TCG here, KVM where the host has it), real network slots and envd.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`; built on first
//! use from `WRENN_ENVD_BIN`). The VM tests share one agent and run with the test harness's
//! bounded parallelism.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::*;

async fn start_agent(data_dir: PathBuf, prefix: &'static str, first_slot: u32) -> TestAgent {
    let slots = Slots {
        prefix,
        first: first_slot,
        count: 40,
        pool: 2,
    };
    TestAgent::start(data_dir, slots).await
}

/// Fixed prefixes and slot ranges: a run cleans up whatever a killed earlier run left behind
/// (the pool removes its prefix's stale slots when it starts).
const SHARED_PREFIX: &str = "ea";
const SHARED_SLOTS: u32 = 9000;
const RESTART_PREFIX: &str = "eb";
const RESTART_SLOTS: u32 = 9050;

async fn shared() -> &'static TestAgent {
    static AGENT: OnceCell<TestAgent> = OnceCell::const_new();
    AGENT
        .get_or_init(|| async {
            start_agent(scratch_dir("shared"), SHARED_PREFIX, SHARED_SLOTS).await
        })
        .await
}

#[test]
fn create_exec_files_and_stream() {
    rt().block_on(async {
        let a = shared().await;
        let id = a.create("minimal", 512).await;

        // Python inside the guest.
        let v = a.exec(&id, "python3", &["-c", "print(6*7)"]).await;
        assert_eq!(v["stdout"], "42\n");
        assert_eq!(v["exit_code"], 0);
        // The unprivileged user exists with passwordless sudo.
        let who = a.sh(&id, "sudo -u user sudo -n id -un").await;
        assert_eq!(who.trim(), "root");

        // 10 MB of random bytes there and back, byte for byte.
        let data: Vec<u8> = (0..10 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
        let url = format!("{}/v1/sandboxes/{id}/files", a.base);
        let r = a
            .http
            .put(&url)
            .query(&[("path", "/home/user/data/blob.bin")])
            .bearer_auth(TOKEN)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = a
            .http
            .get(&url)
            .query(&[("path", "/home/user/data/blob.bin")])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let back = r.bytes().await.unwrap();
        assert!(back.as_ref() == data.as_slice(), "file differs after round trip");
        let sum = a.sh(&id, "sha256sum /home/user/data/blob.bin | cut -d' ' -f1").await;
        use sha2::Digest;
        assert_eq!(sum.trim(), hex::encode(sha2::Sha256::digest(&data)));
        // A missing file is a 404 with a file_not_found code.
        let r = a
            .http
            .get(&url)
            .query(&[("path", "/nope")])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "file_not_found");

        // Streamed output arrives while the command runs, not at the end.
        let ws_url = format!("ws{}/v1/sandboxes/{id}/exec/stream", &a.base[4..]);
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::Text(
            json!({"type":"start","cmd":"sh","args":["-c","for i in 1 2 3 4 5; do echo line$i; sleep 0.5; done"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let started = Instant::now();
        let mut stdout_at = Vec::new();
        let mut text = String::new();
        let mut exit = None;
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            match v["type"].as_str().unwrap() {
                "start" => assert!(v["pid"].as_u64().unwrap() > 0),
                "stdout" => {
                    stdout_at.push(started.elapsed());
                    text.push_str(v["data"].as_str().unwrap());
                }
                "exit" => exit = Some(v["exit_code"].as_i64().unwrap()),
                other => panic!("unexpected {other}: {v}"),
            }
        }
        assert_eq!(exit, Some(0));
        assert_eq!(text, "line1\nline2\nline3\nline4\nline5\n");
        let first = stdout_at[0];
        let last = *stdout_at.last().unwrap();
        assert!(
            last - first >= Duration::from_millis(1500),
            "output arrived all at once: {stdout_at:?}"
        );
        a.destroy(&id).await;
        let (s, _) = a
            .get(&format!("/v1/sandboxes/{id}"))
            .await;
        assert_eq!(s, 404);
    });
}

#[test]
fn pause_resume_keeps_processes_and_files() {
    rt().block_on(async {
        let a = shared().await;
        let id = a.create("minimal", 512).await;
        a.sh(&id, "echo kept > /root/note.txt").await;
        // A process that counts in the background.
        a.sh(
            &id,
            "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' \
             >/dev/null 2>&1 < /dev/null & echo $! > /tmp/counter.pid",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let pid = a.sh(&id, "cat /tmp/counter.pid").await;

        for round in 0..2 {
            let (s, v) = a.post(&format!("/v1/sandboxes/{id}/pause")).await;
            assert_eq!(s, 200, "pause {round}: {v}");
            assert_eq!(v["status"], "paused");
            assert_eq!(v["host_ip"], "");
            // Not running: exec is a conflict.
            let (s, v) = a
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(json!({"cmd": "true"})),
                )
                .await;
            assert_eq!(s, 409, "{v}");
            let (s, v) = a.post(&format!("/v1/sandboxes/{id}/pause")).await;
            assert_eq!(s, 409, "pausing a paused sandbox: {v}");
            let (s, v) = a.post(&format!("/v1/sandboxes/{id}/resume")).await;
            assert_eq!(s, 200, "resume {round}: {v}");
            assert_eq!(v["status"], "running");

            assert_eq!(a.sh(&id, "cat /root/note.txt").await, "kept\n");
            assert_eq!(
                a.sh(&id, &format!("kill -0 {} && echo alive", pid.trim()))
                    .await,
                "alive\n"
            );
            let c1: u64 = a.sh(&id, "cat /tmp/count").await.trim().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(800)).await;
            let c2: u64 = a.sh(&id, "cat /tmp/count").await.trim().parse().unwrap();
            assert!(c2 > c1, "counter stopped after resume: {c1} -> {c2}");
            // The guest clock was set on resume: within a few seconds of the host's.
            let guest: i64 = a.sh(&id, "date +%s").await.trim().parse().unwrap();
            let host = chrono::Utc::now().timestamp();
            assert!(
                (guest - host).abs() <= 3,
                "guest clock {guest} vs host {host}"
            );
        }
        let (s, _) = a.post(&format!("/v1/sandboxes/{id}/resume")).await;
        assert_eq!(s, 409, "resuming a running sandbox");
        a.destroy(&id).await;
    });
}

#[test]
fn snapshot_templates_clone_independently_and_survive_deletion() {
    rt().block_on(async {
        let a = shared().await;
        let id = a.create("minimal", 512).await;
        a.sh(&id, "mkdir -p /srv && echo from-snapshot > /srv/origin")
            .await;
        let name = format!("snap-{}", rand_suffix());
        let (s, v) = a
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/snapshot"),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 201, "snapshot: {v}");
        assert_eq!(v["name"], name.as_str());
        assert_eq!(v["memory_mb"], 512);
        assert!(v["size_bytes"].as_u64().unwrap() > 0);
        // The sandbox became the template.
        let (s, _) = a.get(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 404);
        let (_, list) = a.get("/v1/templates").await;
        assert!(list
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == name.as_str()));

        let c1 = a.create(&name, 512).await;
        let c2 = a.create(&name, 512).await;
        for c in [&c1, &c2] {
            assert_eq!(a.sh(c, "cat /srv/origin").await, "from-snapshot\n");
        }
        a.sh(&c1, "echo one > /srv/mine").await;
        a.sh(&c2, "echo two > /srv/mine").await;
        assert_eq!(a.sh(&c1, "cat /srv/mine").await, "one\n");
        assert_eq!(a.sh(&c2, "cat /srv/mine").await, "two\n");

        // Existing name without overwrite: refused.
        let c3 = a.create(&name, 512).await;
        let (s, v) = a
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{c3}/snapshot"),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 409, "{v}");
        assert_eq!(v["error"]["code"], "already_exists");
        // With overwrite: replaced; the clones of the old one keep working.
        a.sh(&c3, "echo second > /srv/origin").await;
        let (s, v) = a
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{c3}/snapshot"),
                Some(json!({"name": name, "overwrite": true})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let c4 = a.create(&name, 512).await;
        assert_eq!(a.sh(&c4, "cat /srv/origin").await, "second\n");

        // Deleting the template breaks none of its sandboxes, not even across pause/resume.
        let (s, v) = a.delete(&format!("/v1/templates/{name}")).await;
        assert_eq!(s, 204, "{v}");
        let (s, _) = a.delete(&format!("/v1/templates/{name}")).await;
        assert_eq!(s, 404);
        let (s, v) = a.post(&format!("/v1/sandboxes/{c1}/pause")).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = a.post(&format!("/v1/sandboxes/{c1}/resume")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            a.sh(&c1, "cat /srv/mine /srv/origin").await,
            "one\nfrom-snapshot\n"
        );
        assert_eq!(a.sh(&c2, "cat /srv/mine").await, "two\n");
        for c in [c1, c2, c4] {
            a.destroy(&c).await;
        }
    });
}

#[test]
fn guest_cannot_reach_host_services_or_other_sandboxes() {
    rt().block_on(async {
        let a = shared().await;
        // A service on the host, on every address.
        let host_srv = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = host_srv.local_addr().unwrap().port();
        let agent_port: u16 = a.base.rsplit(':').next().unwrap().parse().unwrap();
        let s1 = a.create("minimal", 512).await;
        let s2 = a.create("minimal", 512).await;
        let (_, v2) = a.get(&format!("/v1/sandboxes/{s2}")).await;
        let other_ip = v2["host_ip"].as_str().unwrap().to_string();
        // A listener in sandbox 2, reachable from the host (positive control).
        a.sh(
            &s2,
            "setsid python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null &",
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match a.http.get(format!("http://{other_ip}:8000/")).send().await {
                Ok(r) => break r.status(),
                Err(e) if Instant::now() > deadline => {
                    panic!("service in sandbox unreachable: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        assert_eq!(status, 200, "host reaches a service in a sandbox");

        let slot_of_s1 = a.agent.manager.get(&s1).await.unwrap().host_ip;
        let probe = |target: String| {
            format!(
                "import socket\ns=socket.socket(); s.settimeout(2)\n\
                 try:\n    s.connect(({target:?}))\n    print('CONNECTED')\n\
                 except Exception as e:\n    print('blocked', type(e).__name__)"
            )
        };
        let mut targets = vec![
            format!("\"{other_ip}\", 8000"),
            format!("\"172.16.0.1\", {port}"),
            format!("\"172.16.0.1\", {agent_port}"),
        ];
        // Every address of the host itself.
        for addr in host_addresses() {
            targets.push(format!("\"{addr}\", {port}"));
        }
        for t in targets {
            let v = a.exec(&s1, "python3", &["-c", &probe(t.clone())]).await;
            let out = v["stdout"].as_str().unwrap();
            assert!(
                out.starts_with("blocked"),
                "guest reached {t}: {v} (slot {slot_of_s1})"
            );
        }
        drop(host_srv);
        a.destroy(&s1).await;
        a.destroy(&s2).await;
    });
}

/// IPv4 addresses of the host's interfaces (loopback and our own veths included).
fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next().map(|a| a.split('/').next().unwrap().to_string())
        })
        .filter(|a| !a.starts_with("127."))
        .collect()
}

#[test]
fn restart_keeps_running_and_paused_sandboxes_and_dead_qemu_is_reported() {
    rt().block_on(async {
        let dir = scratch_dir("restart");
        let a = start_agent(dir.clone(), RESTART_PREFIX, RESTART_SLOTS).await;
        let running = a.create("minimal", 256).await;
        let paused = a.create("minimal", 256).await;
        a.sh(&running, "echo r > /root/r").await;
        a.sh(&paused, "echo p > /root/p").await;
        let (s, _) = a.post(&format!("/v1/sandboxes/{paused}/pause")).await;
        assert_eq!(s, 200);
        // The agent goes away (its VMs stay), a new one starts on the same data dir.
        a.agent.manager.detach_all().await;
        drop(a);
        let b = start_agent(dir.clone(), RESTART_PREFIX, RESTART_SLOTS).await;
        let (_, v) = b.get(&format!("/v1/sandboxes/{running}")).await;
        assert_eq!(v["status"], "running", "{v}");
        assert_eq!(b.sh(&running, "cat /root/r").await, "r\n");
        let (_, v) = b.get(&format!("/v1/sandboxes/{paused}")).await;
        assert_eq!(v["status"], "paused");
        let (s, v) = b.post(&format!("/v1/sandboxes/{paused}/resume")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(b.sh(&paused, "cat /root/p").await, "p\n");

        // Kill one QEMU behind the agent's back.
        let pid: i32 =
            std::fs::read_to_string(dir.join("sandboxes").join(&running).join("qemu.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = b.get(&format!("/v1/sandboxes/{running}")).await;
            if v["status"] == "error" {
                assert!(v["error"].as_str().unwrap().contains("unexpectedly"), "{v}");
                break;
            }
            assert!(Instant::now() < deadline, "killed QEMU never reported: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its slot went back: only the other sandbox holds one, and nothing of the network
        // is unaccounted for.
        let pool = b.agent.manager.slot_pool();
        assert_eq!(pool.in_use().len(), 1, "slots in use: {:?}", pool.in_use());
        let left = pool.leftovers().unwrap();
        assert!(left.is_empty(), "leaked while running: {left:?}");
        // Its record, disk layers and console log are kept (the user's files are there); the
        // RAM and the runtime files of the dead VM are gone.
        let mut left: Vec<_> = std::fs::read_dir(dir.join("sandboxes").join(&running))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert!(left.contains(&"sandbox.json".to_string()), "{left:?}");
        assert!(left.contains(&"console.log".to_string()), "{left:?}");
        assert!(
            left.iter()
                .any(|f| f.starts_with("disk-") && f.ends_with(".qcow2")),
            "disk layers deleted: {left:?}"
        );
        for gone in ["mem", "qmp.sock", "qemu.pid", "state"] {
            assert!(!left.contains(&gone.to_string()), "{gone} kept: {left:?}");
        }
        b.destroy(&running).await;
        b.destroy(&paused).await;
        // Nothing of this agent's network is left but its ready pool; after shutdown, nothing.
        b.agent.manager.slot_pool().shutdown().unwrap();
        let left = wrenn_agent::net::leftovers(&b.prefix).unwrap();
        assert!(left.is_empty(), "leaked: {left:?}");
        assert!(!std::fs::read_dir(dir.join("sandboxes"))
            .unwrap()
            .any(|_| true));
        let _ = std::fs::remove_dir_all(&b.data_dir);
    });
}

/// A guest that floods its serial console leaves the host's disk use bounded: the console log
/// is cut past its cap, keeping a tail (`wrenn_agent::vmm::console`).
#[test]
fn a_console_flood_keeps_the_console_log_bounded() {
    use wrenn_agent::vmm::console::{CAP, KEEP};
    rt().block_on(async {
        let a = shared().await;
        let id = a.create("minimal", 256).await;
        let dir = a.data_dir.join("sandboxes").join(&id);
        // Writes well past the cap to the console, counting what it wrote.
        let script = "head -c 65536 /dev/zero | tr '\\0' x > /tmp/chunk; i=0; \
             end=$(( $(date +%s) + 25 )); \
             while [ $(date +%s) -lt $end ]; do cat /tmp/chunk; i=$((i+1)); done \
             > /dev/ttyS0; echo $(( i * 65536 ))";
        let v = a.exec(&id, "sh", &["-c", script]).await;
        let written: u64 = v["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("flood: {v}"));
        assert!(
            written > 3 * CAP,
            "the flood wrote only {written} bytes: too slow to test the bound"
        );
        // Give the checker one more round, then measure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        let (log, prev) = (size("console.log"), size("console.log.1"));
        assert!(prev > 0 && prev <= KEEP, "kept tail: {prev} bytes");
        // At most the cap, plus what a few seconds of flood add between two checks.
        let bound = CAP + 4 * (written / 25);
        assert!(
            log <= bound,
            "console log {log} bytes > {bound} after {written} written"
        );
        a.destroy(&id).await;
    });
}
