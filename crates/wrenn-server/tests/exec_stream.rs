//! The exec WebSocket end to end: client → control plane → agent HTTP API (simulated agent)
//! and back, including errors answered before the upgrade.

mod support;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use support::TestServer;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(t: &TestServer, id: &str, key: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        t.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// Reads events until the server closes; returns them.
async fn events(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("stream stalled")
    {
        match frame {
            Ok(Message::Text(t)) => out.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => panic!("websocket error: {e}"),
        }
    }
    out
}

fn http_status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP answer, got {other}"),
    }
}

#[tokio::test]
async fn streams_a_command_through_the_agent() {
    let t = TestServer::start().await;
    let acc = t.account("ws@example.com").await;
    let sb = t.sandbox(&acc.key, json!({})).await;
    let id = sb["id"].as_str().unwrap();

    let mut ws = connect(&t, id, &acc.key).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "start", "cmd": "seq", "args": ["3"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ev = events(&mut ws).await;
    assert_eq!(
        ev,
        [
            json!({"type": "start", "pid": 4242}),
            json!({"type": "stdout", "data": "1\n"}),
            json!({"type": "stdout", "data": "2\n"}),
            json!({"type": "stdout", "data": "3\n"}),
            json!({"type": "exit", "exit_code": 0}),
        ]
    );

    // stderr and a non-zero exit.
    let mut ws = connect(&t, id, &acc.key).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "start", "cmd": "cat", "args": ["/nope"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ev = events(&mut ws).await;
    assert_eq!(ev[1]["type"], "stderr");
    assert_eq!(ev.last().unwrap(), &json!({"type": "exit", "exit_code": 1}));
}

#[tokio::test]
async fn stop_ends_a_running_process() {
    let t = TestServer::start().await;
    let acc = t.account("stop@example.com").await;
    let sb = t.sandbox(&acc.key, json!({})).await;
    let id = sb["id"].as_str().unwrap();
    let mut ws = connect(&t, id, &acc.key).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "start", "cmd": "sleep", "args": ["600"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"start\""), "{first:?}");
    // A malformed message is answered with an error event; the process keeps running.
    ws.send(Message::Text("{\"type\":\"bogus\"}".into()))
        .await
        .unwrap();
    let err: Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(err["type"], "error");
    ws.send(Message::Text(json!({"type": "stop"}).to_string().into()))
        .await
        .unwrap();
    let ev = events(&mut ws).await;
    assert_eq!(ev, [json!({"type": "exit", "exit_code": -1})]);
}

#[tokio::test]
async fn refusals_come_before_the_upgrade() {
    let t = TestServer::start().await;
    let acc = t.account("wsno@example.com").await;
    let other = t.account("wsother@example.com").await;
    let sb = t.sandbox(&acc.key, json!({})).await;
    let id = sb["id"].as_str().unwrap();

    assert_eq!(
        http_status(connect(&t, "sb-missing", &acc.key).await.err().unwrap()),
        404
    );
    assert_eq!(
        http_status(connect(&t, id, &other.key).await.err().unwrap()),
        404
    );
    assert_eq!(
        http_status(connect(&t, id, "wrn_bad").await.err().unwrap()),
        401
    );
    t.keyed(Method::POST, &format!("/v1/sandboxes/{id}/pause"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        http_status(connect(&t, id, &acc.key).await.err().unwrap()),
        409
    );
    // A plain GET (no upgrade) on a running sandbox is a 400 with the error body.
    t.keyed(
        Method::POST,
        &format!("/v1/sandboxes/{id}/resume"),
        &acc.key,
    )
    .send()
    .await
    .unwrap();
    let r = t
        .keyed(
            Method::GET,
            &format!("/v1/sandboxes/{id}/exec/stream"),
            &acc.key,
        )
        .send()
        .await
        .unwrap();
    support::assert_error(r, 400, "bad_request").await;
}
