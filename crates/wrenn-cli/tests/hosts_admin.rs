//! `wrenn hosts list | drain | undrain | remove [--force]` on a control plane's data dir
//! (SQLite), no server running: what the table and `--json` show (never a host's token), the
//! drain flag written, a removal refused while a sandbox is placed on the host and done with
//! `--force`, and an unknown host reported as one `error:` line.

mod support;

use support::User;
use wrenn_server::store::{self, HostRecord, HostStatus, SandboxRecord, Store};
use wrenn_server::ServerConfig;
use wrenn_types::agent::SandboxStatus;

fn host(id: &str, url: &str) -> HostRecord {
    HostRecord {
        id: id.into(),
        url: url.into(),
        token: "secret-agent-token".into(),
        status: HostStatus::Healthy,
        cpus: 4,
        total_memory_mb: 8192,
        free_memory_mb: 6000,
        running: 1,
        last_seen: Some(store::now()),
        created_at: store::now(),
        draining: false,
        cert_sha256: None,
    }
}

/// A data dir whose database holds two hosts, one with a sandbox.
fn data_dir() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(dir.path().to_path_buf(), Vec::new());
    let store = support::rt().block_on(async {
        let added = wrenn_server::add_account(&cfg, "admin@example.com", "password123")
            .await
            .unwrap();
        let s = wrenn_server::open_store(&cfg).await.unwrap();
        s.upsert_host(&host("host-a", "http://10.0.0.1:8081"))
            .await
            .unwrap();
        s.upsert_host(&host("host-b", "http://10.0.0.2:8081"))
            .await
            .unwrap();
        let now = store::now();
        s.insert_sandbox(&SandboxRecord {
            id: "sb-on-a".into(),
            team_id: added.team_id,
            host_id: "host-a".into(),
            status: SandboxStatus::Running,
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 512,
            timeout_sec: 300,
            guest_ip: String::new(),
            host_ip: String::new(),
            created_at: now,
            started_at: Some(now),
            last_active_at: None,
            last_updated: now,
            intent: None,
            version: 0,
        })
        .await
        .unwrap();
        s
    });
    (dir, store)
}

#[test]
fn hosts_list_drain_undrain_and_remove() {
    let (dir, s) = data_dir();
    let d = dir.path().to_str().unwrap();
    let u = User::new("http://127.0.0.1:9");

    let table = u.run(&["hosts", "list", "--data-dir", d]).ok();
    assert!(table.stdout.starts_with("ID "), "{}", table.stdout);
    assert!(table.stdout.contains("host-a"), "{}", table.stdout);
    assert!(table.stdout.contains("healthy"), "{}", table.stdout);
    assert!(table.stdout.contains("6000/8192"), "{}", table.stdout);
    assert!(!table.stdout.contains("secret-agent-token"));
    let list = u
        .run(&["--json", "hosts", "list", "--data-dir", d])
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["id"], "host-a");
    assert_eq!(list[0]["draining"], false);
    assert!(!list.to_string().contains("secret-agent-token"));

    let out = u.run(&["hosts", "drain", "host-a", "--data-dir", d]).ok();
    assert!(out.stdout.contains("draining"), "{}", out.stdout);
    let list = u
        .run(&["--json", "hosts", "list", "--data-dir", d])
        .ok()
        .json();
    assert_eq!(list[0]["draining"], true);
    assert_eq!(list[1]["draining"], false);
    u.run(&["hosts", "undrain", "host-a", "--data-dir", d]).ok();
    let hosts = support::rt().block_on(s.list_hosts()).unwrap();
    assert!(!hosts[0].draining);

    // Refused with a sandbox on it; nothing changed.
    let out = u.run(&["hosts", "remove", "host-a", "--data-dir", d]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(support::rt().block_on(s.list_hosts()).unwrap().len(), 2);
    // Forced: the host and its sandbox's record are gone.
    let gone = u
        .run(&[
            "--json",
            "hosts",
            "remove",
            "host-a",
            "--force",
            "--data-dir",
            d,
        ])
        .ok()
        .json();
    assert_eq!(gone["forgotten_sandboxes"], 1);
    assert!(support::rt()
        .block_on(s.find_sandbox("sb-on-a"))
        .unwrap()
        .is_none());
    // Without sandboxes no force is needed.
    u.run(&["hosts", "remove", "host-b", "--data-dir", d]).ok();
    assert!(support::rt().block_on(s.list_hosts()).unwrap().is_empty());

    let out = u.run(&["hosts", "drain", "host-nope", "--data-dir", d]);
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("no host host-nope"), "{}", out.stderr);
}
