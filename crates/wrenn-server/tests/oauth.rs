//! GitHub login end to end: the control plane on a loopback port, a stand-in GitHub (a real
//! axum server on 127.0.0.1 implementing the authorize redirect, the token exchange and the
//! user and emails endpoints, with a switch for each failure), and the browser played by
//! reqwest with redirects disabled: every hop is followed by hand and the state cookie is
//! carried like a browser would. Covers every callback outcome of the spec and the
//! registration race on SQLite and on PostgreSQL.

mod support;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::{Method, Url};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{assert_error, TestServer};
use wrenn_server::{build, BuildError, ConfigError, GithubConfig, OAuthConfig, ServerConfig};

const CLIENT_ID: &str = "Iv1.test-client";
const CLIENT_SECRET: &str = "test-client-secret-value";
/// The frontend; the tests read the final redirect but never request it.
const FRONTEND: &str = "http://127.0.0.1:9/app";

// ---------------------------------------------------------------------------------------
// The stand-in GitHub.

#[derive(Clone)]
struct GhUser {
    id: u64,
    login: String,
    /// The public profile email (`null` when the user shows none).
    email: Option<String>,
    /// (address, primary, verified) as `/user/emails` lists them.
    emails: Vec<(String, bool, bool)>,
}

impl GhUser {
    fn new(id: u64, email: &str) -> Self {
        Self {
            id,
            login: format!("octo{id}"),
            email: Some(email.into()),
            emails: vec![(email.into(), true, true)],
        }
    }
}

#[derive(Default)]
struct Switches {
    /// The user declines on the consent page.
    deny: bool,
    /// The token endpoint refuses the code.
    token_fails: bool,
    /// `/user` answers 500.
    user_fails: bool,
}

struct FakeGithub {
    user: Mutex<GhUser>,
    switches: Mutex<Switches>,
    /// Issued codes and the redirect_uri each was issued for.
    codes: Mutex<HashMap<String, String>>,
    tokens: Mutex<HashSet<String>>,
    token_calls: AtomicUsize,
    emails_calls: AtomicUsize,
    /// When set, `/user` answers only once this many requests wait (forces a race).
    user_barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

struct Fake {
    base: String,
    gh: Arc<FakeGithub>,
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn authorize(
    State(gh): State<Arc<FakeGithub>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("scope").map(String::as_str) != Some("user:email")
    {
        return (StatusCode::BAD_REQUEST, "bad client_id or scope").into_response();
    }
    let (Some(redirect), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return (StatusCode::BAD_REQUEST, "missing redirect_uri or state").into_response();
    };
    let mut back = Url::parse(redirect).unwrap();
    if gh.switches.lock().unwrap().deny {
        back.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair(
                "error_description",
                "The user has denied your application access.",
            )
            .append_pair("state", state);
    } else {
        let code = random_hex()[..20].to_string();
        gh.codes
            .lock()
            .unwrap()
            .insert(code.clone(), redirect.clone());
        back.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", state);
    }
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

async fn access_token(
    State(gh): State<Arc<FakeGithub>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    gh.token_calls.fetch_add(1, Ordering::SeqCst);
    if headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) != Some("application/json") {
        // GitHub answers form-encoded unless JSON is asked for.
        return "error=json_not_requested".into_response();
    }
    let refuse = |error: &str| {
        Json(json!({"error": error, "error_description": "refused by the stand-in"}))
            .into_response()
    };
    if f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return refuse("incorrect_client_credentials");
    }
    let issued_for = f
        .get("code")
        .and_then(|c| gh.codes.lock().unwrap().remove(c));
    if issued_for.is_none() || issued_for.as_ref() != f.get("redirect_uri") {
        return refuse("bad_verification_code");
    }
    if gh.switches.lock().unwrap().token_fails {
        return refuse("bad_verification_code");
    }
    let token = format!("gho_{}", random_hex());
    gh.tokens.lock().unwrap().insert(token.clone());
    Json(json!({"access_token": token, "token_type": "bearer", "scope": "user:email"}))
        .into_response()
}

fn authorized(gh: &FakeGithub, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ua = headers.get(header::USER_AGENT).is_some();
    ua && token.is_some_and(|t| gh.tokens.lock().unwrap().contains(t))
}

async fn user_endpoint(State(gh): State<Arc<FakeGithub>>, headers: HeaderMap) -> Response {
    if !authorized(&gh, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let barrier = gh.user_barrier.lock().unwrap().clone();
    if let Some(b) = barrier {
        b.wait().await;
    }
    if gh.switches.lock().unwrap().user_fails {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"message": "Server Error"})),
        )
            .into_response();
    }
    let u = gh.user.lock().unwrap().clone();
    Json(json!({"id": u.id, "login": u.login, "email": u.email, "type": "User"})).into_response()
}

