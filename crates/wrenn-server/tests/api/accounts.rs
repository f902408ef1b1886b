//! Sign-up, log-in and API keys.

use crate::support::{assert_error, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wrenn_server::{build, BuildError, ConfigError, ServerConfig};

#[tokio::test]
async fn signup_and_login() {
    let t = TestServer::start().await;
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "Alice@Example.com", "password": "password123", "extra": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["email"], "alice@example.com");
    for f in ["token", "user_id", "team_id"] {
        assert!(a[f].as_str().is_some_and(|s| !s.is_empty()), "{f}: {a}");
    }

    // Same email in another case: 409.
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "ALICE@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "email_taken").await;

    for (email, pw, what) in [
        ("not-an-email", "password123", "email"),
        ("bob@example.com", "short", "8"),
        ("", "password123", "email"),
    ] {
        let r = t
            .req(Method::POST, "/v1/auth/signup")
            .json(&json!({"email": email, "password": pw}))
            .send()
            .await
            .unwrap();
        let v = assert_error(r, 400, "bad_request").await;
        assert!(
            v["error"]["message"].as_str().unwrap().contains(what),
            "{v}"
        );
    }

    let r = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "alice@EXAMPLE.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["user_id"], a["user_id"]);
    assert_eq!(l["team_id"], a["team_id"]);

    // Wrong password and unknown email: the same 401.
    let wrong = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "alice@example.com", "password": "password124"}))
        .send()
        .await
        .unwrap();
    let wrong = assert_error(wrong, 401, "invalid_credentials").await;
    let unknown = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "nobody@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let unknown = assert_error(unknown, 401, "invalid_credentials").await;
    assert_eq!(wrong, unknown);

    // The login token works for key management.
    let r = t
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth(l["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oauth_only_account_cannot_log_in_with_password() {
    let t = TestServer::start().await;
    let store = t.server.store();
    store
        .create_oauth_account(
            &wrenn_server::store::NewAccount {
                user_id: "usr-oauth".into(),
                team_id: "team-oauth".into(),
                team_name: "octo".into(),
                email: "octo@example.com".into(),
                password_hash: None,
                created_at: wrenn_server::store::now(),
            },
            "github",
            "1",
        )
        .await
        .unwrap();
    for pw in ["", "password123"] {
        let r = t
            .req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": "octo@example.com", "password": pw}))
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "invalid_credentials").await;
    }
    // Signing up with that email is refused: the account exists.
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "octo@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "email_taken").await;
}

#[tokio::test]
async fn weak_jwt_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(dir.path(), vec![b'x'; 31]);
    match build(cfg).await {
        Err(BuildError::Config(ConfigError::WeakJwtSecret { len: 31 })) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with a 31-byte secret"),
    }
    let cfg = ServerConfig::new(dir.path(), vec![b'x'; 32]);
    assert!(build(cfg).await.is_ok());
}

#[tokio::test]
async fn api_keys() {
    let t = TestServer::start().await;
    let a = t.signup("keys@example.com").await;
    let token = a["token"].as_str().unwrap();

    let r = t.req(Method::GET, "/v1/api-keys").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = t
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    // A token signed with another secret is refused.
    let forged = wrenn_server::auth::JwtKeys::new(&[9u8; 32])
        .issue("u", a["team_id"].as_str().unwrap(), "e")
        .unwrap();
    let r = t
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;

    // No body: default name.
    let r = t
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    assert_eq!(k["name"], "Unnamed API Key");
    assert_eq!(k["team_id"], a["team_id"]);
    let key = k["key"].as_str().unwrap();
    assert!(key.starts_with("wrn_") && key.len() >= 4 + 32, "{key}");
    assert_eq!(k["key_prefix"], format!("{}...", &key[..12]));
    assert!(k["last_used"].is_null());

    let r = t
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(token)
        .json(&json!({"name": "x".repeat(101)}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    let r = t
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(token)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    let k2: Value = r.json().await.unwrap();
    assert_eq!(k2["name"], "ci");

    // The key works, and its use is recorded.
    let r = t
        .keyed(Method::GET, "/v1/sandboxes", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list: Vec<Value> = t
            .req(Method::GET, "/v1/api-keys")
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|k| k.get("key").is_none()), "{list:?}");
        let first = list.iter().find(|x| x["id"] == k["id"]).unwrap();
        if first["last_used"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used never set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another team cannot delete it.
    let other = t.account("other@example.com").await;
    let id = k["id"].as_str().unwrap();
    let r = t
        .req(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "api_key_not_found").await;
    let r = t
        .req(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = t
        .req(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "api_key_not_found").await;
    // A deleted key no longer authenticates; a made-up one never did.
    for bad in [key, "wrn_0000", "garbage"] {
        let r = t
            .keyed(Method::GET, "/v1/sandboxes", bad)
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    let r = t.req(Method::GET, "/v1/sandboxes").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
}
