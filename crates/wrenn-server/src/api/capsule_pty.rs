//! `GET /v1/capsules/{id}/pty`: an interactive terminal in a capsule over WebSocket, framed as
//! the SDK frames it (`wrenn_types::pty`: JSON control text, raw binary keystrokes and
//! output), relayed through the capsule's agent to envd unchanged. 404 and 409 come before the
//! upgrade as plain answers, and a session holds one of the capsule's and team's concurrent
//! streams (429 beyond). While open, the terminal keeps its capsule active; once the
//! capsule stops running (paused, destroyed) the session ends with a fatal `error`, and the
//! client connects again by the terminal's tag after a resume. Errors from the host are
//! stripped of its details.

use super::extract::Team;
use super::{sandbox_id, PathArg, Res};
use crate::app::App;
use crate::error::ApiError;
use crate::store::SandboxRecord;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use wrenn_agent_api::{PtyFrame, PtySession, MAX_PTY_MESSAGE};
use wrenn_types::pty::PtyServerMessage;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/capsules/{id}/pty", get(pty))
}

async fn pty(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Res<Response> {
    let id = sandbox_id(id)?;
    let sb = app.running(&team, &id).await?;
    let ws = ws.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // A terminal session counts among the capsule's and team's concurrent streams.
    let slot = app.exec_slot(&sb)?;
    let agent = app.hosts.agent(&sb.host_id)?;
    let session = agent.open_pty(&sb.id).await?;
    tracing::info!(sandbox = %sb.id, "terminal session opened");
    Ok(ws
        .max_message_size(MAX_PTY_MESSAGE)
        .max_frame_size(MAX_PTY_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            relay(socket, session, app, sb).await
        }))
}

/// A control message from the host, with an error's words stripped of host details.
fn for_tenant(frame: PtyFrame) -> PtyFrame {
    match frame {
        PtyFrame::Control(text) => match serde_json::from_str::<PtyServerMessage>(&text) {
            Ok(PtyServerMessage::Error { data, fatal }) => PtyFrame::Control(
                PtyServerMessage::error(crate::redact::for_tenant(&data), fatal).to_text(),
            ),
            Ok(m) => PtyFrame::Control(m.to_text()),
            Err(_) => PtyFrame::Control(
                PtyServerMessage::error("unreadable message from the capsule", false).to_text(),
            ),
        },
        data => data,
    }
}

async fn relay(socket: WebSocket, session: PtySession, app: Arc<App>, sb: SandboxRecord) {
    let PtySession {
        to_guest,
        mut from_guest,
    } = session;
    // The guest's frames pass through `forward` so the session can be ended when the capsule
    // stops running (a paused guest's connection would otherwise hang without an end).
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stall = app.cfg.exec_limits.stream_stall;
    let relay = wrenn_agent_api::relay_pty(
        socket,
        PtySession {
            to_guest,
            from_guest: rx,
        },
        for_tenant,
        stall,
    );
    let (app2, sb2) = (app.clone(), sb.clone());
    let forward = async move {
        let (app, sb) = (app2, sb2);
        let mut check = tokio::time::interval(app.activity_period(&sb));
        check.tick().await;
        loop {
            tokio::select! {
                frame = from_guest.recv() => match frame {
                    Some(f) => {
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = check.tick() => match app.still_running(&sb).await {
                    Ok(_) => app.stream_activity(&sb).await,
                    Err(e) => {
                        let data = format!("{e}; connect again by tag once it runs");
                        let m = PtyServerMessage::error(data, true).to_text();
                        let _ = tx.send(PtyFrame::Control(m)).await;
                        return;
                    }
                },
                () = tx.closed() => return,
            }
        }
    };
    // `forward` drops its sender when it returns: the relay sends what is queued, then closes.
    tokio::join!(relay, forward);
    app.stream_activity(&sb).await;
    tracing::info!(sandbox = %sb.id, "terminal session closed");
}
