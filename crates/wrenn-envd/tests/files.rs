//! `PUT` / `GET /files` against the real daemon and the real filesystem.

mod common;

use bytes::Bytes;
use common::{assert_error, http, random_bytes, Envd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

async fn put(
    envd: &Envd,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Option<serde_json::Value>) {
    let resp = http()
        .put(envd.url("/files"))
        .query(&[("path", path)])
        .body(body)
        .send()
        .await
        .expect("send PUT");
    let status = resp.status().as_u16();
    let body = resp.json().await.ok();
    (status, body)
}

async fn get(envd: &Envd, query: &[(&str, &str)]) -> reqwest::Response {
    http()
        .get(envd.url("/files"))
        .query(query)
        .send()
        .await
        .expect("send GET")
}

async fn get_error(envd: &Envd, path: &str) -> (u16, serde_json::Value) {
    let resp = get(envd, &[("path", path)]).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json error"))
}

/// Upload temp files left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("wrenn-upload"))
        .collect()
}

#[tokio::test]
async fn round_trip_of_several_megabytes() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob.bin");
    let p = path.to_str().expect("utf-8 path");
    let data = random_bytes(5 * 1024 * 1024 + 123, 42);

    // Sent as a stream of 64 KiB chunks, the way the agent forwards an upload.
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let (s, b) = put(
        &envd,
        p,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(s, 204, "{b:?}");
    assert_eq!(std::fs::read(&path).expect("on disk"), data);
    let meta = std::fs::metadata(&path).expect("meta");
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert!(leftovers(dir.path()).is_empty());

    let resp = get(&envd, &[("path", p)]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.content_length(), Some(data.len() as u64));
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ct"),
        "application/octet-stream"
    );
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &data[..]);
}

#[tokio::test]
async fn overwrite_replaces_content_and_keeps_mode() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("script.sh");
    std::fs::write(&path, "old old old").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let (s, b) = put(&envd, path.to_str().expect("path"), "new").await;
    assert_eq!(s, 204, "{b:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);

    // An empty body makes an empty file.
    let (s, _) = put(&envd, path.to_str().expect("path"), "").await;
    assert_eq!(s, 204);
    assert_eq!(std::fs::read(&path).expect("read").len(), 0);
}

#[tokio::test]
async fn write_creates_missing_parent_directories() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/c/file.txt");
    let (s, b) = put(&envd, path.to_str().expect("path"), "nested").await;
    assert_eq!(s, 204, "{b:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "nested");
}

#[tokio::test]
async fn write_as_user_owns_file_and_created_directories() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("home/data.txt");
    let resp = http()
        .put(envd.url("/files"))
        .query(&[("path", path.to_str().expect("path")), ("user", "nobody")])
        .body("mine")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(std::fs::metadata(&path).expect("meta").uid(), 65534);
    assert_eq!(
        std::fs::metadata(dir.path().join("home"))
            .expect("meta")
            .uid(),
        65534
    );
    // The existing directory above is left alone.
    assert_eq!(std::fs::metadata(dir.path()).expect("meta").uid(), 0);

    let resp = http()
        .put(envd.url("/files"))
        .query(&[
            ("path", path.to_str().expect("path")),
            ("user", "no-such-user"),
        ])
        .body("x")
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    assert_error(
        status,
        &resp.json().await.expect("json"),
        400,
        "unknown_user",
    );
}

#[tokio::test]
async fn missing_file_is_404() {
    let envd = Envd::start();
    let (s, b) = get_error(&envd, "/definitely/not/here.txt").await;
    assert_error(s, &b, 404, "not_found");
}

#[tokio::test]
async fn directories_are_refused() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("path");
    let (s, b) = get_error(&envd, d).await;
    assert_error(s, &b, 400, "is_a_directory");
    let (s, b) = put(&envd, d, "x").await;
    assert_error(s, &b.expect("json"), 400, "is_a_directory");
    // A parent that is a file.
    let f = dir.path().join("file");
    std::fs::write(&f, "x").expect("write");
    let (s, b) = put(&envd, &format!("{}/child", f.display()), "x").await;
    assert_error(s, &b.expect("json"), 400, "not_a_directory");
}

#[tokio::test]
async fn bad_paths_are_400() {
    let envd = Envd::start();
    for bad in ["relative/path.txt", "", "/tmp/x\0y", "/tmp/dir/"] {
        let (s, b) = get_error(&envd, bad).await;
        assert_error(s, &b, 400, "bad_request");
        let (s, b) = put(&envd, bad, "x").await;
        assert_error(s, &b.expect("json"), 400, "bad_request");
    }
    // No path at all.
    let resp = get(&envd, &[]).await;
    let status = resp.status().as_u16();
    assert_error(
        status,
        &resp.json().await.expect("json"),
        400,
        "bad_request",
    );
}

/// A body that sends `good` bytes, waits until envd has had time to write them, and then
/// fails, as when the uploader dies mid-transfer.
fn broken_body(good: usize) -> reqwest::Body {
    let data = random_bytes(good, 7);
    let chunks: Vec<Bytes> = data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut rest| async move {
        match rest.next() {
            Some(c) => Some((Ok(c), rest)),
            None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Some((Err(std::io::Error::other("uploader died")), rest))
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Waits (up to 10 s) for envd to clean up after a cut upload.
async fn wait_no_leftovers(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leftovers(dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        leftovers(dir),
        Vec::<String>::new(),
        "temp files left behind"
    );
}

#[tokio::test]
async fn cut_upload_leaves_no_file() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("partial.bin");
    let upload = tokio::spawn(
        http()
            .put(envd.url("/files"))
            .query(&[("path", path.to_str().expect("path"))])
            .body(broken_body(2 * 1024 * 1024))
            .send(),
    );
    // While the upload is in flight its data sits in a temp file, never at the target.
    let deadline = Instant::now() + Duration::from_secs(10);
    while leftovers(dir.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !leftovers(dir.path()).is_empty(),
        "upload never reached envd"
    );
    assert!(!path.exists());
    let sent = upload.await.expect("join");
    assert!(sent.is_err(), "a failing body must fail the request");
    wait_no_leftovers(dir.path()).await;
    assert!(!path.exists(), "a half upload became a file");
}

#[tokio::test]
async fn cut_upload_keeps_the_old_file() {
    let envd = Envd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keep.txt");
    std::fs::write(&path, "precious").expect("write");
    let sent = http()
        .put(envd.url("/files"))
        .query(&[("path", path.to_str().expect("path"))])
        .body(broken_body(1024 * 1024))
        .send()
        .await;
    assert!(sent.is_err());
    wait_no_leftovers(dir.path()).await;
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "precious");
}

#[tokio::test]
async fn upload_limit_is_enforced() {
    let envd = Envd::start_with(&["--max-upload-bytes", "1000"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.bin");
    let p = path.to_str().expect("path");
    // With a Content-Length: refused up front.
    let (s, b) = put(&envd, p, random_bytes(2000, 1)).await;
    assert_error(s, &b.expect("json"), 413, "payload_too_large");
    // Streamed without a length: refused once the limit is crossed.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![1u8; 600])),
        Ok(Bytes::from(vec![2u8; 600])),
    ];
    let (s, b) = put(
        &envd,
        p,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_error(s, &b.expect("json"), 413, "payload_too_large");
    assert!(!path.exists());
    wait_no_leftovers(dir.path()).await;
    // Within the limit: fine.
    let (s, _) = put(&envd, p, vec![3u8; 1000]).await;
    assert_eq!(s, 204);
}
