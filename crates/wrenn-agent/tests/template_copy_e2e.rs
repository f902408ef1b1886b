//! A snapshot template's copy between two real agents over their HTTP API, with real files
//! (no VM is needed to move them; `wrenn-cli`'s tests create from a copied template): the
//! source's manifest names every plain file with its size and SHA-256 (not the host's own
//! record of the sandbox it came from), ranged reads start at the asked offset, the receiver
//! takes a file in pieces at the offset it holds (any other offset is a conflict), a copy
//! under way is no template, a corrupted byte is refused at commit and only that file is
//! sent again, the commit publishes the same bytes, a name that would leave the template
//! directory is refused, and an abort leaves nothing.
//!
//! Needs root and the guest images, as `vm_e2e.rs` (the agents start as usual). Slots
//! 10100-10101 (network prefix `tc`) and 10120-10121 (`td`).

use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

mod common;

use common::*;

const NAME: &str = "t-copy-e2e";

/// A snapshot template made by hand in `data_dir` (the files a snapshot leaves): what each
/// file holds, by name.
fn make_template(data_dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let dir = data_dir.join("templates").join(NAME);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = json!({
        "name": NAME, "kind": "snapshot", "vcpus": 1, "memory_mb": 256,
        "layers": ["disk-1.qcow2"], "created_at": "2026-12-01T10:00:00.000Z",
    });
    let noise = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    };
    let files = vec![
        ("disk-1.qcow2".to_string(), noise(1 << 20, 7)),
        ("mem".to_string(), noise(3 << 20, 1)),
        ("meta.json".to_string(), serde_json::to_vec(&meta).unwrap()),
        ("state".to_string(), noise(200 * 1024, 3)),
    ];
    for (n, b) in &files {
        std::fs::write(dir.join(n), b).unwrap();
    }
    std::fs::write(dir.join("from-sandbox"), "sb-source").unwrap();
    files
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

impl TestAgent {
    /// The raw bytes of a GET, with its status.
    async fn bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    /// Sends `body` as `file` of the copy at `offset`.
    async fn put_piece(&self, file: &str, offset: usize, body: &[u8]) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(&format!(
                "/v1/template-copies/{NAME}/files/{file}?offset={offset}"
            )))
            .bearer_auth(TOKEN)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn template_names(&self) -> Vec<String> {
        let (s, v) = self.get("/v1/templates").await;
        assert_eq!(s, 200);
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn held(status: &Value, file: &str) -> u64 {
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == file)
        .map(|f| f["held"].as_u64().unwrap())
        .unwrap()
}