async fn emails(State(gh): State<Arc<FakeGithub>>, headers: HeaderMap) -> Response {
    if !authorized(&gh, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    gh.emails_calls.fetch_add(1, Ordering::SeqCst);
    let u = gh.user.lock().unwrap().clone();
    let list: Vec<Value> = u
        .emails
        .iter()
        .map(|(e, p, v)| json!({"email": e, "primary": p, "verified": v, "visibility": null}))
        .collect();
    Json(list).into_response()
}

impl Fake {
    async fn start(user: GhUser) -> Fake {
        let gh = Arc::new(FakeGithub {
            user: Mutex::new(user),
            switches: Mutex::default(),
            codes: Mutex::default(),
            tokens: Mutex::default(),
            token_calls: AtomicUsize::new(0),
            emails_calls: AtomicUsize::new(0),
            user_barrier: Mutex::new(None),
        });
        let router = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(access_token))
            .route("/api/user", get(user_endpoint))
            .route("/api/user/emails", get(emails))
            .with_state(gh.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Fake { base, gh }
    }

    fn config(&self) -> OAuthConfig {
        OAuthConfig {
            github: Some(GithubConfig {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                oauth_base_url: self.base.clone(),
                // A path prefix, as GitHub Enterprise has (`/api/v3`).
                api_base_url: format!("{}/api", self.base),
            }),
            redirect_url: Some(FRONTEND.into()),
        }
    }

    fn switches(&self) -> std::sync::MutexGuard<'_, Switches> {
        self.gh.switches.lock().unwrap()
    }

    fn set_user(&self, u: GhUser) {
        *self.gh.user.lock().unwrap() = u;
    }
}

/// A control plane whose GitHub is the stand-in; `tweak` may change more settings.
async fn server_with(fake: &Fake, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let oauth = fake.config();
    TestServer::start_with(move |cfg| {
        cfg.oauth = oauth;
        tweak(cfg);
    })
    .await
}

async fn server(fake: &Fake) -> TestServer {
    server_with(fake, |_| {}).await
}

// ---------------------------------------------------------------------------------------
// The browser.

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> Url {
    assert_eq!(r.status(), 302, "expected a redirect from {}", r.url());
    let loc = r.headers()[header::LOCATION].to_str().unwrap();
    Url::parse(loc).unwrap()
}

fn set_cookie(r: &reqwest::Response) -> String {
    let all: Vec<&str> = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "one Set-Cookie expected: {all:?}");
    all[0].to_string()
}

/// `name=value` of a Set-Cookie line, as a browser sends it back.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_string()
}

fn query(u: &Url) -> HashMap<String, String> {
    u.query_pairs().into_owned().collect()
}

/// Step 1: the login button. Returns GitHub's authorize URL and the cookie to carry.
async fn begin(ts: &TestServer) -> (Url, String) {
    let r = browser()
        .get(ts.url("/v1/auth/oauth/github"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    (loc, cookie_pair(&set_cookie(&r)))
}

/// Step 2: GitHub's consent page redirects back to the callback.
async fn consent(authorize: &Url) -> Url {
    let r = browser().get(authorize.clone()).send().await.unwrap();
    location(&r)
}

/// Step 3: the callback. Returns where the frontend is sent and the Set-Cookie line.
async fn callback(callback: &Url, cookie: Option<&str>) -> (Url, String) {
    let mut req = browser().get(callback.clone());
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, format!("theme=dark; {c}"));
    }
    let r = req.send().await.unwrap();
    let loc = location(&r);
    assert_eq!(
        r.headers()[header::CACHE_CONTROL],
        "no-store",
        "callback answers must not be cached"
    );
    (loc, set_cookie(&r))
}

#[derive(Debug)]
struct Session {
    token: String,
    user_id: String,
    team_id: String,
    email: String,
}

/// The frontend's reading of the final redirect: a session or an error code.
fn outcome(frontend: &Url) -> Result<Session, String> {
    assert_eq!(
        frontend.as_str().split('?').next().unwrap(),
        format!("{FRONTEND}/auth/github/callback"),
        "final redirect goes to the frontend callback page"
    );
    let q = query(frontend);
    if let Some(e) = q.get("error") {
        assert_eq!(
            q.len(),
            1,
            "an error redirect carries only the code: {frontend}"
        );
        return Err(e.clone());
    }
    let get = |k: &str| {
        q.get(k)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{k} missing in {frontend}"))
            .clone()
    };
    Ok(Session {
        token: get("token"),
        user_id: get("user_id"),
        team_id: get("team_id"),
        email: get("email"),
    })
}

