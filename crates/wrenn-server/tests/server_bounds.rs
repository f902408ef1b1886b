//! The public listener's bounds: at most `max_connections` connections are served at once
//! (the next waits until one closes), and quick requests that take longer than
//! `request_timeout` are answered `504 timeout` with the request id.

mod support;

use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use support::{assert_error, TestServer};

#[tokio::test]
async fn connections_over_the_limit_wait_for_one_to_close() {
    let t = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wrenn_server::serve_limited(listener, t.server.router(), 2));
    // Two idle connections take both places.
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/openapi.yaml");
    let waited = client
        .get(&url)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(waited.is_err(), "served over the limit: {waited:?}");
    drop(first);
    let r = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_quick_request_that_takes_too_long_is_a_504_with_the_request_id() {
    let t = TestServer::start_with(|c| {
        c.request_timeout = Duration::from_millis(1);
        // Every login waits for the one hashing permit.
        c.auth_limits.hash_concurrency = 1;
    })
    .await;
    let r = t
        .req(Method::POST, "/v1/auth/login")
        .header("x-request-id", "slow-login-1")
        .json(&json!({"email": "a@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 504, "timeout").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slow-login-1"),
        "{v}"
    );
}
