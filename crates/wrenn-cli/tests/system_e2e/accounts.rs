//! Sign-up, log-in and API keys against the real daemon.

use crate::common::{enter, rt, Api, PASSWORD};
use serde_json::{json, Value};

#[test]
fn auth_and_api_keys() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let http = &s.http;
        let email = "carol@example.com";
        let r = http
            .post(s.url("/v1/auth/signup"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let signup: Value = r.json().await.unwrap();
        assert_eq!(signup["email"], email);
        for f in ["token", "user_id", "team_id"] {
            assert!(
                signup[f].as_str().is_some_and(|v| !v.is_empty()),
                "{signup}"
            );
        }
        let r = http
            .post(s.url("/v1/auth/signup"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "email_taken");

        let r = http
            .post(s.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(s.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let login: Value = r.json().await.unwrap();
        assert_eq!(login["team_id"], signup["team_id"]);
        let token = login["token"].as_str().unwrap();

        let r = http
            .post(s.url("/v1/api-keys"))
            .bearer_auth(token)
            .json(&json!({"name": "laptop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let key: Value = r.json().await.unwrap();
        let plain = key["key"].as_str().unwrap().to_string();
        let prefix = key["key_prefix"].as_str().unwrap().trim_end_matches('.');
        assert!(
            plain.starts_with(prefix) && plain.starts_with("wrn_"),
            "{key}"
        );
        let r = http
            .get(s.url("/v1/api-keys"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list: Value = r.json().await.unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["name"], "laptop");
        assert!(list[0]["key"].is_null(), "plaintext key listed: {list:?}");

        // The key works for sandbox calls (an empty list), a JWT does not, and after
        // deletion the key is refused.
        let api = Api {
            suite: s,
            key: plain.clone(),
        };
        let (st, v) = api.get("/v1/sandboxes").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v, json!([]));
        let r = http
            .get(s.url("/v1/sandboxes"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .delete(s.url(&format!("/v1/api-keys/{}", key["id"].as_str().unwrap())))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let (st, v) = api.get("/v1/sandboxes").await;
        assert_eq!(st, 401, "{v}");
    });
}