#[test]
fn a_template_copies_between_agents_checked_resumable_and_atomic() {
    rt().block_on(async {
        let slots = |prefix, first| Slots {
            prefix,
            first,
            count: 2,
            pool: 0,
        };
        let a = TestAgent::start(scratch_dir("copy-src"), slots("tc", 10100)).await;
        let b = TestAgent::start(scratch_dir("copy-dst"), slots("td", 10120)).await;
        let files = make_template(&a.data_dir);

        // The manifest: every plain file, sorted, with its size and digest.
        let (s, manifest) = a.get(&format!("/v1/templates/{NAME}/manifest")).await;
        assert_eq!(s, 200, "{manifest}");
        let listed: Vec<(String, u64, String)> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["size"].as_u64().unwrap(),
                    f["sha256"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, u64, String)> = files
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64, sha(b)))
            .collect();
        assert_eq!(listed, want);
        let (s, _) = a.get("/v1/templates/minimal/manifest").await;
        assert_eq!(s, 404, "a base template is not copied");

        // A ranged read starts where asked; names that would leave the template are refused.
        let mem = &files[1].1;
        let (s, tail) = a
            .bytes(&format!("/v1/templates/{NAME}/files/mem?offset=1000"))
            .await;
        assert_eq!((s, tail.as_slice()), (200, &mem[1000..]));
        for bad in ["..%2Fminimal", "from-sandbox", "%2Fetc%2Fpasswd", ".."] {
            let (s, _) = a.bytes(&format!("/v1/templates/{NAME}/files/{bad}")).await;
            assert!(s == 404 || s == 400, "{bad}: {s}");
        }
        let mut escaping = manifest.clone();
        escaping["files"][0]["name"] = json!("../escape");
        let (s, _) = b
            .call(
                Method::PUT,
                &format!("/v1/template-copies/{NAME}"),
                Some(escaping),
            )
            .await;
        assert_eq!(s, 400);

        // The receiver takes the RAM file in two pieces, each at the offset it holds.
        let (s, status) = b
            .call(
                Method::PUT,
                &format!("/v1/template-copies/{NAME}"),
                Some(manifest.clone()),
            )
            .await;
        assert_eq!(s, 200, "{status}");
        assert_eq!(held(&status, "mem"), 0);
        let cut = 1 << 20;
        let (s, v) = b.put_piece("mem", 0, &mem[..cut]).await;
        assert_eq!((s, v["held"].as_u64()), (200, Some(cut as u64)));
        let (s, v) = b.put_piece("mem", 0, &mem[..cut]).await;
        assert_eq!(s, 409, "an offset the copy does not hold: {v}");
        // Begun again (as after an interruption), the copy says what it holds.
        let (_, status) = b
            .call(
                Method::PUT,
                &format!("/v1/template-copies/{NAME}"),
                Some(manifest.clone()),
            )
            .await;
        assert_eq!(held(&status, "mem"), cut as u64);
        let (s, rest) = a
            .bytes(&format!("/v1/templates/{NAME}/files/mem?offset={cut}"))
            .await;
        assert_eq!(s, 200);
        let (s, v) = b.put_piece("mem", cut, &rest).await;
        assert_eq!((s, v["held"].as_u64()), (200, Some(mem.len() as u64)));
        let (s, _) = b.put_piece("mem", mem.len(), b"x").await;
        assert_eq!(s, 400, "more than the file has");

        // The others, with one byte of the state flipped on the way.
        for (n, bytes) in &files {
            if n == "mem" {
                continue;
            }
            let mut sent = bytes.clone();
            if n == "state" {
                sent[5000] ^= 0x20;
            }
            assert_eq!(b.put_piece(n, 0, &sent).await.0, 200);
        }
        assert!(!b.template_names().await.contains(&NAME.to_string()));
        let (s, v) = b.post(&format!("/v1/template-copies/{NAME}/commit")).await;
        assert_eq!(s, 409, "{v}");
        assert!(v.to_string().contains("state"), "{v}");
        assert!(!b.template_names().await.contains(&NAME.to_string()));
        let (_, status) = b
            .call(
                Method::PUT,
                &format!("/v1/template-copies/{NAME}"),
                Some(manifest.clone()),
            )
            .await;
        assert_eq!(
            held(&status, "state"),
            0,
            "the file that differs is dropped"
        );
        assert_eq!(
            held(&status, "mem"),
            mem.len() as u64,
            "the others are kept"
        );
        assert_eq!(b.put_piece("state", 0, &files[3].1).await.0, 200);
        let (s, v) = b.post(&format!("/v1/template-copies/{NAME}/commit")).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["name"], NAME);
        assert!(b.template_names().await.contains(&NAME.to_string()));
        let published = b.data_dir.join("templates").join(NAME);
        for (n, bytes) in &files {
            assert_eq!(&std::fs::read(published.join(n)).unwrap(), bytes, "{n}");
        }
        assert!(!published.join("from-sandbox").exists());
        assert!(!b.data_dir.join("incoming").join(NAME).exists());
        // Copied once more, it is there already.
        let (s, _) = b
            .call(
                Method::PUT,
                &format!("/v1/template-copies/{NAME}"),
                Some(manifest.clone()),
            )
            .await;
        assert_eq!(s, 409);

        // An aborted copy leaves nothing.
        let mut other = manifest.clone();
        other["name"] = json!("t-copy-aborted");
        let (s, _) = b
            .call(
                Method::PUT,
                "/v1/template-copies/t-copy-aborted",
                Some(other),
            )
            .await;
        assert_eq!(s, 200);
        let r = b
            .http
            .put(b.url("/v1/template-copies/t-copy-aborted/files/mem?offset=0"))
            .bearer_auth(TOKEN)
            .body(mem[..1000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(b.data_dir.join("incoming/t-copy-aborted").exists());
        let (s, _) = b.delete("/v1/template-copies/t-copy-aborted").await;
        assert_eq!(s, 204);
        assert!(!b.data_dir.join("incoming/t-copy-aborted").exists());
        assert!(!b
            .template_names()
            .await
            .contains(&"t-copy-aborted".to_string()));

        for d in [&a.data_dir, &b.data_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    });
}
