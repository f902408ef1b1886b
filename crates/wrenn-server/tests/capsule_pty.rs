//! `/v1/capsules/{id}/pty` against the simulated agent: the SDK's framing relayed both ways
//! (control text, raw binary keystrokes and output), `X-API-Key` on the upgrade, 404 for an
//! unknown or another team's capsule and 409 for a paused one before the upgrade, host details
//! stripped from the agent's errors, and the session ended with a fatal error when its capsule
//! pauses.

mod support;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use support::TestServer;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

async fn connect(t: &TestServer, key: Option<&str>, id: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!(
        "{}/v1/capsules/{id}/pty",
        t.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(key) = key {
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("stream stalled")?;
        match frame {
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return Some(m),
            Ok(_) => {}
        }
    }
}

fn control(m: Option<Message>) -> Value {
    match m {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("not a control message: {other:?}"),
    }
}

fn refused_status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("not refused with an answer: {other}"),
    }
}

#[tokio::test]
async fn frames_are_relayed_both_ways() {
    let t = TestServer::start().await;
    let acc = t.account("pty@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let mut ws = connect(&t, Some(&acc.key), &id).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "start", "cmd": "/bin/bash", "cols": 80, "rows": 24})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        control(next(&mut ws).await),
        json!({"type": "started", "pid": 100, "tag": "sim-pty-1"})
    );
    ws.send(Message::Binary(b"ls\x03\n".to_vec().into()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Some(Message::Binary(b)) => assert_eq!(&b[..], b"ls\x03\n"),
        other => panic!("{other:?}"),
    }
    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(control(next(&mut ws).await), json!({"type": "pong"}));
    ws.send(Message::Binary(b"exit 3\n".to_vec().into()))
        .await
        .unwrap();
    assert!(matches!(next(&mut ws).await, Some(Message::Binary(_))));
    assert_eq!(
        control(next(&mut ws).await),
        json!({"type": "exit", "exit_code": 3})
    );
    assert!(next(&mut ws).await.is_none(), "closed after the exit");
}

#[tokio::test]
async fn refusals_come_before_the_upgrade() {
    let t = TestServer::start().await;
    let acc = t.account("pty-auth@example.com").await;
    let other = t.account("pty-other@example.com").await;
    let id = capsule(&t, &acc.key).await;
    assert_eq!(
        refused_status(connect(&t, None, &id).await.unwrap_err()),
        401
    );
    assert_eq!(
        refused_status(connect(&t, Some("wrn_bogus"), &id).await.unwrap_err()),
        401
    );
    assert_eq!(
        refused_status(connect(&t, Some(&other.key), &id).await.unwrap_err()),
        404
    );
    assert_eq!(
        refused_status(connect(&t, Some(&acc.key), "cl-nosuch").await.unwrap_err()),
        404
    );
    let r = t
        .keyed(Method::POST, &format!("/v1/capsules/{id}/pause"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        refused_status(connect(&t, Some(&acc.key), &id).await.unwrap_err()),
        409
    );
}

#[tokio::test]
async fn host_details_are_stripped_and_a_pause_ends_the_session() {
    let t = TestServer::start().await;
    let acc = t.account("pty-err@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let mut ws = connect(&t, Some(&acc.key), &id).await.unwrap();
    ws.send(Message::Text(
        r#"{"type":"start","cmd":"/host/error"}"#.into(),
    ))
    .await
    .unwrap();
    let e = control(next(&mut ws).await);
    assert_eq!(
        (e["type"].as_str(), e["fatal"].as_bool()),
        (Some("error"), Some(true))
    );
    let data = e["data"].as_str().unwrap();
    assert!(
        !data.contains("/var/lib/wrenn") && !data.contains("10.11.0.2"),
        "{data}"
    );

    let mut ws = connect(&t, Some(&acc.key), &id).await.unwrap();
    ws.send(Message::Text(r#"{"type":"start"}"#.into()))
        .await
        .unwrap();
    assert_eq!(control(next(&mut ws).await)["type"], "started");
    let r = t
        .keyed(Method::POST, &format!("/v1/capsules/{id}/pause"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = control(next(&mut ws).await);
    assert_eq!(
        (e["type"].as_str(), e["fatal"].as_bool()),
        (Some("error"), Some(true)),
        "{e}"
    );
    assert!(e["data"].as_str().unwrap().contains("paused"), "{e}");
    assert!(next(&mut ws).await.is_none());
}
