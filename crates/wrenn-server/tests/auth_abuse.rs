//! Login and signup under abuse: floods from one client address and guesses at one email
//! answer `429 rate_limited` with `Retry-After`; other addresses and emails are not slowed;
//! behind a trusted proxy the client is the forwarded address; closed signup answers
//! `403 signup_closed` and an administrator still adds accounts.

mod support;

use reqwest::Method;
use serde_json::json;
use support::{assert_error, TestServer, JWT_SECRET};
use wrenn_server::config::{AuthLimits, Rate, SignupMode};

fn rate(burst: u32, per_minute: u32) -> Rate {
    Rate { burst, per_minute }
}

async fn login(
    t: &TestServer,
    email: &str,
    password: &str,
    from: Option<&str>,
) -> reqwest::Response {
    let mut r = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": email, "password": password}));
    if let Some(addr) = from {
        r = r.header("x-forwarded-for", addr);
    }
    r.send().await.unwrap()
}

/// The `Retry-After` of a 429 `rate_limited`, in seconds.
async fn limited(r: reqwest::Response) -> u64 {
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_error(r, 429, "rate_limited").await;
    retry
}

#[tokio::test]
async fn a_login_flood_from_one_address_is_refused_with_retry_after() {
    let t = TestServer::start_with(|c| {
        c.auth_limits = AuthLimits {
            login_per_addr: rate(5, 6),
            ..AuthLimits::unlimited()
        };
    })
    .await;
    t.signup("flood@example.com").await;
    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(login(&t, "flood@example.com", "wrong-password", None).await);
    }
    let mut refused = 0;
    for r in answers {
        match r.status().as_u16() {
            401 => {}
            429 => {
                let retry = limited(r).await;
                assert!((1..=10).contains(&retry), "Retry-After {retry}");
                refused += 1;
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(refused, 25);
    // The right password does not get through either: the address is out of tokens.
    limited(login(&t, "flood@example.com", "password123", None).await).await;
}

#[tokio::test]
async fn guesses_at_one_email_are_limited_and_others_are_not() {
    let t = TestServer::start_with(|c| {
        c.auth_limits = AuthLimits {
            login_per_email: rate(3, 1),
            ..AuthLimits::unlimited()
        };
    })
    .await;
    t.signup("victim@example.com").await;
    t.signup("other@example.com").await;
    // Successes cost nothing.
    for _ in 0..5 {
        assert_eq!(
            login(&t, "victim@example.com", "password123", None)
                .await
                .status(),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            login(&t, "victim@example.com", "guess", None)
                .await
                .status(),
            401
        );
    }
    let retry = limited(login(&t, "Victim@Example.com ", "guess", None).await).await;
    assert!(retry >= 30, "Retry-After {retry}");
    assert_eq!(
        login(&t, "other@example.com", "password123", None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let t = TestServer::start_with(|c| {
        c.auth_limits = AuthLimits {
            login_per_addr: rate(2, 1),
            signup_per_addr: rate(1, 1),
            ..AuthLimits::unlimited()
        };
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            login(&t, "a@example.com", "x", Some("203.0.113.5"))
                .await
                .status(),
            401
        );
    }
    limited(login(&t, "a@example.com", "x", Some("10.0.0.1, 203.0.113.5")).await).await;
    assert_eq!(
        login(&t, "a@example.com", "x", Some("203.0.113.6"))
            .await
            .status(),
        401
    );
    // Signups from one address: one, then 429.
    let signup = |email: &'static str| {
        t.req(Method::POST, "/v1/auth/signup")
            .header("x-forwarded-for", "198.51.100.7")
            .json(&json!({"email": email, "password": "password123"}))
            .send()
    };
    assert_eq!(signup("s1@example.com").await.unwrap().status(), 201);
    limited(signup("s2@example.com").await.unwrap()).await;
}

#[tokio::test]
async fn closed_signup_is_refused_and_an_administrator_adds_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let t = TestServer::start_with(|c| {
        c.signup = SignupMode::Closed;
        c.data_dir = data.clone();
    })
    .await;
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "new@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 403, "signup_closed").await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("administrator"));

    let mut cfg = wrenn_server::ServerConfig::new(&data, JWT_SECRET);
    cfg.signup = SignupMode::Closed;
    let added = wrenn_server::add_account(&cfg, " New@Example.com", "password123")
        .await
        .unwrap();
    assert_eq!(added.email, "new@example.com");
    assert!(added.team_id.starts_with("team-"));
    let r = login(&t, "new@example.com", "password123", None).await;
    assert_eq!(r.status(), 200);
    let again = wrenn_server::add_account(&cfg, "new@example.com", "password123").await;
    assert!(
        matches!(again, Err(wrenn_server::ApiError::EmailTaken)),
        "{again:?}"
    );
    let weak = wrenn_server::add_account(&cfg, "b@example.com", "short").await;
    assert!(
        matches!(weak, Err(wrenn_server::ApiError::BadRequest(_))),
        "{weak:?}"
    );
    assert!("closed".parse::<SignupMode>().is_ok() && "maybe".parse::<SignupMode>().is_err());
}

#[tokio::test]
async fn one_hashing_permit_still_serves_concurrent_logins() {
    let t = TestServer::start_with(|c| c.auth_limits.hash_concurrency = 1).await;
    t.signup("hash@example.com").await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let r = t
                .req(Method::POST, "/v1/auth/login")
                .json(&json!({"email": "hash@example.com", "password": "password123"}))
                .send();
            tokio::spawn(async move { r.await.unwrap().status().as_u16() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
}
