//! The web console's side of the control plane: the embedded console served at `/` without
//! shadowing the API, and the browser session (the `wrenn_sid` cookie and its CSRF token)
//! standing in for the bearer token and the API key, while both keep working as before.

mod support;

use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};
use support::{assert_error, TestServer};

#[tokio::test]
async fn console_is_served_at_the_root_and_never_over_the_api() {
    let ts = TestServer::start().await;
    // What a browser sends when it navigates.
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for path in ["/", "/keys", "/sandboxes/sb-1", "/auth/github/callback"] {
        let r = ts
            .req(Method::GET, path)
            .header(ACCEPT, html)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        assert_eq!(r.headers()[CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer", "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("Wrenn"), "{path}: {body}");
    }
    // The root is the console for any client; another page path only for a browser, while a
    // script asking for a path nothing serves gets the API's JSON 404.
    let r = ts.req(Method::GET, "/").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_error(
        ts.req(Method::GET, "/keys").send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    // API paths keep their JSON errors, also for a browser.
    assert_error(
        ts.req(Method::GET, "/v1/nope")
            .header(ACCEPT, html)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        ts.req(Method::GET, "/v1/nope").send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        ts.req(Method::POST, "/somewhere").send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    let r = ts.req(Method::GET, "/openapi.yaml").send().await.unwrap();
    assert_eq!(r.headers()[CONTENT_TYPE], "application/yaml");
    // A missing file is a 404, not the page.
    let r = ts
        .req(Method::GET, "/assets/gone-123.js")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    if wrenn_server::api::console_built() {
        // The page's hashed assets are served, cached for good, with their types.
        let page = ts
            .req(Method::GET, "/")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let js = page
            .split('"')
            .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
            .expect("the page names its script");
        let r = ts.req(Method::GET, js).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        assert!(r.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
    }
}

/// The `name=value` of a `Set-Cookie` answer, and its attributes.
fn cookie_of(r: &reqwest::Response) -> (String, String) {
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let (pair, attrs) = set.split_once(';').unwrap();
    (pair.to_string(), attrs.to_string())
}

#[tokio::test]
async fn session_cookie_with_csrf_stands_in_for_token_and_key() {
    let ts = TestServer::start().await;
    let auth = ts.signup("console@example.com").await;
    let token = auth["token"].as_str().unwrap();

    // Not signed in yet.
    let r = ts
        .req(Method::GET, "/v1/auth/session")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;

    let r = ts
        .req(Method::POST, "/v1/auth/session")
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (cookie, attrs) = cookie_of(&r);
    assert!(cookie.starts_with("wrenn_sid="), "{cookie}");
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(a), "{attrs}");
    }
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["email"], "console@example.com");
    assert_eq!(s["team_id"], auth["team_id"]);
    let csrf = s["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(csrf.len(), 64);

    // A forged token makes no session.
    let r = ts
        .req(Method::POST, "/v1/auth/session")
        .json(&json!({"token": format!("{token}x")}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;

    let with = |m: Method, p: &str| ts.req(m, p).header("cookie", &cookie);
    let r = with(Method::GET, "/v1/auth/session").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["csrf_token"], csrf);

    // Reads need only the cookie; a state change needs the CSRF token too.
    let r = with(Method::GET, "/v1/api-keys").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = with(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "no-csrf"}))
        .send()
        .await
        .unwrap();
    // Signed in, but the request is refused: 403 `forbidden`, not a 401 that reads as
    // "signed out".
    let e = assert_error(r, 403, "forbidden").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("CSRF"));
    let r = with(Method::POST, "/v1/api-keys")
        .header("x-csrf-token", "0".repeat(64))
        .json(&json!({"name": "bad-csrf"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = with(Method::POST, "/v1/api-keys")
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "from-console"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Another origin is refused even with the right token.
    let r = with(Method::POST, "/v1/api-keys")
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // The key routes take the cookie as the user's team.
    let r = with(Method::POST, "/v1/sandboxes")
        .header("x-csrf-token", &csrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed: Value = ts
        .keyed(Method::GET, "/v1/sandboxes", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.as_array().unwrap().iter().any(|s| s["id"] == id));
    let r = with(Method::DELETE, &format!("/v1/sandboxes/{id}"))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // Without any credential the answers are the spec's, as before.
    let r = ts.req(Method::GET, "/v1/sandboxes").send().await.unwrap();
    let e = assert_error(r, 401, "unauthorized").await;
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("X-API-Key"));

    // Signing out clears the cookie.
    let r = with(Method::DELETE, "/v1/auth/session")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (cleared, attrs) = cookie_of(&r);
    assert_eq!(cleared, "wrenn_sid=");
    assert!(attrs.contains("Max-Age=0"), "{attrs}");

    // No provider configured here.
    let p: Value = ts
        .req(Method::GET, "/v1/auth/providers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["providers"], json!([]));
}
