//! Request extractors of the public API: JSON bodies and query strings whose rejections
//! become [`ApiError`]s, and the two credentials (Bearer JWT for accounts and keys,
//! `X-API-Key` for everything else; without either, the console's session cookie, see
//! `session`). Parsing only; no domain decisions.

use crate::app::App;
use crate::auth::Claims;
use crate::config::limits;
use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use wrenn_types::ids::TeamId;

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a body with content-type application/json".into(),
            ),
            JsonRejection::JsonDataError(e) => ApiError::InvalidJson(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(e.body_text()),
            JsonRejection::BytesRejection(e) => body_error(e.status().as_u16(), e.body_text()),
            other => ApiError::InvalidJson(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

fn body_error(status: u16, text: String) -> ApiError {
    if status == 413 {
        ApiError::too_large(limits::MAX_JSON_BODY as u64)
    } else {
        ApiError::BadRequest(text)
    }
}

/// A JSON body; rejections are API errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// A query string; rejections are API errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryArgs<T>(pub T);

/// A JSON body whose fields are all optional: an empty body means the defaults.
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_ascii_lowercase().contains("json"));
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e.status().as_u16(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if json_type == Some(false) {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with content-type application/json".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| ApiError::InvalidJson(format!("invalid JSON body: {e}")))
    }
}

/// A signed-in user (Bearer JWT).
pub struct User(pub Claims);

impl FromRequestParts<Arc<App>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            // The console's session cookie stands in for the header.
            return match super::session::from_cookie(parts, app)? {
                Some(claims) => Ok(User(claims)),
                None => Err(ApiError::Unauthorized(
                    "missing Authorization: Bearer token".into(),
                )),
            };
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer token".into()))?;
        Ok(User(app.verify_jwt(token.trim())?))
    }
}

/// A team authenticated by its `X-API-Key`.
pub struct Team(pub TeamId);

impl FromRequestParts<Arc<App>> for Team {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let Some(key) = key else {
            // The console's session cookie stands in for the key: the user's team.
            return match super::session::from_cookie(parts, app)? {
                // The session was signed by this control plane for a team it made: a team id
                // that breaks the naming rule is no team's.
                Some(claims) => TeamId::new(claims.team_id)
                    .map(Team)
                    .map_err(|_| ApiError::Unauthorized("invalid or expired token".into())),
                None => Err(ApiError::Unauthorized("missing X-API-Key header".into())),
            };
        };
        Ok(Team(app.verify_api_key(key.trim()).await?))
    }
}

/// The client's address: the socket peer, or, when the peer is a configured trusted proxy,
/// the last address of its `X-Forwarded-For`. `None` when the router is served without
/// connection info (then no per-address limit applies).
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl FromRequestParts<Arc<App>> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        use axum::extract::ConnectInfo;
        let peer = parts
            .extensions
            .get::<ConnectInfo<crate::listener::Peer>>()
            .map(|c| c.0 .0.ip())
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip())
            });
        let Some(peer) = peer else {
            return Ok(ClientAddr(None));
        };
        if !app.cfg.trusted_proxies.contains(&peer) {
            return Ok(ClientAddr(Some(peer)));
        }
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .next_back();
        Ok(ClientAddr(Some(forwarded.unwrap_or(peer))))
    }
}
