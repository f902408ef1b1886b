//! End-to-end test of a guest's files through the agent's HTTP API with a real microVM and
//! envd: a binary file written into directories that do not exist yet reads back exactly,
//! `files/mkdir` makes a directory with its parents (and answers `already_exists` the second
//! time), `files/list` shows files, directories and links with their details, levels deep,
//! and `files/remove` takes a file or a whole tree; all of it again after a pause and
//! resume.
//!
//! Needs root and the guest images, as `vm_e2e.rs`. Slots 9650-9699, network prefix `cf`.

use serde_json::{json, Value};

mod common;

use common::*;

const PREFIX: &str = "cf";
const FIRST_SLOT: u32 = 9650;

async fn start_agent() -> TestAgent {
    let slots = Slots {
        prefix: PREFIX,
        first: FIRST_SLOT,
        count: 50,
        pool: 1,
    };
    TestAgent::start(scratch_dir("files"), slots).await
}

impl TestAgent {
    async fn op(&self, id: &str, op: &str, body: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/{op}"),
            Some(body),
        )
        .await
    }

    async fn write(&self, id: &str, path: &str, data: Vec<u8>) -> u16 {
        self.http
            .put(self.url(&format!("/v1/sandboxes/{id}/files")))
            .query(&[("path", path)])
            .bearer_auth(TOKEN)
            .body(data)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn read(&self, id: &str, path: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/sandboxes/{id}/files")))
            .query(&[("path", path)])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "read {path}");
        resp.bytes().await.unwrap().to_vec()
    }

    /// The paths listed under `dir`, `depth` levels deep, with their entries.
    async fn list(&self, id: &str, dir: &str, depth: u32) -> Vec<Value> {
        let (s, v) = self
            .op(id, "files/list", json!({"path": dir, "depth": depth}))
            .await;
        assert_eq!(s, 200, "list {dir}: {v}");
        assert_eq!(v["truncated"], false);
        v["entries"].as_array().unwrap().clone()
    }
}

fn paths(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect()
}

/// Every byte value, in an order that is not a repeating pattern of small period.
fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + i / 251) % 256) as u8).collect()
}

async fn check_files(a: &TestAgent, id: &str) {
    // A binary file into directories that do not exist yet: the same bytes come back.
    let data = binary(3 * 1024 * 1024 + 17);
    let file = "/root/deep/new/dir/bin.dat";
    assert_eq!(a.write(id, file, data.clone()).await, 204);
    assert_eq!(a.read(id, file).await, data);
    a.sh(
        id,
        "ln -s bin.dat /root/deep/new/dir/ln && chmod 750 /root/deep/new",
    )
    .await;

    let (s, made) = a
        .op(id, "files/mkdir", json!({"path": "/root/made/a/b"}))
        .await;
    assert_eq!(s, 200, "mkdir: {made}");
    let e = &made["entry"];
    assert_eq!(
        (e["type"].as_str(), e["name"].as_str()),
        (Some("directory"), Some("b"))
    );
    assert_eq!(
        (e["owner"].as_str(), e["group"].as_str()),
        (Some("root"), Some("root"))
    );
    assert!(
        e["permissions"].as_str().unwrap().starts_with("drwx"),
        "{e}"
    );
    let (s, again) = a
        .op(id, "files/mkdir", json!({"path": "/root/made/a/b"}))
        .await;
    assert_eq!(
        (s, again["error"]["code"].as_str()),
        (409, Some("already_exists")),
        "{again}"
    );
    a.sh(id, "test -d /root/made/a/b").await;

    let deep = a.list(id, "/root/deep", 3).await;
    assert_eq!(
        paths(&deep),
        [
            "/root/deep/new",
            "/root/deep/new/dir",
            "/root/deep/new/dir/bin.dat",
            "/root/deep/new/dir/ln"
        ]
    );
    assert_eq!(deep[0]["permissions"], "drwxr-x---");
    assert_eq!(deep[0]["mode"].as_u64().unwrap() & 0o7777, 0o750);
    let bin = &deep[2];
    assert_eq!(bin["type"], "file");
    assert_eq!(bin["size"].as_u64(), Some(data.len() as u64));
    assert_eq!(bin["owner"], "root");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mtime = bin["modified_at"].as_i64().unwrap();
    assert!(
        (now - 3600..=now + 3600).contains(&mtime),
        "mtime {mtime}, now {now}"
    );
    assert_eq!(deep[3]["type"], "symlink");
    assert_eq!(deep[3]["symlink_target"], "bin.dat");
    // One level: the directory's own entries only.
    assert_eq!(
        paths(&a.list(id, "/root/deep", 1).await),
        ["/root/deep/new"]
    );

    // A file, then a whole tree.
    let (s, _) = a
        .op(id, "files/remove", json!({"path": "/root/deep/new/dir/ln"}))
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        a.read(id, file).await.len(),
        data.len(),
        "the link's target stays"
    );
    let (s, _) = a
        .op(id, "files/remove", json!({"path": "/root/deep"}))
        .await;
    assert_eq!(s, 204);
    a.sh(id, "test ! -e /root/deep").await;
    let (s, v) = a.op(id, "files/list", json!({"path": "/root/deep"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("file_not_found")),
        "{v}"
    );
    let (s, _) = a
        .op(id, "files/remove", json!({"path": "/root/made"}))
        .await;
    assert_eq!(s, 204);
}

#[test]
fn list_mkdir_remove_in_a_real_guest() {
    rt().block_on(async {
        let a = start_agent().await;
        let id = a.create("minimal", 512).await;
        check_files(&a, &id).await;

        // The same after a pause and resume (a restored guest's envd).
        let (s, v) = a.op(&id, "pause", json!({})).await;
        assert_eq!(s, 200, "pause: {v}");
        let (s, v) = a.op(&id, "files/list", json!({"path": "/root"})).await;
        assert_eq!(s, 409, "a paused sandbox lists nothing: {v}");
        let (s, v) = a.op(&id, "resume", json!({})).await;
        assert_eq!(s, 200, "resume: {v}");
        check_files(&a, &id).await;

        a.destroy(&id).await;
        let _ = std::fs::remove_dir_all(&a.data_dir);
    });
}
