//! Attaching to a background process (`GET /processes/{selector}/stream`): one WebSocket
//! session sends `start` with the pid, a `dropped` count if older output is gone, the output
//! kept in the process's ring, then live output, then `exit` (messages of
//! [`wrenn_types::stream`]).
//!
//! The session only reads: the process belongs to [`crate::procs`] and runs on when the
//! client leaves. Text is decoded per pipe with [`ChunkDecoder`]; a client that falls more
//! than the ring's size behind is told how much it missed and carries on from the oldest
//! output kept.

use crate::procs::{Pipe, Proc};
use crate::utf8::ChunkDecoder;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::sync::Arc;
use wrenn_types::stream::ServerMessage;

/// WebSocket close code for a normal end of session.
const CLOSE_NORMAL: u16 = 1000;

struct Gone;

async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> Result<(), Gone> {
    let text = serde_json::to_string(msg).map_err(|_| Gone)?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| Gone)
}

/// Runs one attach session to its end (the process's exit, or the client leaving).
pub async fn session(mut socket: WebSocket, proc: Arc<Proc>) {
    match follow(&mut socket, &proc).await {
        Ok(code) => {
            tracing::info!(
                pid = proc.pid,
                exit_code = code,
                "attached client saw the exit"
            );
            let frame = CloseFrame {
                code: CLOSE_NORMAL,
                reason: "".into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
        Err(Gone) => tracing::debug!(pid = proc.pid, "attached client left"),
    }
}

async fn follow(socket: &mut WebSocket, proc: &Proc) -> Result<i32, Gone> {
    send(socket, &ServerMessage::Start { pid: proc.pid }).await?;
    let mut cursor = 0u64;
    let mut out_dec = ChunkDecoder::default();
    let mut err_dec = ChunkDecoder::default();
    loop {
        let notified = proc.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (read, exit) = proc.read(cursor);
        cursor = read.next;
        if read.dropped > 0 {
            // What was held back belonged to output that is gone.
            out_dec = ChunkDecoder::default();
            err_dec = ChunkDecoder::default();
            let bytes = read.dropped;
            send(socket, &ServerMessage::Dropped { bytes }).await?;
        }
        for (pipe, data) in read.chunks {
            let msg = match pipe {
                Pipe::Stdout => ServerMessage::Stdout {
                    data: out_dec.push(&data),
                },
                Pipe::Stderr => ServerMessage::Stderr {
                    data: err_dec.push(&data),
                },
            };
            if !matches!(&msg, ServerMessage::Stdout { data } | ServerMessage::Stderr { data } if data.is_empty())
            {
                send(socket, &msg).await?;
            }
        }
        if read.more {
            continue;
        }
        if let Some(exit_code) = exit {
            for msg in [
                ServerMessage::Stdout {
                    data: out_dec.finish(),
                },
                ServerMessage::Stderr {
                    data: err_dec.finish(),
                },
            ] {
                if !matches!(&msg, ServerMessage::Stdout { data } | ServerMessage::Stderr { data } if data.is_empty())
                {
                    send(socket, &msg).await?;
                }
            }
            send(socket, &ServerMessage::Exit { exit_code }).await?;
            return Ok(exit_code);
        }
        tokio::select! {
            () = &mut notified => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Gone),
                // The session only reads; anything the client sends is ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}
