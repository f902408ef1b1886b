//! One WebSocket session on `/pty`: the first control message is `start` (a new terminal) or
//! `connect` (a running one, by tag, its kept output replayed); then binary messages are
//! keystrokes, `resize`/`kill`/`ping` are obeyed, output goes out as binary messages and the
//! end as `exit`. A client that leaves does not end the terminal (connect again by its tag);
//! `kill` does. Messages are those of [`wrenn_types::pty`]; the terminals are [`crate::pty`]'s.

use crate::pty::{PtyError, StartSpec, Term, Terminals};
use crate::users::UserDb;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::sync::Arc;
use std::time::Duration;
use wrenn_types::pty::{PtyClientMessage, PtyServerMessage, MAX_PTY_INPUT, MAX_PTY_TAG};

/// How long a client has to send its `start` or `connect`.
const FIRST_MESSAGE: Duration = Duration::from_secs(30);
const CLOSE_NORMAL: u16 = 1000;

struct Gone;

async fn send(socket: &mut WebSocket, msg: &PtyServerMessage) -> Result<(), Gone> {
    socket
        .send(Message::Text(msg.to_text().into()))
        .await
        .map_err(|_| Gone)
}

async fn close(socket: &mut WebSocket) {
    let frame = CloseFrame {
        code: CLOSE_NORMAL,
        reason: "".into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Runs one session to its end.
pub async fn session(mut socket: WebSocket, terms: Arc<Terminals>, users: UserDb) {
    let term = match open(&mut socket, &terms, &users).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            close(&mut socket).await;
            return;
        }
        Err(Gone) => return,
    };
    let started = PtyServerMessage::Started {
        pid: term.pid,
        tag: term.tag.clone(),
    };
    if send(&mut socket, &started).await.is_err() {
        return;
    }
    match follow(&mut socket, &term).await {
        Ok(code) => {
            tracing::debug!(tag = %term.tag, exit_code = code, "terminal client saw the end");
            terms.forget(&term);
            close(&mut socket).await;
        }
        Err(Gone) => tracing::debug!(tag = %term.tag, "terminal client left"),
    }
}

/// Reads the first control message and starts or finds the terminal; `None` after a fatal
/// error was sent.
async fn open(
    socket: &mut WebSocket,
    terms: &Terminals,
    users: &UserDb,
) -> Result<Option<Arc<Term>>, Gone> {
    let first = match tokio::time::timeout(FIRST_MESSAGE, socket.recv()).await {
        Err(_) => {
            let m = PtyServerMessage::error("expected a start or connect message", true);
            send(socket, &m).await?;
            return Ok(None);
        }
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return Err(Gone),
        Ok(Some(Ok(_))) => {
            let m = PtyServerMessage::error("the first message must be start or connect", true);
            send(socket, &m).await?;
            return Ok(None);
        }
    };
    let found = match serde_json::from_str::<PtyClientMessage>(first.as_str()) {
        Ok(PtyClientMessage::Start {
            cmd,
            args,
            cols,
            rows,
            envs,
            cwd,
            user,
        }) => terms.start(
            users,
            StartSpec {
                cmd,
                args,
                cols,
                rows,
                envs,
                cwd,
                user,
            },
        ),
        Ok(PtyClientMessage::Connect { tag }) if tag.len() <= MAX_PTY_TAG => terms.find(&tag),
        Ok(PtyClientMessage::Connect { .. }) => Err(PtyError::NotFound("(too long)".into())),
        Ok(_) => Err(PtyError::Invalid(
            "the first message must be start or connect".into(),
        )),
        Err(e) => Err(PtyError::Invalid(format!("invalid message: {e}"))),
    };
    match found {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            send(socket, &PtyServerMessage::error(e.to_string(), true)).await?;
            Ok(None)
        }
    }
}

/// Replays the kept output and follows the terminal until its end (`Ok` with the exit code,
/// sent) or the client leaves.
async fn follow(socket: &mut WebSocket, term: &Term) -> Result<i32, Gone> {
    let mut cursor = term.oldest();
    loop {
        let notified = term.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (chunk, exit) = term.read(cursor);
        cursor = chunk.next;
        if !chunk.data.is_empty() {
            socket
                .send(Message::Binary(chunk.data.into()))
                .await
                .map_err(|_| Gone)?;
        }
        if chunk.more {
            continue;
        }
        if let Some(exit_code) = exit {
            send(socket, &PtyServerMessage::Exit { exit_code }).await?;
            return Ok(exit_code);
        }
        tokio::select! {
            () = &mut notified => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if data.len() > MAX_PTY_INPUT {
                        let m = PtyServerMessage::error("keystroke message too large", false);
                        send(socket, &m).await?;
                    } else if !term.write(data).await {
                        // The writer is gone: the terminal is ending; its exit follows.
                    }
                }
                Some(Ok(Message::Text(t))) => control(socket, term, t.as_str()).await?,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Gone),
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn control(socket: &mut WebSocket, term: &Term, text: &str) -> Result<(), Gone> {
    let answer = match serde_json::from_str::<PtyClientMessage>(text) {
        Ok(PtyClientMessage::Resize { cols, rows }) => match term.resize(cols, rows) {
            Ok(()) => None,
            Err(e) => Some(PtyServerMessage::error(e.to_string(), false)),
        },
        Ok(PtyClientMessage::Kill) => {
            term.kill();
            None
        }
        Ok(PtyClientMessage::Ping) => Some(PtyServerMessage::Pong),
        Ok(PtyClientMessage::Pong) => None,
        Ok(PtyClientMessage::Start { .. } | PtyClientMessage::Connect { .. }) => Some(
            PtyServerMessage::error("this session already has a terminal", false),
        ),
        Err(e) => Some(PtyServerMessage::error(
            format!("invalid message: {e}"),
            false,
        )),
    };
    match answer {
        Some(m) => send(socket, &m).await,
        None => Ok(()),
    }
}

/// The `/pty` route (merged into [`crate::api`]'s router).
pub fn routes() -> axum::Router<Arc<crate::api::AppState>> {
    axum::Router::new().route("/pty", axum::routing::get(upgrade))
}

async fn upgrade(
    axum::extract::State(st): axum::extract::State<Arc<crate::api::AppState>>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<axum::response::Response, crate::api::EnvdApiError> {
    let ws = ws.map_err(|r| {
        crate::api::EnvdApiError::new(wrenn_types::envd::EnvdErrorCode::BadRequest, r.body_text())
    })?;
    let terms = st.terminals.clone();
    let users = st.users.clone();
    let max = wrenn_types::pty::MAX_PTY_CONTROL.max(MAX_PTY_INPUT);
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(socket, terms, users)))
}
