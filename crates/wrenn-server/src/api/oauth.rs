//! The two OAuth routes of the public API: `GET /v1/auth/oauth/{provider}` (302 to the
//! provider with a fresh signed state cookie) and `GET /v1/auth/oauth/{provider}/callback`
//! (state check, code exchange, account upsert, 302 to the frontend with a session token or
//! an `error` code). An unknown or unconfigured provider is a 404 error body. The decisions
//! live in the parent module; this file only reads the request and shapes the redirect.

use super::state::{clear_cookie, find_cookie, set_cookie, MAX_STATE_LEN};
use super::{sign_in, CallbackError};
use crate::app::App;
use crate::error::ApiError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, LOCATION, REFERRER_POLICY, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use wrenn_types::api::AuthResponse;

/// Longest authorization code accepted (GitHub's are 20 characters).
const MAX_CODE_LEN: usize = 1024;
/// Longest provider `error` value looked at.
const MAX_ERROR_LEN: usize = 256;

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
    let Some(provider) = app.oauth.provider(&name) else {
        return not_configured(&name);
    };
    let name = provider.name();
    let issued = app
        .oauth
        .signer()
        .issue(name, chrono::Utc::now().timestamp());
    let location = provider.authorization_url(&issued.state, &app.oauth.callback_url(name));
    let cookie = set_cookie(
        &app.oauth.cookie_path(name),
        &issued.cookie_value,
        app.oauth.secure_cookies(),
    );
    redirect(&location, &cookie)
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
    let (location, name) = match finish(&app, &name, &headers, query.ok().map(|q| q.0)).await {
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

type Finished = Result<(AuthResponse, &'static str), (CallbackError, &'static str)>;

async fn finish(
    app: &App,
    name: &str,
    headers: &HeaderMap,
    params: Option<CallbackParams>,
) -> Finished {
    let Some(provider) = app.oauth.provider(name) else {
        // Checked by the caller; an internal error if the registry changed underneath.
        return Err((CallbackError::Internal, "unknown"));
    };
    let name = provider.name();
    let fail = |e: CallbackError| (e, name);

    // 1. The state must be the one this browser was given, signed by us and fresh.
    let params = params.ok_or(fail(CallbackError::InvalidState))?;
    let state = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= MAX_STATE_LEN)
        .ok_or(fail(CallbackError::InvalidState))?;
    let cookies = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let cookie = find_cookie(cookies).ok_or(fail(CallbackError::InvalidState))?;
    let now = chrono::Utc::now().timestamp();
    if !app.oauth.signer().verify(name, cookie, state, now) {
        tracing::info!(provider = name, "OAuth callback with an invalid state");
        return Err(fail(CallbackError::InvalidState));
    }

    // 2. The provider's verdict.
    if let Some(error) = params.error.as_deref() {
        if error == "access_denied" {
            return Err(fail(CallbackError::AccessDenied));
        }
        let shown: String = error.chars().take(MAX_ERROR_LEN).collect();
        tracing::warn!(provider = name, error = %shown, "OAuth provider returned an error");
        return Err(fail(CallbackError::ExchangeFailed));
    }
    let code = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(fail(CallbackError::MissingCode))?;
    if code.len() > MAX_CODE_LEN {
        return Err(fail(CallbackError::ExchangeFailed));
    }

    // 3. Code → profile → account → session.
    let profile = provider
        .exchange(code, &app.oauth.callback_url(name))
        .await
        .map_err(|e| {
            tracing::warn!(provider = name, error = %e, "OAuth code exchange failed");
            fail(CallbackError::ExchangeFailed)
        })?;
    let user = sign_in(app.store.as_ref(), name, &profile)
        .await
        .map_err(fail)?;
    let auth = app
        .auth_response(&user.id, &user.team_id, &user.email)
        .map_err(|e| {
            tracing::error!(provider = name, error = %e, "OAuth sign-in: token signing failed");
            fail(CallbackError::Internal)
        })?;
    tracing::info!(provider = name, user_id = %user.id, "OAuth sign-in");
    Ok((auth, name))
}
