//! The port proxy against the simulated agent, whose capsule ports lead to a small web app
//! of the test's own: the name form (`Host: {port}-{id}.{domain}`) and the path form
//! (`/v1/capsules/{id}/proxy/{port}/…`) through the real agent client and router, a redirect
//! kept behind the proxy, a large body streamed both ways, WebSocket frames both ways, the
//! proxy's key never reaching the guest, 401 / 404 (another team) / 409 (paused) / 502 (no
//! listener, without the host's address) / 400 (bad port), the per-capsule connection limit,
//! the configured domain, and `url` mode without a key.

mod support;

use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use support::{assert_error, TestServer};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use wrenn_server::config::ProxyAuth;

/// The guest's web app: a listing with a relative link, a directory that redirects to its
/// slash, a redirect to its own local address, the headers it got, a streamed echo and a
/// WebSocket echo.
async fn guest_app() -> SocketAddr {
    async fn headers(h: HeaderMap) -> impl IntoResponse {
        let map: serde_json::Map<String, Value> = h
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(Value::Object(map))
    }
    async fn echo(body: axum::body::Body) -> impl IntoResponse {
        axum::body::Body::from_stream(body.into_data_stream())
    }
    async fn ws(up: WebSocketUpgrade) -> impl IntoResponse {
        up.on_upgrade(|mut s| async move {
            while let Some(Ok(m)) = s.recv().await {
                let back = match m {
                    AxMessage::Text(t) => AxMessage::Text(format!("echo:{}", t.as_str()).into()),
                    AxMessage::Binary(b) => AxMessage::Binary(b),
                    AxMessage::Close(_) => break,
                    _ => continue,
                };
                if s.send(back).await.is_err() {
                    break;
                }
            }
        })
    }
    let app = axum::Router::new()
        .route("/", get(|| async { "<a href=\"dir/\">dir/</a>" }))
        .route(
            "/dir",
            get(|| async { (StatusCode::MOVED_PERMANENTLY, [("location", "/dir/")]) }),
        )
        .route("/dir/", get(|| async { "inside dir" }))
        .route(
            "/local",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [("location", "http://localhost:8000/dir/")],
                )
            }),
        )
        .route("/headers", get(headers))
        .route("/echo", post(echo))
        .route("/ws", get(ws))
        .route(
            "/missing",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": {"code": "guest_code", "message": "m"}})),
                )
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

async fn capsule(t: &TestServer, key: &str) -> String {
    let r = t
        .keyed(Method::POST, "/v1/capsules", key)
        .json(&json!({"template": "minimal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A request by name: to the server's address with `Host: {port}-{id}.{domain}`.
fn by_name(
    t: &TestServer,
    method: Method,
    host: &str,
    path: &str,
    key: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut r = no_redirects()
        .request(method, t.url(path))
        .header("host", host);
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    r
}

#[tokio::test]
async fn http_by_name_and_by_path() {
    let t = TestServer::start().await;
    let a = t.account("proxy-a@example.com").await;
    let id = capsule(&t, &a.key).await;
    t.sim.expose_port(&id, 8000, guest_app().await);
    let host = format!("8000-{id}.localhost");

    let r = by_name(&t, Method::GET, &host, "/", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "<a href=\"dir/\">dir/</a>");
    // The name form keeps the guest's own paths: a relative redirect stays as it is.
    let r = by_name(&t, Method::GET, &host, "/dir", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/dir/");
    let r = by_name(&t, Method::GET, &host, "/dir/", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "inside dir");
    // A redirect to the guest's own local address comes back through the proxy.
    let r = by_name(&t, Method::GET, &host, "/local", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("http://{host}/dir/")
    );
    // A guest's error body is its own, untouched.
    let r = by_name(&t, Method::GET, &host, "/missing", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "guest_code");

    // What the guest sees: the client's Host, forwarding headers, never the key.
    let r = by_name(&t, Method::GET, &host, "/headers", Some(&a.key))
        .header("authorization", "Bearer app-token")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["host"], host.as_str());
    assert_eq!(seen["x-forwarded-host"], host.as_str());
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["authorization"], "Bearer app-token");
    assert!(seen.get("x-api-key").is_none(), "{seen}");
    // A key in Authorization: Bearer works too and is not passed on either.
    let r = by_name(&t, Method::GET, &host, "/headers", None)
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen.get("authorization").is_none(), "{seen}");

    // 8 MiB streamed up and back.
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = by_name(&t, Method::POST, &host, "/echo", Some(&a.key))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == big, "echoed body differs");

    // The path form: the prefix is stripped for the guest and given back to its redirects.
    let prefix = format!("/v1/capsules/{id}/proxy/8000");
    let get = |path: String| {
        no_redirects()
            .get(t.url(&path))
            .header("x-api-key", a.key.clone())
            .send()
    };
    let r = get(prefix.clone()).await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{prefix}/")
    );
    let r = get(format!("{prefix}/")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "<a href=\"dir/\">dir/</a>");
    let r = get(format!("{prefix}/dir")).await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{prefix}/dir/")
    );
    let r = get(format!("{prefix}/dir/")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "inside dir");
    let r = get(format!("{prefix}/headers")).await.unwrap();
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["x-forwarded-prefix"], prefix.as_str());
    let r = get(format!("{prefix}/missing")).await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "guest_code");
}

