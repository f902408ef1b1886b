//! Interactive terminals across hops ([`paths::OPEN_PTY`]): a [`PtySession`] is a pair of
//! channels of [`PtyFrame`]s (JSON control text and raw terminal bytes, `wrenn_types::pty`),
//! passed through unchanged. [`ws_pty_session`] is the client end of a hop (the control plane
//! towards an agent, an agent towards envd), [`relay_pty`] serves a session to a client's
//! socket (the agent API's route here and the public API's). Channels hold [`CHANNEL`] frames,
//! messages are at most [`MAX_PTY_MESSAGE`], and a client that takes nothing for the stall
//! time is disconnected (the terminal runs on; it can connect again by tag).

use crate::paths;
use crate::router::Operations;
use crate::{AgentResult, HostAgent};
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wrenn_types::pty::{PtyServerMessage, MAX_PTY_CONTROL, MAX_PTY_INPUT};

/// Frames each direction's channel holds.
const CHANNEL: usize = 64;
/// Largest message a hop accepts from a terminal client.
pub const MAX_PTY_MESSAGE: usize = if MAX_PTY_CONTROL > MAX_PTY_INPUT {
    MAX_PTY_CONTROL
} else {
    MAX_PTY_INPUT
};

/// One message of a terminal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyFrame {
    /// A JSON control message.
    Control(String),
    /// Keystrokes (to the guest) or output (from it).
    Data(Bytes),
}

/// One terminal session: frames to the guest and from it. Dropping `to_guest` leaves the
/// terminal (it keeps running in the guest).
pub struct PtySession {
    pub to_guest: mpsc::Sender<PtyFrame>,
    pub from_guest: mpsc::Receiver<PtyFrame>,
}

/// Runs a task that sends the session's frames on `ws` and passes the frames read from it
/// back. A broken socket becomes a fatal `error` naming `peer`.
pub fn ws_pty_session<S>(ws: WebSocketStream<S>, peer: &'static str) -> PtySession
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (to_guest, mut rx) = mpsc::channel::<PtyFrame>(CHANNEL);
    let (tx, from_guest) = mpsc::channel::<PtyFrame>(CHANNEL);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let lost = || {
            let m = PtyServerMessage::error(format!("{peer} connection lost"), true);
            PtyFrame::Control(m.to_text())
        };
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(f) => {
                        let m = match f {
                            PtyFrame::Control(t) => Message::Text(t.into()),
                            PtyFrame::Data(b) => Message::Binary(b),
                        };
                        if sink.send(m).await.is_err() {
                            let _ = tx.send(lost()).await;
                            break;
                        }
                    }
                    None => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                },
                msg = stream.next() => {
                    let f = match msg {
                        Some(Ok(Message::Text(t))) => PtyFrame::Control(t.as_str().to_string()),
                        Some(Ok(Message::Binary(b))) => PtyFrame::Data(b),
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => continue,
                        Some(Err(_)) => {
                            let _ = tx.send(lost()).await;
                            break;
                        }
                    };
                    if tx.send(f).await.is_err() {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                }
            }
        }
    });
    PtySession {
        to_guest,
        from_guest,
    }
}

/// Moves a client's frames into `session` and the guest's out, each guest frame passed through
/// `map` (the public API strips host details from errors this way), until either side ends.
pub async fn relay_pty(
    socket: WebSocket,
    mut session: PtySession,
    mut map: impl FnMut(PtyFrame) -> PtyFrame,
    stall: Duration,
) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let f = match msg {
                    Some(Ok(ws::Message::Text(t))) => PtyFrame::Control(t.as_str().to_string()),
                    Some(Ok(ws::Message::Binary(b))) => PtyFrame::Data(b),
                    Some(Ok(ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                if session.to_guest.send(f).await.is_err() {
                    break;
                }
            }
            frame = session.from_guest.recv() => match frame {
                Some(f) => {
                    let m = match map(f) {
                        PtyFrame::Control(t) => ws::Message::Text(t.into()),
                        PtyFrame::Data(b) => ws::Message::Binary(b),
                    };
                    match tokio::time::timeout(stall, sink.send(m)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                None => {
                    let _ = sink.send(ws::Message::Close(None)).await;
                    break;
                }
            },
        }
    }
}

/// The terminal route, to be merged before the router's auth layer.
pub(crate) fn routes() -> Router<Arc<dyn HostAgent>> {
    Router::new().operation(paths::OPEN_PTY, open)
}

/// The session is opened before the upgrade, so a missing or stopped sandbox is an ordinary
/// error answer.
async fn open(
    State(a): State<Arc<dyn HostAgent>>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> AgentResult<Response> {
    let session = a.open_pty(&id).await?;
    Ok(ws
        .max_message_size(MAX_PTY_MESSAGE)
        .max_frame_size(MAX_PTY_MESSAGE)
        .on_upgrade(move |socket| {
            relay_pty(socket, session, |f| f, crate::session::DEFAULT_SEND_STALL)
        }))
}
