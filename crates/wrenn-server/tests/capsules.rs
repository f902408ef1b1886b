//! `/v1/capsules` against the simulated agent, shaped as the Wrenn SDK sends and parses it:
//! the lifecycle with metadata and status words, the SDK's error codes (a destroyed
//! capsule is `not_found`, as `destroy(wait=True)` polls for), connect-style resume, files
//! (binary round trips, streamed transfers, list, mkdir, remove), snapshots and the seed's
//! `/v1/sandboxes` answers left as they were.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{assert_error, TestServer};

async fn create(t: &TestServer, key: &str, body: Value) -> Value {
    let r = t
        .keyed(Method::POST, "/v1/capsules", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "create capsule: {v}");
    v
}

async fn call(t: &TestServer, key: &str, method: Method, path: &str) -> reqwest::Response {
    t.keyed(method, path, key).send().await.unwrap()
}

async fn post_json(t: &TestServer, key: &str, path: &str, body: Value) -> reqwest::Response {
    t.keyed(Method::POST, path, key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn write(t: &TestServer, key: &str, id: &str, path: &str, data: Vec<u8>) -> u16 {
    // As the SDK's `Files.write`: the `path` field, then the `file` field.
    let form = reqwest::multipart::Form::new()
        .text("path", path.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name("upload"),
        );
    t.keyed(Method::POST, &format!("/v1/capsules/{id}/files/write"), key)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn read(t: &TestServer, key: &str, id: &str, route: &str, path: &str) -> Vec<u8> {
    let r = post_json(
        t,
        key,
        &format!("/v1/capsules/{id}/files/{route}"),
        json!({"path": path}),
    )
    .await;
    assert_eq!(r.status(), 200, "read {path}");
    r.bytes().await.unwrap().to_vec()
}

fn every_byte(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test]
async fn lifecycle_with_metadata_and_status_words() {
    let t = TestServer::start().await;
    let acc = t.account("caps@example.com").await;
    let c = create(
        &t,
        &acc.key,
        json!({"template": "minimal", "vcpus": 1, "memory_mb": 512, "timeout_sec": 0,
               "metadata": {"env": "test", "owner.team": "a-1"}}),
    )
    .await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["status"], "running");
    assert_eq!(c["metadata"], json!({"env": "test", "owner.team": "a-1"}));
    for f in ["created_at", "last_updated", "started_at"] {
        assert!(c[f].as_str().is_some_and(|s| s.ends_with('Z')), "{f}: {c}");
    }

    let got: Value = call(&t, &acc.key, Method::GET, &format!("/v1/capsules/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["metadata"]["env"], "test");
    // Disk use from the latest resource sample (the simulated agent's: 8 MiB), on GET only.
    assert_eq!(got["disk_used_mb"], 8, "{got}");
    // The disk's capacity, as the agent reports it (the simulated agent's: 2048 MiB).
    assert_eq!(got["disk_size_mb"], 2048, "{got}");
    let list: Vec<Value> = call(&t, &acc.key, Method::GET, "/v1/capsules")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["metadata"]["owner.team"], "a-1");
    assert!(list[0].get("disk_used_mb").is_none());
    assert!(list[0].get("disk_size_mb").is_none());

    // The same sandbox under the seed's route, in the seed's shape.
    let sb = t.get(&acc.key, id).await.unwrap();
    assert_eq!(sb["status"], "running");
    assert!(sb.get("metadata").is_none());

    let r = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/ping"),
    )
    .await;
    assert_eq!(r.status(), 204);
    let p: Value = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/pause"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(p["status"], "paused");
    assert_eq!(p["metadata"]["env"], "test");
    // Ping and a second pause on a paused capsule: the SDK's `invalid_state` (409).
    let r = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/ping"),
    )
    .await;
    assert_error(r, 409, "invalid_state").await;
    let r = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/pause"),
    )
    .await;
    assert_error(r, 409, "invalid_state").await;
    // Capsule.connect: GET, then resume when paused.
    let r: Value = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/resume"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["status"], "running");

    // destroy(wait=True): DELETE, then GET until `not_found`.
    let r = call(&t, &acc.key, Method::DELETE, &format!("/v1/capsules/{id}")).await;
    assert_eq!(r.status(), 204);
    let r = call(&t, &acc.key, Method::GET, &format!("/v1/capsules/{id}")).await;
    assert_error(r, 404, "not_found").await;
    // The seed's route keeps the seed's code.
    let r = call(&t, &acc.key, Method::GET, &format!("/v1/sandboxes/{id}")).await;
    assert_error(r, 404, "sandbox_not_found").await;
}

