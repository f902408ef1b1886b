//! The two ends of a streamed exec over WebSocket: [`ws_session`], the client end as an
//! [`ExecSession`] (the control plane towards an agent, an agent towards envd), and
//! [`relay_exec`], which serves an `ExecSession` to a client's socket (the agent API's route,
//! and, through [`relay_exec_mapped`], the public API's).
//!
//! Every hop is bounded: messages and frames over [`MAX_WS_MESSAGE`] are refused (servers set
//! it on their upgrade, clients through [`ws_client_config`]), the channels between hops hold
//! [`CHANNEL`] messages each, so a slow reader holds the writer back all the way to the guest
//! process's pipe, and a client that reads nothing for the stall time is disconnected.

use crate::ExecSession;
use axum::extract::ws::{self, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wrenn_types::stream::{ClientMessage, ServerMessage};

/// Capacity of each direction's channel.
const CHANNEL: usize = 64;
/// Largest WebSocket message or frame a hop accepts from its peer. An event carries at most
/// envd's 32 KiB read of output (a few times that once escaped as JSON); a client message is
/// a `start` with its arguments, held to the public API's JSON body limit.
pub const MAX_WS_MESSAGE: usize = 1024 * 1024;
/// How long [`relay_exec`] waits for a client to take one event before disconnecting it.
pub const DEFAULT_SEND_STALL: Duration = Duration::from_secs(30);

/// The configuration of every exec-stream WebSocket client (control plane → agent, agent →
/// envd): messages and frames at most [`MAX_WS_MESSAGE`], and a write buffer that makes a
/// send wait rather than grow.
pub fn ws_client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        .max_write_buffer_size(4 * MAX_WS_MESSAGE)
}

/// Runs a task that sends the session's client messages on `ws` and passes the events read
/// from it back. Dropping `to_agent` closes the socket (the peer then kills the process); a
/// broken socket or an unreadable event becomes an `error` event naming `peer`.
pub fn ws_session<S>(ws: WebSocketStream<S>, peer: &'static str) -> ExecSession
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (to_agent, mut client_rx) = mpsc::channel::<ClientMessage>(CHANNEL);
    let (events_tx, from_agent) = mpsc::channel::<ServerMessage>(CHANNEL);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let lost = |detail: String| ServerMessage::Error {
            data: format!("{peer} connection lost{detail}"),
        };
        loop {
            tokio::select! {
                msg = client_rx.recv() => match msg {
                    Some(m) => {
                        let Ok(text) = serde_json::to_string(&m) else { break };
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            let _ = events_tx.send(lost(String::new())).await;
                            break;
                        }
                    }
                    None => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                },
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        let event = serde_json::from_str::<ServerMessage>(t.as_str())
                            .unwrap_or_else(|e| ServerMessage::Error {
                                data: format!("unreadable event from {peer}: {e}"),
                            });
                        if events_tx.send(event).await.is_err() {
                            let _ = sink.send(Message::Close(None)).await;
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = events_tx.send(lost(format!(": {e}"))).await;
                        break;
                    }
                },
            }
        }
    });
    ExecSession {
        to_agent,
        from_agent,
    }
}

/// Moves a client's messages into `session` and its events out, until the `exit` event (then
/// the socket is closed), or either side ends. A message that is not a client message is
/// answered with an `error` event.
/// A client that takes no event for [`DEFAULT_SEND_STALL`] is disconnected.
pub async fn relay_exec(socket: WebSocket, session: ExecSession) {
    relay_exec_mapped(socket, session, |m| m, DEFAULT_SEND_STALL).await
}

/// [`relay_exec`], with each event of `session` passed through `map` before it is sent (the
/// public API strips host details from error events this way), and a client that takes no
/// event for `stall` disconnected (its session dropped, which ends the process) instead of
/// events piling up for it.
pub async fn relay_exec_mapped(
    socket: WebSocket,
    mut session: ExecSession,
    mut map: impl FnMut(ServerMessage) -> ServerMessage,
    stall: Duration,
) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(ws::Message::Text(t))) => {
                    match serde_json::from_str::<ClientMessage>(t.as_str()) {
                        Ok(m) => {
                            if session.to_agent.send(m).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let m = ServerMessage::Error { data: format!("invalid message: {e}") };
                            if sink.send(event_frame(&m)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(Ok(ws::Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            event = session.from_agent.recv() => match event {
                Some(m) => {
                    let exited = matches!(m, ServerMessage::Exit { .. });
                    let m = map(m);
                    match tokio::time::timeout(stall, sink.send(event_frame(&m))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        // Stalled: disconnected rather than buffered for.
                        Err(_) => break,
                    }
                    if exited {
                        let _ = sink.send(ws::Message::Close(None)).await;
                        break;
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

fn event_frame(m: &ServerMessage) -> ws::Message {
    let text = serde_json::to_string(m)
        .unwrap_or_else(|_| r#"{"type":"error","data":"unencodable event"}"#.into());
    ws::Message::Text(text.into())
}
