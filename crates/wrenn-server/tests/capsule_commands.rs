//! `/v1/capsules/{id}/exec`, `/exec/stream` and `/processes…` against the simulated agent,
//! shaped as the SDK's `Commands` sends and parses them: foreground exec with `envs` and
//! `cwd`, background exec (202, pid and tag), list, kill by pid or tag with a signal, attach
//! over WebSocket, the SDK's error codes, team scoping, and processes kept across a pause and
//! resume.

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

async fn exec(t: &TestServer, key: &str, id: &str, body: Value) -> (u16, Value) {
    let r = t
        .keyed(Method::POST, &format!("/v1/capsules/{id}/exec"), key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn call(t: &TestServer, key: &str, method: Method, path: &str) -> (u16, Value) {
    let r = t.keyed(method, path, key).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn connect(t: &TestServer, key: &str, path: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("{}{path}", t.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn next_event(ws: &mut Ws) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("stream stalled")?;
        match frame {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn foreground_exec_takes_envs_and_cwd() {
    let t = TestServer::start().await;
    let acc = t.account("fg@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let (status, out) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "env", "envs": {"GREETING": "hi"}, "timeout_sec": 30}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert!(out["stdout"].as_str().unwrap().contains("GREETING=hi"));
    assert_eq!(out["exit_code"], 0);
    assert!(out["duration_ms"].is_u64());
    let (_, out) = exec(&t, &acc.key, &id, json!({"cmd": "pwd", "cwd": "/srv/app"})).await;
    assert_eq!(out["stdout"], "/srv/app\n");
    // The seed's exec takes `envs` too.
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/exec"), &acc.key)
        .json(&json!({"cmd": "env", "envs": {"X": "1"}}))
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["stdout"], "X=1\n");
}

#[tokio::test]
async fn background_processes_start_list_attach_and_die_by_tag() {
    let t = TestServer::start().await;
    let acc = t.account("bg@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let script = "echo ready; sleep 30";
    let (status, bg) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "/bin/sh", "args": ["-c", script], "background": true, "tag": "web"}),
    )
    .await;
    assert_eq!(status, 202, "{bg}");
    assert_eq!(
        (bg["tag"].as_str(), bg["sandbox_id"].as_str()),
        (Some("web"), Some(id.as_str()))
    );
    let pid = bg["pid"].as_u64().unwrap();
    // Without a tag, one is made; a short command is not listed once it has ended.
    let (status, other) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "/bin/sh", "args": ["-c", "echo once"], "background": true}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(other["tag"], format!("proc-{}", other["pid"]));

    let (status, list) = call(
        &t,
        &acc.key,
        Method::GET,
        &format!("/v1/capsules/{id}/processes"),
    )
    .await;
    assert_eq!(status, 200);
    let procs = list["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{list}");
    assert_eq!(procs[0]["pid"], pid);
    assert_eq!(procs[0]["tag"], "web");
    assert_eq!(procs[0]["cmd"], "/bin/sh");
    assert_eq!(procs[0]["args"], json!(["-c", script]));

    // A running process's tag cannot be taken again.
    let (status, body) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "true", "background": true, "tag": "web"}),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "conflict"));

    // Attach by tag: the output made before, then the exit after a kill by tag.
    let mut ws = connect(
        &t,
        &acc.key,
        &format!("/v1/capsules/{id}/processes/web/stream"),
    )
    .await
    .unwrap();
    assert_eq!(
        next_event(&mut ws).await.unwrap(),
        json!({"type": "start", "pid": pid})
    );
    assert_eq!(
        next_event(&mut ws).await.unwrap(),
        json!({"type": "stdout", "data": "ready\n"})
    );
    let (status, _) = call(
        &t,
        &acc.key,
        Method::DELETE,
        &format!("/v1/capsules/{id}/processes/web?signal=SIGTERM"),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        next_event(&mut ws).await.unwrap(),
        json!({"type": "exit", "exit_code": -1})
    );
    let (_, list) = call(
        &t,
        &acc.key,
        Method::GET,
        &format!("/v1/capsules/{id}/processes"),
    )
    .await;
    assert_eq!(list["processes"], json!([]));
}