#[tokio::test]
async fn create_defaults_and_refusals() {
    let t = TestServer::start().await;
    let acc = t.account("capdefaults@example.com").await;
    // The SDK sends `{}` when no argument is given.
    let c = create(&t, &acc.key, json!({})).await;
    assert_eq!(c["metadata"], json!({}));
    let r = t
        .keyed(Method::POST, "/v1/capsules", &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "no body at all");

    let too_many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let bad = [
        json!({"metadata": too_many}),
        json!({"metadata": {"k": "v".repeat(65)}}),
        json!({"metadata": {"k".repeat(65): "v"}}),
        json!({"metadata": {"-bad": "v"}}),
        json!({"metadata": {"kernel_version": "6"}}),
        json!({"vcpus": 0}),
    ];
    for body in bad {
        let r = post_json(&t, &acc.key, "/v1/capsules", body.clone()).await;
        assert_error(r, 400, "invalid_request").await;
    }
    let r = post_json(&t, &acc.key, "/v1/capsules", json!({"template": "nope"})).await;
    assert_error(r, 404, "not_found").await;
    let r = t
        .req(Method::GET, "/v1/capsules")
        .header("x-api-key", "wrn_wrong")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    // Another team sees nothing of it.
    let other = t.account("capother@example.com").await;
    let id = c["id"].as_str().unwrap();
    let r = call(&t, &other.key, Method::GET, &format!("/v1/capsules/{id}")).await;
    assert_error(r, 404, "not_found").await;
    let list: Vec<Value> = call(&t, &other.key, Method::GET, "/v1/capsules")
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
}

