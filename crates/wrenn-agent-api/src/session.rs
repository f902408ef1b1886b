//! [`ws_session`]: the client end of a streamed exec over a WebSocket, as an [`ExecSession`].
//! The control plane uses it towards an agent, an agent towards envd.

use crate::ExecSession;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wrenn_types::stream::{ClientMessage, ServerMessage};

/// Capacity of each direction's channel.
const CHANNEL: usize = 64;

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