#[tokio::test]
async fn refusals_in_the_error_format() {
    let t = TestServer::start().await;
    let a = t.account("proxy-b@example.com").await;
    let b = t.account("proxy-c@example.com").await;
    let id = capsule(&t, &a.key).await;
    t.sim.expose_port(&id, 8000, guest_app().await);
    let host = format!("8000-{id}.localhost");

    let r = by_name(&t, Method::GET, &host, "/", None)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = by_name(&t, Method::GET, &host, "/", Some("wrn_wrong"))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = by_name(&t, Method::GET, &host, "/", Some(&b.key))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;
    let r = by_name(
        &t,
        Method::GET,
        "8000-sb-nosuch.localhost",
        "/",
        Some(&a.key),
    )
    .send()
    .await
    .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;

    // Nothing listens on 8001: 502, and not a word of the host's address.
    let r = by_name(
        &t,
        Method::GET,
        &format!("8001-{id}.localhost"),
        "/",
        Some(&a.key),
    )
    .send()
    .await
    .unwrap();
    let v = assert_error(r, 502, "agent_error").await;
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("port 8001") && !m.contains("10.11"), "{m}");
    let r = t
        .keyed(
            Method::GET,
            &format!("/v1/capsules/{id}/proxy/8001/"),
            &a.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    // Ports out of range: not a proxy name (the API answers), or 400 by path.
    let r = by_name(
        &t,
        Method::GET,
        &format!("70000-{id}.localhost"),
        "/v1/x",
        Some(&a.key),
    )
    .send()
    .await
    .unwrap();
    assert_error(r, 404, "not_found").await;
    for bad in ["0", "70000", "http"] {
        let r = t
            .keyed(
                Method::GET,
                &format!("/v1/capsules/{id}/proxy/{bad}/"),
                &a.key,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Paused: 409 with the capsule's state.
    assert_eq!(t.op(&a.key, &id, "pause").await.status(), 200);
    let r = by_name(&t, Method::GET, &host, "/", Some(&a.key))
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 409, "sandbox_not_running").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("paused"),
        "{v}"
    );
    assert_eq!(t.op(&a.key, &id, "resume").await.status(), 200);
    let r = by_name(&t, Method::GET, &host, "/", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_by_name(t: &TestServer, host: &str, key: &str) -> Result<Ws, String> {
    let url = format!("{}/ws", t.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
            .expect("stream ended")
            .expect("frame");
        match m {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Binary(b) => return format!("binary:{}", b.len()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn websocket_frames_both_ways_and_connections_are_limited() {
    let t = TestServer::start_with(|cfg| cfg.proxy.per_capsule = 2).await;
    let a = t.account("proxy-d@example.com").await;
    let id = capsule(&t, &a.key).await;
    t.sim.expose_port(&id, 8000, guest_app().await);
    let host = format!("8000-{id}.localhost");

    let mut ws = ws_by_name(&t, &host, &a.key).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "echo:hello");
    ws.send(Message::Binary(vec![7u8; 300_000].into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "binary:300000");

    // Two connections open (the limit): a third request is refused, then let in once one
    // closes.
    let mut ws2 = ws_by_name(&t, &host, &a.key).await.unwrap();
    ws2.send(Message::Text("two".into())).await.unwrap();
    assert_eq!(next_text(&mut ws2).await, "echo:two");
    let r = by_name(&t, Method::GET, &host, "/", Some(&a.key))
        .send()
        .await
        .unwrap();
    assert_error(r, 429, "quota_exceeded").await;
    ws2.close(None).await.unwrap();
    drop(ws2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = by_name(&t, Method::GET, &host, "/", Some(&a.key))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ws.send(Message::Text("still".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "echo:still");

    // A pause ends the open connection.
    assert_eq!(t.op(&a.key, &id, "pause").await.status(), 200);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection outlived the pause");
}

#[tokio::test]
async fn a_configured_domain_and_url_mode() {
    let t = TestServer::start_with(|cfg| {
        cfg.proxy.domain = Some("sandbox.example.com".into());
        cfg.proxy.auth = ProxyAuth::Url;
    })
    .await;
    let a = t.account("proxy-e@example.com").await;
    let id = capsule(&t, &a.key).await;
    t.sim.expose_port(&id, 8000, guest_app().await);

    // No key needed: the URL is the secret.
    let host = format!("8000-{id}.sandbox.example.com");
    let r = by_name(&t, Method::GET, &host, "/dir/", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "inside dir");
    let r = by_name(
        &t,
        Method::GET,
        "8000-sb-nosuch.sandbox.example.com",
        "/",
        None,
    )
    .send()
    .await
    .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;
    // Another domain is not the proxy's: the API answers.
    let r = by_name(
        &t,
        Method::GET,
        &format!("8000-{id}.localhost"),
        "/v1/dir/",
        None,
    )
    .send()
    .await
    .unwrap();
    assert_error(r, 404, "not_found").await;
}
