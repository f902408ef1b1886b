//! Streamed exec (`GET /exec/stream`): one WebSocket session runs one command and forwards its
//! output as it is read, following the message shapes of [`wrenn_types::stream`].
//!
//! The session owns its process: a `stop` from the client or a lost client kills the whole
//! process group. Text is decoded per stream with [`ChunkDecoder`], so no UTF-8 character is
//! split between messages. Process creation lives in [`crate::process`].

use crate::exec::DRAIN_AFTER_EXIT;
use crate::process::{self, Spec, Started};
use crate::users::UserDb;
use crate::utf8::ChunkDecoder;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout};
use tokio::time::Instant;
use wrenn_types::stream::{ClientMessage, ServerMessage};

/// How long a client may wait before sending its `start` message.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 32 * 1024;
/// WebSocket close code for a normal end of session.
const CLOSE_NORMAL: u16 = 1000;

/// The socket broke while sending; the session must end (and kill what it started).
struct Gone;

/// Longest a send may wait for the reader (the agent) before the session counts as gone and
/// its process group is killed: a backstop behind the control plane's stall limit (at most
/// 60 s), for a peer whose connection ended without this side hearing of it.
const SEND_STALL: Duration = Duration::from_secs(90);

async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> Result<(), Gone> {
    let text = serde_json::to_string(msg).map_err(|_| Gone)?;
    match tokio::time::timeout(SEND_STALL, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Gone),
    }
}

async fn close(mut socket: WebSocket) {
    let frame = CloseFrame {
        code: CLOSE_NORMAL,
        reason: "".into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Sends an `error` message and closes the socket.
async fn fail(mut socket: WebSocket, data: String) {
    tracing::info!(error = %data, "exec stream refused");
    let _ = send(&mut socket, &ServerMessage::Error { data }).await;
    close(socket).await;
}

/// Waits for the client's `start` message; `Err` carries the reason to report, `Ok(None)`
/// means the client left.
async fn read_start(socket: &mut WebSocket) -> Result<Option<Spec>, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => return Err("no start message received".into()),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Ok(None),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => return Err("expected a JSON text message".into()),
            _ => continue, // ping / pong
        };
        return match serde_json::from_str::<ClientMessage>(text.as_str()) {
            Ok(ClientMessage::Start {
                cmd,
                args,
                env,
                cwd,
                user,
            }) => Ok(Some(Spec {
                cmd,
                args,
                env,
                cwd,
                user,
            })),
            Ok(ClientMessage::Stop) => Err("stop received before start".into()),
            Err(e) => Err(format!("invalid message: {e}")),
        };
    }
}

/// Reads the next chunk from an optional pipe; an absent pipe never becomes ready.
pub(crate) async fn read_opt<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Runs one streamed exec session to its end.
pub async fn session(mut socket: WebSocket, users: UserDb) {
    let spec = match read_start(&mut socket).await {
        Ok(Some(spec)) => spec,
        Ok(None) => return,
        Err(reason) => return fail(socket, reason).await,
    };
    let mut started = match process::spawn(&users, &spec) {
        Ok(s) => s,
        Err(e) => return fail(socket, e.to_string()).await,
    };
    tracing::info!(cmd = %spec.cmd, pid = started.pid, "exec stream started");
    match pump(&mut socket, &mut started).await {
        Ok(code) => {
            tracing::info!(cmd = %spec.cmd, exit_code = code, "exec stream ended");
            if send(&mut socket, &ServerMessage::Exit { exit_code: code })
                .await
                .is_ok()
            {
                close(socket).await;
            }
        }
        Err(Gone) => {
            tracing::info!(cmd = %spec.cmd, "exec stream client left; process group killed");
        }
    }
}

/// Forwards output until the process has exited and its pipes are drained; returns the exit
/// code. On `Err(Gone)` the process group has been killed and reaped.
async fn pump(socket: &mut WebSocket, started: &mut Started) -> Result<i32, Gone> {
    let mut stdout: Option<ChildStdout> = started.child.stdout.take();
    let mut stderr: Option<ChildStderr> = started.child.stderr.take();
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let mut out_dec = ChunkDecoder::default();
    let mut err_dec = ChunkDecoder::default();
    let mut exit: Option<i32> = None;
    let mut drain_until = Instant::now();

    let result = async {
        send(socket, &ServerMessage::Start { pid: started.pid }).await?;
        loop {
            if exit.is_some() && stdout.is_none() && stderr.is_none() {
                break;
            }
            let event = tokio::select! {
                r = read_opt(&mut stdout, &mut out_buf) => match r {
                    Ok(n) if n > 0 => Some(ServerMessage::Stdout { data: out_dec.push(&out_buf[..n]) }),
                    _ => {
                        stdout = None;
                        Some(ServerMessage::Stdout { data: out_dec.finish() })
                    }
                },
                r = read_opt(&mut stderr, &mut err_buf) => match r {
                    Ok(n) if n > 0 => Some(ServerMessage::Stderr { data: err_dec.push(&err_buf[..n]) }),
                    _ => {
                        stderr = None;
                        Some(ServerMessage::Stderr { data: err_dec.finish() })
                    }
                },
                status = started.child.wait(), if exit.is_none() => {
                    exit = Some(match status {
                        Ok(s) => process::exit_code(s),
                        Err(_) => -1,
                    });
                    drain_until = Instant::now() + DRAIN_AFTER_EXIT;
                    None
                },
                () = tokio::time::sleep_until(drain_until), if exit.is_some() => break,
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        match serde_json::from_str::<ClientMessage>(t.as_str()) {
                            Ok(ClientMessage::Stop) => {
                                if exit.is_none() {
                                    started.kill_group();
                                }
                                None
                            }
                            Ok(ClientMessage::Start { .. }) => Some(ServerMessage::Error {
                                data: "a process is already running on this connection".into(),
                            }),
                            Err(e) => Some(ServerMessage::Error {
                                data: format!("invalid message: {e}"),
                            }),
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Gone),
                    Some(Ok(_)) => None,
                },
            };
            match event {
                Some(ServerMessage::Stdout { data } | ServerMessage::Stderr { data })
                    if data.is_empty() => {}
                Some(m) => send(socket, &m).await?,
                None => {}
            }
        }
        Ok(exit.unwrap_or(-1))
    }
    .await;

    if result.is_err() && exit.is_none() {
        // The client is gone: nobody will read the output or stop the process.
        started.kill_group();
        let _ = started.child.wait().await;
    }
    result
}