/// The whole flow as a browser runs it.
async fn login(ts: &TestServer) -> Result<Session, String> {
    let (authorize, cookie) = begin(ts).await;
    let back = consent(&authorize).await;
    let (frontend, cleared) = callback(&back, Some(&cookie)).await;
    assert!(
        cleared.starts_with("wrenn_oauth_state=;") && cleared.contains("Max-Age=0"),
        "callback clears the state cookie: {cleared}"
    );
    outcome(&frontend)
}

async fn assert_token_works(ts: &TestServer, s: &Session) {
    let r = ts
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(&s.token)
        .json(&json!({"name": "from-github"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key: Value = r.json().await.unwrap();
    assert_eq!(key["team_id"], s.team_id.as_str());
    let r = ts
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let keys: Vec<Value> = r.json().await.unwrap();
    assert!(keys.iter().any(|k| k["name"] == "from-github"), "{keys:?}");
}

// ---------------------------------------------------------------------------------------
// Redirect.

#[tokio::test]
async fn redirect_goes_to_github_with_a_signed_state_cookie() {
    let fake = Fake::start(GhUser::new(1, "a@example.com")).await;
    let ts = server(&fake).await;
    let r = browser()
        .get(ts.url("/v1/auth/oauth/github"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    let cookie = set_cookie(&r);
    assert_eq!(
        loc.as_str().split('?').next().unwrap(),
        format!("{}/login/oauth/authorize", fake.base)
    );
    let q = query(&loc);
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["scope"], "user:email");
    assert_eq!(
        q["redirect_uri"],
        ts.url("/v1/auth/oauth/github/callback"),
        "callback URL is built from the public URL"
    );
    let state = &q["state"];
    assert!(state.len() >= 43, "state has at least 256 bits: {state}");

    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(
        attrs[0].starts_with(&format!("wrenn_oauth_state={state}.")),
        "{cookie}"
    );
    for a in [
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
        "Path=/v1/auth/oauth/github",
    ] {
        assert!(attrs.contains(&a), "cookie lacks {a}: {cookie}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "plain http public URL: {cookie}"
    );

    // Every login attempt gets its own state.
    let (again, _) = begin(&ts).await;
    assert_ne!(&query(&again)["state"], state);
}

#[tokio::test]
async fn https_public_url_with_a_path_makes_a_secure_cookie_for_that_path() {
    let fake = Fake::start(GhUser::new(1, "a@example.com")).await;
    let ts = server_with(&fake, |cfg| {
        cfg.public_url = Some("https://cp.example.com/wrenn/".into())
    })
    .await;
    let r = browser()
        .get(ts.url("/v1/auth/oauth/github"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    let cookie = set_cookie(&r);
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"Secure"), "{cookie}");
    // Behind a path prefix the cookie must still reach the callback.
    assert!(
        attrs.contains(&"Path=/wrenn/v1/auth/oauth/github"),
        "{cookie}"
    );
    assert_eq!(
        query(&loc)["redirect_uri"],
        "https://cp.example.com/wrenn/v1/auth/oauth/github/callback"
    );
}

#[tokio::test]
async fn unknown_or_unconfigured_provider_is_404() {
    let fake = Fake::start(GhUser::new(1, "a@example.com")).await;
    let ts = server(&fake).await;
    for path in [
        "/v1/auth/oauth/google",
        "/v1/auth/oauth/google/callback?code=x&state=y",
    ] {
        let r = browser().get(ts.url(path)).send().await.unwrap();
        assert_error(r, 404, "oauth_provider_not_configured").await;
    }
    let plain = TestServer::start().await;
    for path in [
        "/v1/auth/oauth/github",
        "/v1/auth/oauth/github/callback?code=x&state=y",
    ] {
        let r = browser().get(plain.url(path)).send().await.unwrap();
        assert_error(r, 404, "oauth_provider_not_configured").await;
    }
}

#[tokio::test]
async fn build_refuses_oauth_without_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path(), support::JWT_SECRET);
    cfg.oauth.github = Some(GithubConfig::new("id", "do-not-print-this-secret"));
    let err = match build(cfg.clone()).await {
        Ok(_) => panic!("built without a public URL"),
        Err(e) => e,
    };
    assert!(
        matches!(err, BuildError::Config(ConfigError::OAuth(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("CP_PUBLIC_URL"), "{err}");
    assert!(!format!("{err} {err:?} {cfg:?}").contains("do-not-print-this-secret"));
    cfg.public_url = Some("http://127.0.0.1:1".into());
    build(cfg).await.expect("builds with a public URL");
}

// ---------------------------------------------------------------------------------------
// Callback outcomes.

#[tokio::test]
async fn new_user_is_created_and_returning_user_logs_in() {
    let fake = Fake::start(GhUser::new(4242, "Octo@Example.com")).await;
    let ts = server(&fake).await;

    let first = login(&ts).await.expect("first login");
    assert_eq!(first.email, "octo@example.com");
    assert_eq!(fake.gh.emails_calls.load(Ordering::SeqCst), 0);
    let store = ts.server.store();
    let u = store
        .user_by_oauth("github", "4242")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (u.id.as_str(), u.team_id.as_str()),
        (first.user_id.as_str(), first.team_id.as_str())
    );
    assert_eq!(u.password_hash, None, "OAuth accounts have no password");
    assert!(store.team(&first.team_id).await.unwrap().is_some());
    assert_token_works(&ts, &first).await;

    // The same GitHub account again, even with a new public email: the same user.
    let mut changed = GhUser::new(4242, "renamed@example.com");
    changed.login = "octo-renamed".into();
    fake.set_user(changed);
    let second = login(&ts).await.expect("returning login");
    assert_eq!(second.user_id, first.user_id);
    assert_eq!(second.team_id, first.team_id);
    assert_eq!(second.email, "octo@example.com");
    assert_token_works(&ts, &second).await;
    assert!(store
        .user_by_email("renamed@example.com")
        .await
        .unwrap()
        .is_none());

    // An OAuth-only account cannot be entered with a password.
    let r = ts
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "octo@example.com", "password": ""}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "invalid_credentials").await;
}

#[tokio::test]
async fn closed_signup_signs_in_linked_identities_only() {
    let fake = Fake::start(GhUser::new(5150, "stranger@example.com")).await;
    let ts = server_with(&fake, |c| {
        c.signup = wrenn_server::config::SignupMode::Closed
    })
    .await;
    assert_eq!(login(&ts).await.unwrap_err(), "signup_closed");
    let store = ts.server.store();
    assert!(store
        .user_by_email("stranger@example.com")
        .await
        .unwrap()
        .is_none());

    // An identity an administrator linked still signs in.
    let account = wrenn_server::store::NewAccount {
        user_id: "usr-linked".into(),
        team_id: "team-linked".into(),
        team_name: "linked".into(),
        email: "stranger@example.com".into(),
        password_hash: None,
        created_at: wrenn_server::store::now(),
    };
    store
        .create_oauth_account(&account, "github", "5150")
        .await
        .unwrap();
    let s = login(&ts).await.expect("linked identity");
    assert_eq!(s.user_id, "usr-linked");
}

#[tokio::test]
async fn email_comes_from_the_emails_endpoint_when_the_profile_has_none() {
    let mut u = GhUser::new(7, "unused@example.com");
    u.email = None;
    u.emails = vec![
        ("secondary@example.com".into(), false, true),
        ("Primary@Example.com".into(), true, true),
    ];
    let fake = Fake::start(u).await;
    let ts = server(&fake).await;
    let s = login(&ts).await.expect("login with the emails fallback");
    assert_eq!(s.email, "primary@example.com");
    assert_eq!(fake.gh.emails_calls.load(Ordering::SeqCst), 1);
    assert_token_works(&ts, &s).await;
}

#[tokio::test]
async fn no_verified_primary_email_is_exchange_failed() {
    let mut u = GhUser::new(8, "x@example.com");
    u.email = None;
    u.emails = vec![
        ("unverified@example.com".into(), true, false),
        ("other@example.com".into(), false, true),
    ];
    let fake = Fake::start(u).await;
    let ts = server(&fake).await;
    assert_eq!(login(&ts).await.unwrap_err(), "exchange_failed");
    assert_eq!(fake.gh.emails_calls.load(Ordering::SeqCst), 1);
    let store = ts.server.store();
    assert!(store.user_by_oauth("github", "8").await.unwrap().is_none());
    assert!(store
        .user_by_email("unverified@example.com")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .user_by_email("other@example.com")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn failed_token_exchange_or_profile_fetch_is_exchange_failed() {
    let fake = Fake::start(GhUser::new(9, "nine@example.com")).await;
    let ts = server(&fake).await;

    fake.switches().token_fails = true;
    assert_eq!(login(&ts).await.unwrap_err(), "exchange_failed");
    assert_eq!(fake.gh.token_calls.load(Ordering::SeqCst), 1);

    fake.switches().token_fails = false;
    fake.switches().user_fails = true;
    assert_eq!(login(&ts).await.unwrap_err(), "exchange_failed");
    assert_eq!(fake.gh.token_calls.load(Ordering::SeqCst), 2);
    assert!(ts
        .server
        .store()
        .user_by_oauth("github", "9")
        .await
        .unwrap()
        .is_none());

    // The same code-exchange path works once GitHub does.
    fake.switches().user_fails = false;
    login(&ts).await.expect("login after GitHub recovered");
}

#[tokio::test]
async fn existing_email_is_never_taken_over() {
    let fake = Fake::start(GhUser::new(100, "Alice@Example.com")).await;
    let ts = server(&fake).await;
    let alice = ts.signup("alice@example.com").await;

    assert_eq!(login(&ts).await.unwrap_err(), "email_taken");
    let store = ts.server.store();
    assert!(store
        .user_by_oauth("github", "100")
        .await
        .unwrap()
        .is_none());
    let u = store
        .user_by_email("alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.id, alice["user_id"].as_str().unwrap());
    assert!(
        u.password_hash.is_some(),
        "the password account is untouched"
    );
    let r = ts
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "alice@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An email already linked to another GitHub identity is refused the same way.
    fake.set_user(GhUser::new(200, "bob@example.com"));
    let bob = login(&ts).await.expect("bob's first login");
    fake.set_user(GhUser::new(201, "bob@example.com"));
    assert_eq!(login(&ts).await.unwrap_err(), "email_taken");
    assert!(store
        .user_by_oauth("github", "201")
        .await
        .unwrap()
        .is_none());
    fake.set_user(GhUser::new(200, "bob@example.com"));
    assert_eq!(login(&ts).await.unwrap().user_id, bob.user_id);
}

#[tokio::test]
async fn declined_consent_is_access_denied() {
    let fake = Fake::start(GhUser::new(5, "five@example.com")).await;
    let ts = server(&fake).await;
    fake.switches().deny = true;
    assert_eq!(login(&ts).await.unwrap_err(), "access_denied");
    assert_eq!(fake.gh.token_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn callback_without_code_is_missing_code() {
    let fake = Fake::start(GhUser::new(6, "six@example.com")).await;
    let ts = server(&fake).await;
    let (authorize, cookie) = begin(&ts).await;
    let state = query(&authorize)["state"].clone();
    let mut cb = Url::parse(&ts.url("/v1/auth/oauth/github/callback")).unwrap();
    cb.query_pairs_mut().append_pair("state", &state);
    let (frontend, _) = callback(&cb, Some(&cookie)).await;
    assert_eq!(outcome(&frontend).unwrap_err(), "missing_code");
    assert_eq!(fake.gh.token_calls.load(Ordering::SeqCst), 0);
}

/// The callback URL with one query parameter replaced (or removed with `None`).
fn with_param(u: &Url, key: &str, value: Option<&str>) -> Url {
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != key)
        .collect();
    let mut out = u.clone();
    out.set_query(None);
    {
        let mut q = out.query_pairs_mut();
        q.extend_pairs(pairs);
        if let Some(v) = value {
            q.append_pair(key, v);
        }
    }
    out
}

#[tokio::test]
async fn bad_state_is_invalid_state_and_never_exchanges_the_code() {
    let fake = Fake::start(GhUser::new(11, "eleven@example.com")).await;
    let ts = server(&fake).await;
    let invalid = |frontend: Url| assert_eq!(outcome(&frontend).unwrap_err(), "invalid_state");

    // No cookie (e.g. a link planted by someone else).
    let (a_auth, a_cookie) = begin(&ts).await;
    let a_back = consent(&a_auth).await;
    invalid(callback(&a_back, None).await.0);

    // The cookie of another login attempt: states do not match.
    let (_, b_cookie) = begin(&ts).await;
    invalid(callback(&a_back, Some(&b_cookie)).await.0);

    // The right cookie but another state in the query, or none.
    invalid(
        callback(
            &with_param(&a_back, "state", Some("attacker-state")),
            Some(&a_cookie),
        )
        .await
        .0,
    );
    invalid(
        callback(&with_param(&a_back, "state", None), Some(&a_cookie))
            .await
            .0,
    );

    // A forged signature over the right state.
    let (state_and_time, _sig) = a_cookie.rsplit_once('.').unwrap();
    let forged = format!("{state_and_time}.{}", "A".repeat(43));
    invalid(callback(&a_back, Some(&forged)).await.0);

    // A cookie made up entirely, for a state the attacker chose.
    let now = chrono::Utc::now().timestamp();
    let made_up = format!("wrenn_oauth_state=chosen.{now}.{}", "B".repeat(43));
    invalid(
        callback(
            &with_param(&a_back, "state", Some("chosen")),
            Some(&made_up),
        )
        .await
        .0,
    );

    assert_eq!(
        fake.gh.token_calls.load(Ordering::SeqCst),
        0,
        "no code is exchanged without a valid state"
    );
    assert!(ts
        .server
        .store()
        .user_by_oauth("github", "11")
        .await
        .unwrap()
        .is_none());

    // The genuine pair still works.
    let (frontend, _) = callback(&a_back, Some(&a_cookie)).await;
    outcome(&frontend).expect("the genuine state and cookie");
}

// ---------------------------------------------------------------------------------------
// The registration race.

const RACERS: usize = 8;

/// Runs RACERS complete logins of the same new GitHub identity, their callbacks at once
/// (the stand-in holds every `/user` answer until all have asked), and checks they all end
/// as the same single user.
async fn race(ts: &TestServer, fake: &Fake) -> String {
    let mut flows = Vec::new();
    for _ in 0..RACERS {
        let (authorize, cookie) = begin(ts).await;
        flows.push((consent(&authorize).await, cookie));
    }
    *fake.gh.user_barrier.lock().unwrap() = Some(Arc::new(tokio::sync::Barrier::new(RACERS)));
    let results =
        tokio::time::timeout(
            Duration::from_secs(120),
            futures_util::future::join_all(flows.iter().map(|(back, cookie)| async move {
                outcome(&callback(back, Some(cookie)).await.0)
            })),
        )
        .await
        .expect("racing callbacks finished");
    let sessions: Vec<Session> = results
        .into_iter()
        .map(|r| r.expect("every racing callback logs in"))
        .collect();
    let first = &sessions[0];
    for s in &sessions {
        assert_eq!(s.user_id, first.user_id, "all racers are the same user");
        assert_eq!(s.team_id, first.team_id);
        assert_eq!(s.email, "racer@example.com");
    }
    assert_token_works(ts, &sessions[RACERS - 1]).await;
    first.user_id.clone()
}

#[tokio::test]
async fn racing_callbacks_make_one_user_on_sqlite() {
    let fake = Fake::start(GhUser::new(31337, "racer@example.com")).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("race.db");
    let db_path = db.display().to_string();
    let ts = server_with(&fake, |cfg| cfg.database_url = Some(db_path)).await;
    let user_id = race(&ts, &fake).await;

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(count("users").await, 1, "exactly one user row");
    assert_eq!(count("teams").await, 1, "losers left no team behind");
    assert_eq!(count("oauth_identities").await, 1);
    let owner: String = sqlx::query_scalar("SELECT user_id FROM oauth_identities")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owner, user_id);
}

#[tokio::test]
async fn racing_callbacks_make_one_user_on_postgres() {
    let pg = support::pg::PgServer::start();
    let url = pg.create_database("oauth_race").await;
    let fake = Fake::start(GhUser::new(31337, "racer@example.com")).await;
    let db_url = url.clone();
    let ts = server_with(&fake, |cfg| cfg.database_url = Some(db_url)).await;
    let user_id = race(&ts, &fake).await;

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for (table, want) in [("users", 1i64), ("teams", 1), ("oauth_identities", 1)] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, want, "{table} rows after the race");
    }
    let owner: String = sqlx::query_scalar("SELECT user_id FROM oauth_identities")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owner, user_id);
    pool.close().await;
    drop(ts);
}

#[tokio::test]
async fn storage_failure_is_internal_error() {
    let fake = Fake::start(GhUser::new(77, "seven@example.com")).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broken.db");
    let db_path = db.display().to_string();
    let ts = server_with(&fake, |cfg| cfg.database_url = Some(db_path)).await;
    // The identity table disappears underneath the running control plane.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DROP TABLE oauth_identities")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(login(&ts).await.unwrap_err(), "internal_error");
    assert_eq!(fake.gh.token_calls.load(Ordering::SeqCst), 1);
}