#[tokio::test]
async fn files_round_trip_exactly() {
    let t = TestServer::start().await;
    let acc = t.account("capfiles@example.com").await;
    let c = create(&t, &acc.key, json!({})).await;
    let id = c["id"].as_str().unwrap();

    let data = every_byte(300_000);
    assert_eq!(
        write(
            &t,
            &acc.key,
            id,
            "/home/user/deep/new/bin.dat",
            data.clone()
        )
        .await,
        204
    );
    assert_eq!(
        read(&t, &acc.key, id, "read", "/home/user/deep/new/bin.dat").await,
        data
    );
    assert_eq!(
        read(
            &t,
            &acc.key,
            id,
            "stream/read",
            "/home/user/deep/new/bin.dat"
        )
        .await,
        data
    );

    // The SDK's upload_stream: a hand-made chunked multipart body.
    let boundary = "b0undary0f0the0test";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/tmp/streamed.bin\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    let big = every_byte(700_001);
    body.extend_from_slice(&big);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(65_536).map(|c| Ok(c.to_vec())).collect();
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/capsules/{id}/files/stream/write"),
            &acc.key,
        )
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        read(&t, &acc.key, id, "stream/read", "/tmp/streamed.bin").await,
        big
    );

    let r = post_json(
        &t,
        &acc.key,
        &format!("/v1/capsules/{id}/files/read"),
        json!({"path": "/nope"}),
    )
    .await;
    assert_error(r, 404, "not_found").await;
    let r = post_json(
        &t,
        &acc.key,
        &format!("/v1/capsules/{id}/files/read"),
        json!({"path": "relative"}),
    )
    .await;
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn list_mkdir_remove() {
    let t = TestServer::start().await;
    let acc = t.account("capdirs@example.com").await;
    let c = create(&t, &acc.key, json!({})).await;
    let id = c["id"].as_str().unwrap();
    let files = |op: &str| format!("/v1/capsules/{id}/files/{op}");

    let r = post_json(&t, &acc.key, &files("mkdir"), json!({"path": "/work/a/b"})).await;
    assert_eq!(r.status(), 200);
    let made: Value = r.json().await.unwrap();
    assert_eq!(made["entry"]["type"], "directory");
    assert_eq!(made["entry"]["name"], "b");
    assert_eq!(made["entry"]["path"], "/work/a/b");
    // Again: the SDK's already-exists answer (409 `conflict`), then it lists the parent.
    let r = post_json(&t, &acc.key, &files("mkdir"), json!({"path": "/work/a/b"})).await;
    let v = assert_error(r, 409, "conflict").await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already_exists"));

    assert_eq!(
        write(&t, &acc.key, id, "/work/a/f.txt", b"hello".to_vec()).await,
        204
    );
    let r = post_json(
        &t,
        &acc.key,
        &files("list"),
        json!({"path": "/work/a", "depth": 1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let listed: Value = r.json().await.unwrap();
    let entries = listed["entries"].as_array().unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "f.txt"]);
    let f = &entries[1];
    assert_eq!(
        (f["type"].as_str(), f["size"].as_u64()),
        (Some("file"), Some(5))
    );
    for field in ["mode", "permissions", "owner", "group", "modified_at"] {
        assert!(!f[field].is_null(), "{field} missing: {f}");
    }
    let deep: Value = post_json(
        &t,
        &acc.key,
        &files("list"),
        json!({"path": "/work", "depth": 3}),
    )
    .await
    .json()
    .await
    .unwrap();
    let paths: Vec<_> = deep["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/work/a", "/work/a/b", "/work/a/f.txt"]);

    // Files.exists lists a missing parent: `not_found`.
    let r = post_json(&t, &acc.key, &files("list"), json!({"path": "/missing"})).await;
    assert_error(r, 404, "not_found").await;
    // ... or a file as the parent (`exists("/work/a/f.txt/x")`) or a path under one: no
    // directory there either, so `not_found` too (not a 400 the SDK would raise).
    for path in ["/work/a/f.txt", "/work/a/f.txt/x"] {
        let r = post_json(&t, &acc.key, &files("list"), json!({"path": path})).await;
        assert_error(r, 404, "not_found").await;
    }
    let r = post_json(
        &t,
        &acc.key,
        &files("list"),
        json!({"path": "/work", "depth": 17}),
    )
    .await;
    assert_error(r, 400, "invalid_request").await;

    let r = post_json(
        &t,
        &acc.key,
        &files("remove"),
        json!({"path": "/work/a/f.txt"}),
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = post_json(&t, &acc.key, &files("remove"), json!({"path": "/work"})).await;
    assert_eq!(r.status(), 204);
    let r = post_json(&t, &acc.key, &files("list"), json!({"path": "/work"})).await;
    assert_error(r, 404, "not_found").await;
    let r = post_json(&t, &acc.key, &files("remove"), json!({"path": "/work"})).await;
    assert_error(r, 404, "not_found").await;

    // Directory operations need a running capsule.
    let r = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/pause"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post_json(&t, &acc.key, &files("list"), json!({"path": "/"})).await;
    assert_error(r, 409, "invalid_state").await;
}

#[tokio::test]
async fn snapshots_as_the_sdk_uses_them() {
    let t = TestServer::start().await;
    let acc = t.account("capsnap@example.com").await;
    let c = create(&t, &acc.key, json!({})).await;
    let id = c["id"].as_str().unwrap();
    let r = t
        .keyed(Method::POST, "/v1/snapshots", &acc.key)
        .json(&json!({"sandbox_id": id, "name": "sdk-snap"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tpl: Value = r.json().await.unwrap();
    assert_eq!(
        (tpl["name"].as_str(), tpl["type"].as_str()),
        (Some("sdk-snap"), Some("snapshot"))
    );
    assert!(tpl["created_at"].as_str().unwrap().ends_with('Z'));

    let list: Vec<Value> = t
        .keyed(Method::GET, "/v1/snapshots?type=snapshot", &acc.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    // A capsule from the snapshot, then a second snapshot of that name with overwrite.
    let c2 = create(&t, &acc.key, json!({"template": "sdk-snap"})).await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots", &acc.key)
        .json(&json!({"sandbox_id": c2["id"], "name": "sdk-snap"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "snapshot_exists").await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots?overwrite=true", &acc.key)
        .json(&json!({"sandbox_id": c2["id"], "name": "sdk-snap"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = call(&t, &acc.key, Method::DELETE, "/v1/snapshots/sdk-snap").await;
    assert_eq!(r.status(), 204);

    // The SDK's Template fields, additive to the seed's shape.
    let all: Vec<Value> = call(&t, &acc.key, Method::GET, "/v1/snapshots")
        .await
        .json()
        .await
        .unwrap();
    let base = all.iter().find(|t| t["name"] == "minimal").unwrap();
    assert_eq!(
        (&base["type"], &base["platform"], &base["protected"]),
        (&json!("base"), &json!(true), &json!(true))
    );

    // A paused capsule can be snapshotted; a paused sandbox of the seed API cannot (409, as
    // that spec says).
    let c3 = create(&t, &acc.key, json!({})).await;
    let id3 = c3["id"].as_str().unwrap();
    let r = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id3}/pause"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post_json(
        &t,
        &acc.key,
        "/v1/snapshots",
        json!({"sandbox_id": id3, "name": "from-paused"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let tpl: Value = r.json().await.unwrap();
    assert_eq!(
        (&tpl["platform"], &tpl["protected"]),
        (&json!(false), &json!(false))
    );
    let sb = t.sandbox(&acc.key, json!({})).await;
    let sid = sb["id"].as_str().unwrap();
    assert_eq!(t.op(&acc.key, sid, "pause").await.status(), 200);
    let r = post_json(
        &t,
        &acc.key,
        "/v1/snapshots",
        json!({"sandbox_id": sid, "name": "seed-paused"}),
    )
    .await;
    assert_error(r, 409, "sandbox_not_running").await;
}

/// A WebSocket upgrade with `X-API-Key` on both APIs' exec streams: `status`, then the first
/// event (or the HTTP status of a refused upgrade).
async fn ws_exec(t: &TestServer, path: &str, key: Option<&str>) -> Result<String, u16> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
    let mut req = format!("{}{path}", t.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(r)) => return Err(r.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    };
    let start = json!({"type": "start", "cmd": "echo", "args": ["hi"]});
    ws.send(Message::Text(start.to_string().into()))
        .await
        .unwrap();
    let mut out = String::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(s) = m {
            let v: Value = serde_json::from_str(s.as_str()).unwrap();
            if v["type"] == "stdout" {
                out.push_str(v["data"].as_str().unwrap());
            }
            if v["type"] == "exit" {
                break;
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn api_key_on_websocket_upgrades() {
    let t = TestServer::start().await;
    let acc = t.account("capws@example.com").await;
    let c = create(&t, &acc.key, json!({})).await;
    let id = c["id"].as_str().unwrap();
    for path in [
        format!("/v1/sandboxes/{id}/exec/stream"),
        format!("/v1/capsules/{id}/exec/stream"),
    ] {
        assert_eq!(
            ws_exec(&t, &path, Some(&acc.key)).await,
            Ok("hi\n".into()),
            "{path}"
        );
        assert_eq!(ws_exec(&t, &path, None).await, Err(401), "{path}");
        assert_eq!(
            ws_exec(&t, &path, Some("wrn_not_a_key")).await,
            Err(401),
            "{path}"
        );
    }
}
