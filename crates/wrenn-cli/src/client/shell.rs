//! `wrenn sandbox shell`: an interactive terminal in a running sandbox over the PTY WebSocket
//! (`/v1/capsules/{id}/pty`, framed as `wrenn_types::pty`). On a terminal, ours is put in raw
//! mode (every key, Ctrl-C and Ctrl-D included, goes to the guest) and restored on the way
//! out, and window resizes follow (SIGWINCH → `resize`). Without a terminal, stdin is passed
//! through as it is and its end sends Ctrl-D. The remote exit code becomes ours.

use super::api::{api_failure, Failure};
use super::Ctx;
use futures_util::{SinkExt, StreamExt};
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use wrenn_types::pty::{PtyClientMessage, PtyServerMessage};

pub const LONG_ABOUT: &str = "\
An interactive terminal in a running sandbox (a shell on a real pseudo-terminal).

Full-screen programs (vim, top), job control, Ctrl-C and Ctrl-D work as on a local terminal:
every key goes to the sandbox. The window size follows yours. `exit` (or Ctrl-D at the
prompt) ends the session, and its exit code becomes this command's. When stdin is not a
terminal, it is sent as typed input and its end sends Ctrl-D.";

/// The shell started in the sandbox.
const SHELL: &str = "/bin/bash";
const FALLBACK_SHELL: &str = "/bin/sh";

/// Restores the terminal's settings when dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Our window's columns and rows, if stdout or stdin is a terminal.
fn window_size() -> Option<(u16, u16)> {
    for fd in [nix::libc::STDOUT_FILENO, nix::libc::STDIN_FILENO] {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` to a valid pointer.
        let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

fn pty_url(base: &str, id: &str) -> String {
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws_base}/v1/capsules/{}/pty", super::api::segment(id))
}

fn control(m: &PtyClientMessage) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

pub async fn run(ctx: &Ctx, id: &str) -> Result<i32, Failure> {
    let interactive = std::io::stdin().is_terminal();
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let mut envs = std::collections::BTreeMap::new();
    if let Ok(term) = std::env::var("TERM") {
        if !term.is_empty() && term.len() < 64 {
            envs.insert("TERM".to_string(), term);
        }
    }
    let start = |cmd: &str| PtyClientMessage::Start {
        cmd: cmd.into(),
        args: vec![],
        cols,
        rows,
        envs: envs.clone(),
        cwd: None,
        user: None,
    };
    // A sandbox without bash gets sh.
    let (tx, rx) = match open(ctx, id, &start(SHELL)).await? {
        Ok(ws) => ws,
        Err(data) if data.contains(SHELL) => open(ctx, id, &start(FALLBACK_SHELL))
            .await?
            .map_err(Failure::local)?,
        Err(data) => return Err(Failure::local(data)),
    };
    session(ctx, tx, rx, interactive).await
}

/// Opens a terminal with `start`: the socket once `started` came, or the terminal's error.
async fn open(
    ctx: &Ctx,
    id: &str,
    start: &PtyClientMessage,
) -> Result<Result<(WsTx, WsRx), String>, Failure> {
    let url = pty_url(ctx.api.base(), id);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Failure::local(format!("bad terminal URL {url}: {e}")))?;
    let key = ctx
        .api
        .api_key()?
        .parse()
        .map_err(|_| Failure::local("the API key is not a valid header value"))?;
    req.headers_mut().insert("x-api-key", key);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| connect_failure(ctx, e))?;
    let (mut tx, mut rx) = ws.split();
    tx.send(control(start)).await.map_err(|e| broken(ctx, e))?;
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                Ok(PtyServerMessage::Started { .. }) => return Ok(Ok((tx, rx))),
                Ok(PtyServerMessage::Error { data, .. }) => return Ok(Err(data)),
                _ => {}
            },
            Some(Ok(Message::Close(_))) | None => {
                return Err(Failure::local("the terminal closed before it started"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(broken(ctx, e)),
        }
    }
}

type WsTx = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type WsRx = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Keystrokes in, output out, until the terminal's `exit`.
async fn session(ctx: &Ctx, mut tx: WsTx, mut rx: WsRx, interactive: bool) -> Result<i32, Failure> {
    let _raw = if interactive { RawMode::enter() } else { None };
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| Failure::local(format!("cannot watch window resizes: {e}")))?;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            k = keys.recv(), if stdin_open => {
                let data = match k {
                    Some(d) => d,
                    None => {
                        stdin_open = false;
                        // End of input: Ctrl-D, as a terminal would send.
                        vec![0x04]
                    }
                };
                tx.send(Message::Binary(data.into())).await.map_err(|e| broken(ctx, e))?;
            }
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let m = control(&PtyClientMessage::Resize { cols, rows });
                    tx.send(m).await.map_err(|e| broken(ctx, e))?;
                }
            }
            _ = tokio::signal::ctrl_c(), if !interactive => {
                tx.send(Message::Binary(vec![0x03].into())).await.map_err(|e| broken(ctx, e))?;
            }
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&b);
                    let _ = o.flush();
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                    Ok(PtyServerMessage::Exit { exit_code }) => {
                        let _ = tx.send(Message::Close(None)).await;
                        return Ok(exit_code);
                    }
                    Ok(PtyServerMessage::Error { data, fatal: true }) => {
                        return Err(Failure::local(data));
                    }
                    Ok(PtyServerMessage::Ping) => {
                        let _ = tx.send(control(&PtyClientMessage::Pong)).await;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Failure::local("the terminal closed before its shell exited"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(broken(ctx, e)),
            },
        }
    }
}

/// An HTTP answer before the upgrade carries the API's error body (404, 409, 401).
fn connect_failure(ctx: &Ctx, e: tungstenite::Error) -> Failure {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            api_failure(status, resp.body().as_deref().unwrap_or_default())
        }
        other => broken(ctx, other),
    }
}

fn broken(ctx: &Ctx, e: tungstenite::Error) -> Failure {
    Failure::Connect {
        url: ctx.api.base().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_urls() {
        assert_eq!(
            pty_url("http://127.0.0.1:8080", "sb-1"),
            "ws://127.0.0.1:8080/v1/capsules/sb-1/pty"
        );
        assert_eq!(
            pty_url("https://w.example", "a b"),
            "wss://w.example/v1/capsules/a%20b/pty"
        );
    }
}
