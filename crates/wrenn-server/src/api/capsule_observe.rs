//! What a team can observe: `GET /v1/capsules/stats`, `GET /v1/capsules/usage`,
//! `GET /v1/capsules/{id}/metrics` (each one [`App`] call, answered within the request
//! deadline) and `GET /v1/events/stream`, the team's lifecycle events as Server-Sent Events
//! (`event:` the event's name, `data:` its JSON, a `:keepalive` comment every
//! [`KEEP_ALIVE`]). The stream has no deadline; it ends when the client goes or when the
//! subscriber falls behind (see `app::events`). All routes take the team's `X-API-Key`.

use super::extract::{QueryArgs, Team};
use super::{PathArg, Res};
use crate::app::{App, Frame};
use crate::error::ApiError;
use axum::extract::State;
use axum::handler::Handler;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use wrenn_types::ids::SandboxId;

/// Time between two keep-alive comments of the events stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest query value read (the ranges and dates are short).
const MAX_QUERY_VALUE: usize = 32;

/// The observability routes, merged into the public router.
pub(super) fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    let quick = axum::middleware::from_fn_with_state(app.clone(), super::deadline);
    Router::new()
        .route("/v1/capsules/stats", get(stats.layer(quick.clone())))
        .route("/v1/capsules/usage", get(usage.layer(quick.clone())))
        .route("/v1/capsules/{id}/metrics", get(metrics.layer(quick)))
        .route("/v1/events/stream", get(events))
}

#[derive(Debug, Default, Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

/// A query value cut to a length no valid one exceeds (the `App` refuses what is left).
fn short(v: Option<String>) -> Option<String> {
    v.map(|s| s.chars().take(MAX_QUERY_VALUE).collect())
}

async fn stats(
    State(app): State<Arc<App>>,
    Team(team): Team,
    QueryArgs(q): QueryArgs<RangeQuery>,
) -> Res<impl IntoResponse> {
    Ok(Json(app.stats(&team, short(q.range).as_deref()).await?))
}

async fn usage(
    State(app): State<Arc<App>>,
    Team(team): Team,
    QueryArgs(q): QueryArgs<UsageQuery>,
) -> Res<impl IntoResponse> {
    let (from, to) = (short(q.from), short(q.to));
    Ok(Json(
        app.usage(&team, from.as_deref(), to.as_deref()).await?,
    ))
}

async fn metrics(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    QueryArgs(q): QueryArgs<RangeQuery>,
) -> Res<impl IntoResponse> {
    // An id that cannot be a capsule's is echoed at most 64 characters long.
    let id = SandboxId::new(id)
        .map_err(|e| ApiError::SandboxNotFound(e.0.chars().take(64).collect()))?;
    let range = short(q.range);
    Ok(Json(
        app.capsule_metrics(&team, &id, range.as_deref()).await?,
    ))
}

async fn events(State(app): State<Arc<App>>, Team(team): Team) -> Res<impl IntoResponse> {
    let rx = app.subscribe_events(&team)?;
    Ok(Sse::new(frames(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keepalive")))
}

/// The subscriber's queue as SSE events; ends when the queue is closed (the subscriber was
/// dropped) and has been read out.
fn frames(rx: mpsc::Receiver<Arc<Frame>>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let f = rx.recv().await?;
        Some((Ok(Event::default().event(&f.event).data(&f.data)), rx))
    })
}
