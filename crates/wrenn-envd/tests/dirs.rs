//! `POST /files/list`, `/files/mkdir` and `/files/remove` against the real daemon and the
//! real filesystem.

mod common;

use common::{assert_error, http, Envd};
use serde_json::{json, Value};

async fn post(envd: &Envd, route: &str, body: Value) -> (u16, Value) {
    let resp = http()
        .post(envd.url(route))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, v)
}

#[tokio::test]
async fn mkdir_list_remove_over_http() {
    let envd = Envd::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_string_lossy().into_owned();

    let (status, made) = post(
        &envd,
        "/files/mkdir",
        json!({"path": format!("{root}/a/b")}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["entry"]["type"], "directory");
    assert_eq!(made["entry"]["path"], format!("{root}/a/b"));
    assert!(made["entry"]["permissions"]
        .as_str()
        .unwrap()
        .starts_with('d'));
    let (status, body) = post(
        &envd,
        "/files/mkdir",
        json!({"path": format!("{root}/a/b")}),
    )
    .await;
    assert_error(status, &body, 409, "already_exists");

    std::fs::write(format!("{root}/a/f.bin"), [0u8, 255, 1]).unwrap();
    std::os::unix::fs::symlink("f.bin", format!("{root}/a/ln")).unwrap();
    let (status, listed) = post(&envd, "/files/list", json!({"path": format!("{root}/a")})).await;
    assert_eq!(status, 200, "{listed}");
    let entries = listed["entries"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("b", "directory"), ("f.bin", "file"), ("ln", "symlink")]
    );
    assert_eq!(entries[1]["size"], 3);
    assert_eq!(entries[2]["symlink_target"], "f.bin");
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    assert_eq!(
        entries[1]["owner"].as_str().unwrap(),
        String::from_utf8_lossy(&me.stdout).trim()
    );
    assert_eq!(listed["truncated"], false);

    let (status, deep) = post(&envd, "/files/list", json!({"path": root, "depth": 2})).await;
    assert_eq!(status, 200);
    assert_eq!(deep["entries"].as_array().unwrap().len(), 4, "{deep}");

    let (status, body) = post(
        &envd,
        "/files/list",
        json!({"path": format!("{root}/nope")}),
    )
    .await;
    assert_error(status, &body, 404, "not_found");
    // A file, or a path under one, is no directory to list: not found as well.
    for path in [format!("{root}/a/f.bin"), format!("{root}/a/f.bin/x")] {
        let (status, body) = post(&envd, "/files/list", json!({ "path": path })).await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, body) = post(&envd, "/files/list", json!({"path": "relative"})).await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = post(&envd, "/files/list", json!({"nopath": 1})).await;
    assert_error(status, &body, 400, "bad_request");

    let (status, _) = post(
        &envd,
        "/files/remove",
        json!({"path": format!("{root}/a/ln")}),
    )
    .await;
    assert_eq!(status, 204);
    assert!(std::path::Path::new(&format!("{root}/a/f.bin")).exists());
    let (status, _) = post(&envd, "/files/remove", json!({"path": format!("{root}/a")})).await;
    assert_eq!(status, 204);
    assert!(!std::path::Path::new(&format!("{root}/a")).exists());
    let (status, body) = post(&envd, "/files/remove", json!({"path": format!("{root}/a")})).await;
    assert_error(status, &body, 404, "not_found");
}
