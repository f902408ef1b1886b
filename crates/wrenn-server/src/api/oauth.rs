//! The two OAuth routes of the public API: `GET /v1/auth/oauth/{provider}` (302 to the
//! provider with a fresh signed state cookie) and `GET /v1/auth/oauth/{provider}/callback`
//! (302 to the frontend with a session token or an `error` code). An unknown or
//! unconfigured provider is a 404 error body. The decisions (state, code exchange, account
//! upsert) are [`App::oauth_start`] and [`App::oauth_finish`]; this file only reads the
//! request and shapes the redirect.

use crate::app::App;
use crate::auth::oauth::state::{clear_cookie, find_cookie, set_cookie};
use crate::auth::oauth::Callback;
use crate::error::ApiError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, LOCATION, REFERRER_POLICY, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

/// The query of the provider's redirect back to the callback.
#[derive(Deserialize)]
pub(crate) struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

fn provider_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn not_configured(name: &str) -> Response {
    ApiError::OAuthNotConfigured(name.chars().take(64).collect()).into_response()
}

/// A 302 that is never cached and leaks no referrer.
fn redirect(location: &str, cookie: &str) -> Response {
    (
        StatusCode::FOUND,
        [
            (LOCATION, location),
            (SET_COOKIE, cookie),
            (CACHE_CONTROL, "no-store"),
            (REFERRER_POLICY, "no-referrer"),
        ],
    )
        .into_response()
}

/// `GET /v1/auth/oauth/{provider}`.
pub(crate) async fn start(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match provider_name(path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let Some(started) = app.oauth_start(&name) else {
        return not_configured(&name);
    };
    let cookie = set_cookie(
        &app.oauth.cookie_path(started.provider),
        &started.cookie_value,
        app.oauth.secure_cookies(),
    );
    redirect(&started.location, &cookie)
}

/// `GET /v1/auth/oauth/{provider}/callback`.
pub(crate) async fn callback(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<CallbackParams>, QueryRejection>,
) -> Response {
    let name = match provider_name(path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    if app.oauth.provider(&name).is_none() {
        return not_configured(&name);
    }
    let params = query.ok().map(|q| q.0);
    let params = params.as_ref();
    let cookies = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let returned = Callback {
        code: params.and_then(|p| p.code.as_deref()),
        state: params.and_then(|p| p.state.as_deref()),
        error: params.and_then(|p| p.error.as_deref()),
        cookie: find_cookie(cookies),
    };
    let (location, name) = match app.oauth_finish(&name, returned).await {
        Ok((auth, name)) => (
            app.oauth.frontend_url(
                name,
                &[
                    ("token", &auth.token),
                    ("user_id", &auth.user_id),
                    ("team_id", &auth.team_id),
                    ("email", &auth.email),
                ],
            ),
            name,
        ),
        Err((e, name)) => (app.oauth.frontend_url(name, &[("error", e.code())]), name),
    };
    redirect(
        &location,
        &clear_cookie(&app.oauth.cookie_path(name), app.oauth.secure_cookies()),
    )
}