#[tokio::test]
async fn errors_have_the_sdks_codes() {
    let t = TestServer::start().await;
    let acc = t.account("perr@example.com").await;
    let other = t.account("perr2@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let procs = format!("/v1/capsules/{id}/processes");

    let (status, body) = call(&t, &acc.key, Method::DELETE, &format!("{procs}/4242")).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = call(&t, &acc.key, Method::DELETE, &format!("{procs}/no-such")).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = call(&t, &acc.key, Method::DELETE, &format!("{procs}/bad!tag")).await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = call(
        &t,
        &acc.key,
        Method::DELETE,
        &format!("{procs}/1000?signal=SIGHUP"),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "true", "background": true, "tag": "12345"}),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = exec(&t, &acc.key, &id, json!({"cmd": "", "background": true})).await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));

    // Attaching to an unknown process is a 404 before the upgrade.
    match connect(&t, &acc.key, &format!("{procs}/nobody/stream")).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 404),
        other => panic!("expected a 404, got {:?}", other.map(|_| ())),
    }

    // Another team sees no capsule.
    let (status, body) = call(&t, &other.key, Method::GET, &procs).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = exec(
        &t,
        &other.key,
        &id,
        json!({"cmd": "true", "background": true}),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[tokio::test]
async fn processes_outlive_a_pause_and_a_paused_capsule_is_invalid_state() {
    let t = TestServer::start().await;
    let acc = t.account("ppause@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let (status, bg) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "/bin/sh", "args": ["-c", "sleep 60"], "background": true, "tag": "long"}),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/pause"),
    )
    .await;
    assert_eq!(status, 200);

    let procs = format!("/v1/capsules/{id}/processes");
    for (method, path) in [
        (Method::GET, procs.clone()),
        (Method::DELETE, format!("{procs}/long")),
    ] {
        let (status, body) = call(&t, &acc.key, method, &path).await;
        assert_eq!(
            (status, code(&body)),
            (409, "invalid_state"),
            "{path}: {body}"
        );
    }
    let (status, body) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "true", "background": true}),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"));
    match connect(&t, &acc.key, &format!("{procs}/long/stream")).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 409),
        other => panic!("expected a 409, got {:?}", other.map(|_| ())),
    }

    let (status, _) = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/resume"),
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = call(&t, &acc.key, Method::GET, &procs).await;
    assert_eq!(list["processes"][0]["pid"], bg["pid"]);
    let (status, _) = call(
        &t,
        &acc.key,
        Method::DELETE,
        &format!("{procs}/{}", bg["pid"]),
    )
    .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn exec_stream_speaks_the_sdks_protocol() {
    let t = TestServer::start().await;
    let acc = t.account("pstream@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let mut ws = connect(&t, &acc.key, &format!("/v1/capsules/{id}/exec/stream"))
        .await
        .unwrap();
    // What `Commands.stream("echo hi")` sends first.
    ws.send(Message::Text(
        json!({"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo hi"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut ws).await {
        events.push(e);
    }
    assert_eq!(events[0]["type"], "start");
    assert!(events[0]["pid"].is_u64());
    assert_eq!(events.last().unwrap()["type"], "exit");
}

#[tokio::test]
async fn an_attached_client_is_told_when_its_capsule_pauses() {
    let t = TestServer::start().await;
    let acc = t.account("pattach@example.com").await;
    let id = capsule(&t, &acc.key).await;
    let (status, _) = exec(
        &t,
        &acc.key,
        &id,
        json!({"cmd": "/bin/sh", "args": ["-c", "echo up; sleep 60"], "background": true, "tag": "w"}),
    )
    .await;
    assert_eq!(status, 202);
    let mut ws = connect(
        &t,
        &acc.key,
        &format!("/v1/capsules/{id}/processes/w/stream"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws).await.unwrap()["type"], "start");
    assert_eq!(next_event(&mut ws).await.unwrap()["data"], "up\n");
    let (status, _) = call(
        &t,
        &acc.key,
        Method::POST,
        &format!("/v1/capsules/{id}/pause"),
    )
    .await;
    assert_eq!(status, 200);
    let e = next_event(&mut ws).await.expect("an event before the end");
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["data"].as_str().unwrap().contains("paused"), "{e}");
    assert!(next_event(&mut ws).await.is_none());
}
