//! The browser session of the web console: `wrenn_sid`, an HttpOnly `SameSite=Strict` cookie
//! holding a session token (the JWT that signup, login and the OAuth callback answer), and
//! the CSRF token that goes with it. Routes: `POST /v1/auth/session` (a token in, the cookie
//! out), `GET /v1/auth/session` (who is signed in, and the CSRF token), `DELETE
//! /v1/auth/session` (sign out) and `GET /v1/auth/providers` (which OAuth providers are
//! configured, for the sign-in page).
//!
//! A request that carries neither `Authorization: Bearer` nor `X-API-Key` may be
//! authenticated by the cookie instead ([`from_cookie`], used by the extractors): then a
//! state-changing method must send the CSRF token back in `X-CSRF-Token`, and a request
//! whose `Origin` is not the server's own is refused (both 403 `forbidden`: the caller is
//! known, this request is not accepted). The CSRF token is an HMAC of the session token
//! under the server's secret, so it needs no storage and dies with the session.

use super::extract::JsonBody;
use super::Res;
use crate::app::App;
use crate::auth::{Claims, JWT_TTL_SECS};
use crate::error::ApiError;
use axum::http::header::{CACHE_CONTROL, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{extract::State, Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "wrenn_sid";
/// The header a cookie-authenticated state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The longest session token accepted.
const MAX_TOKEN: usize = 4096;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/auth/session", get(current).post(create).delete(remove))
        .route("/v1/auth/providers", get(providers))
}

#[derive(Deserialize)]
struct CreateSession {
    token: String,
}

/// Who is signed in, and the CSRF token state-changing requests send back.
#[derive(Serialize)]
struct SessionInfo {
    user_id: String,
    team_id: String,
    email: String,
    csrf_token: String,
    expires_at: String,
}

fn info(app: &App, token: &str, c: Claims) -> SessionInfo {
    SessionInfo {
        csrf_token: csrf_token(app, token),
        expires_at: chrono::DateTime::from_timestamp(c.exp, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        user_id: c.sub,
        team_id: c.team_id,
        email: c.email,
    }
}

/// `hex(HMAC-SHA256(secret, "wrenn-csrf\0" + token))`.
fn csrf_token(app: &App, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&app.cfg.jwt_secret).expect("any key length");
    mac.update(b"wrenn-csrf\0");
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn secure(app: &App) -> &'static str {
    let https = app
        .cfg
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

fn cookie(app: &App, value: &str, max_age: i64) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        secure(app)
    )
}

/// The session token in the request's cookies, if any.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= MAX_TOKEN)
}

/// Refuses a request sent by a page of another origin: `Origin` present and neither this
/// request's host nor the origin of the public URL (behind a proxy that rewrites `Host`).
fn check_origin(headers: &HeaderMap, public_url: Option<&str>) -> Result<(), ApiError> {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    let public = public_url.and_then(|u| {
        let (scheme, rest) = u.split_once("://")?;
        Some((scheme, rest.split('/').next()?))
    });
    let is_public = public.is_some_and(|(scheme, host)| origin == format!("{scheme}://{host}"));
    if is_public || (host.is_some() && origin_host == host) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "a session cookie is only accepted from the console's own origin".into(),
        ))
    }
}

/// The claims of the request's session cookie, when it has one and it passes the checks:
/// a valid token, the request's own origin, and for a state-changing method the CSRF token.
/// `Ok(None)`: no cookie (the caller answers as it did before cookies existed).
pub(super) fn from_cookie(parts: &Parts, app: &App) -> Result<Option<Claims>, ApiError> {
    let Some(token) = session_token(&parts.headers) else {
        return Ok(None);
    };
    let claims = app.verify_jwt(token)?;
    check_origin(&parts.headers, app.cfg.public_url.as_deref())?;
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let want = csrf_token(app, token);
        let same: bool = subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), want.as_bytes()).into();
        if !same {
            return Err(ApiError::Forbidden(
                "missing or wrong X-CSRF-Token for a request signed in by the session cookie"
                    .into(),
            ));
        }
    }
    Ok(Some(claims))
}

/// `POST /v1/auth/session`: sets the cookie for a session token (from signup, login or the
/// OAuth callback). A JSON body only, from the server's own origin, so no other site can
/// sign a browser into an account of its choosing.
async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateSession>,
) -> Res<Response> {
    check_origin(&headers, app.cfg.public_url.as_deref())?;
    let token = req.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(ApiError::Unauthorized("invalid or expired token".into()));
    }
    let claims = app.verify_jwt(token)?;
    let max_age = (claims.exp - chrono::Utc::now().timestamp()).clamp(0, JWT_TTL_SECS);
    let body = info(&app, token, claims);
    Ok((
        StatusCode::CREATED,
        [
            (SET_COOKIE, cookie(&app, token, max_age)),
            (CACHE_CONTROL, "no-store".to_string()),
        ],
        Json(body),
    )
        .into_response())
}

/// `GET /v1/auth/session`.
async fn current(State(app): State<Arc<App>>, headers: HeaderMap) -> Res<Response> {
    let token =
        session_token(&headers).ok_or_else(|| ApiError::Unauthorized("not signed in".into()))?;
    let claims = app.verify_jwt(token)?;
    Ok((
        [(CACHE_CONTROL, "no-store")],
        Json(info(&app, token, claims)),
    )
        .into_response())
}

/// `DELETE /v1/auth/session`: clears the cookie (signing out needs no CSRF token: the worst
/// another site could do with it is sign the user out).
async fn remove(State(app): State<Arc<App>>) -> Response {
    (StatusCode::NO_CONTENT, [(SET_COOKIE, cookie(&app, "", 0))]).into_response()
}

#[derive(Serialize)]
struct Providers {
    providers: Vec<&'static str>,
}

/// `GET /v1/auth/providers`: the configured OAuth providers (unauthenticated).
async fn providers(State(app): State<Arc<App>>) -> Json<Providers> {
    let mut providers = Vec::new();
    if app.oauth.provider("github").is_some() {
        providers.push("github");
    }
    Json(Providers { providers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn finds_the_session_cookie_among_others() {
        let h = headers(&[("cookie", "a=1; wrenn_sid=tok.en.x; b=2")]);
        assert_eq!(session_token(&h), Some("tok.en.x"));
        assert_eq!(session_token(&headers(&[("cookie", "wrenn_sid=")])), None);
        assert_eq!(
            session_token(&headers(&[("cookie", "x_wrenn_sid=1")])),
            None
        );
    }

    #[test]
    fn origin_must_be_the_servers_own() {
        let same = headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
        ]);
        assert!(check_origin(&same, None).is_ok());
        assert!(check_origin(&headers(&[("host", "localhost:8080")]), None).is_ok());
        let other = headers(&[("host", "localhost:8080"), ("origin", "http://evil.test")]);
        assert!(check_origin(&other, None).is_err());
        assert!(check_origin(&other, Some("https://wrenn.example/api")).is_err());
        // Behind a proxy that rewrites Host, the public URL's origin is the console's.
        let proxied = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://wrenn.example"),
        ]);
        assert!(check_origin(&proxied, Some("https://wrenn.example/api")).is_ok());
        assert!(check_origin(&proxied, Some("http://wrenn.example")).is_err());
    }
}
