//! A 200 MB streamed upload and download pass through the control plane (running in this
//! process) without being buffered: resident memory grows by far less than the file.
//! Alone in its own test binary so that no other test disturbs the measurement.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::TestServer;

const TOTAL: usize = 200 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn chunk(i: usize) -> Bytes {
    let mut v = vec![0u8; CHUNK];
    for (j, b) in v.iter_mut().enumerate() {
        *b = ((i * 31 + j * 7) % 251) as u8;
    }
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_streaming_upload_and_download_are_not_buffered() {
    let t = TestServer::start().await;
    let acc = t.account("big@example.com").await;
    let sb = t.sandbox(&acc.key, json!({})).await;
    let id = sb["id"].as_str().unwrap();

    let mut want = Sha256::new();
    for i in 0..TOTAL / CHUNK {
        want.update(chunk(i));
    }
    let want = want.finalize();

    let before = rss_kib();
    let body = reqwest::Body::wrap_stream(
        futures_util::stream::iter(0..TOTAL / CHUNK).map(|i| Ok::<_, std::io::Error>(chunk(i))),
    );
    let form = reqwest::multipart::Form::new()
        .text("path", "/data/big.bin")
        .part(
            "file",
            reqwest::multipart::Part::stream(body).file_name("big.bin"),
        );
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/stream/write"),
            &acc.key,
        )
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let after_upload = rss_kib();

    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/stream/read"),
            &acc.key,
        )
        .json(&json!({"path": "/data/big.bin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = Sha256::new();
    let mut len = 0usize;
    let mut stream = r.bytes_stream();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        len += c.len();
        got.update(&c);
    }
    let after_download = rss_kib();
    assert_eq!(len, TOTAL);
    assert_eq!(got.finalize(), want, "content changed in transit");

    let growth_mib = (after_upload.max(after_download).saturating_sub(before)) / 1024;
    eprintln!(
        "RSS before {before} KiB, after upload {after_upload} KiB, after download {after_download} KiB"
    );
    assert!(
        growth_mib < 64,
        "resident memory grew by {growth_mib} MiB for a {} MiB transfer",
        TOTAL >> 20
    );
}
