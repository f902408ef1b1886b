//! `wrenn sandbox shell`: a line-oriented session over the WebSocket exec stream
//! (`/v1/sandboxes/{id}/exec/stream`). The stream protocol carries no stdin, so this is not
//! a terminal: each line runs as its own `sh -c LINE` in the tracked working directory, its
//! output printed live as it arrives. It owns the stream client; it knows nothing of the
//! other commands.

use super::api::{api_failure, Failure};
use super::sandbox::{exit_code, path};
use super::Ctx;
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, IsTerminal, Write};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use wrenn_types::stream::{ClientMessage, ServerMessage};

pub const LONG_ABOUT: &str = "\
A line-by-line shell session in a running sandbox.

This is not a terminal: the exec stream has no way to send input to a running process.
Each line you type runs as its own `sh -c LINE` (so pipes, globs and variables work within
a line), with output shown live as it arrives. `cd DIR` lines are tracked: the next lines
run in that directory. Variables, `export` and other shell state do not carry over between
lines. Full-screen and interactive programs (vim, top, python without arguments) will not
work. A non-zero exit code is shown after the output. Ctrl-C stops the running command;
`exit` or Ctrl-D ends the session, with the exit code of the last line.";

/// Where the output of one streamed command goes.
enum Sink {
    /// Straight to our stdout/stderr, as it arrives.
    Live,
    /// Collected (for `cd` resolution).
    Capture(Vec<u8>, Vec<u8>),
}

pub async fn run(ctx: &Ctx, id: &str) -> Result<i32, Failure> {
    let interactive = std::io::stdin().is_terminal();
    // Check the sandbox exists and is running before printing a prompt.
    let mut probe = Sink::Capture(Vec::new(), Vec::new());
    stream_command(ctx, id, vec!["-c".into(), "true".into()], None, &mut probe).await?;
    if interactive {
        eprintln!(
            "Connected to {id}. Each line runs as `sh -c LINE`; `cd` is remembered. \
             Ctrl-D or `exit` leaves (see --help)."
        );
    }

    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let mut cwd: Option<String> = None;
    let mut last = 0;
    loop {
        if interactive {
            eprint!("{}:{}$ ", short(id), cwd.as_deref().unwrap_or("~"));
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.recv().await else {
            if interactive {
                eprintln!();
            }
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "exit" || line == "logout" {
            break;
        }
        if is_cd(line) {
            let mut sink = Sink::Capture(Vec::new(), Vec::new());
            let args = vec!["-c".into(), format!("{line} && pwd")];
            let code = stream_command(ctx, id, args, cwd.clone(), &mut sink).await?;
            if let Sink::Capture(stdout, stderr) = sink {
                let _ = std::io::stderr().write_all(&stderr);
                let dir = String::from_utf8_lossy(&stdout);
                match dir.lines().last() {
                    Some(d) if code == 0 && d.starts_with('/') => cwd = Some(d.to_string()),
                    _ => eprintln!("[exit {code}]"),
                }
            }
            last = exit_code(code);
            continue;
        }
        let args = vec!["-c".into(), line.to_string()];
        let code = match stream_command(ctx, id, args, cwd.clone(), &mut Sink::Live).await {
            Ok(code) => code,
            // A broken session ends the shell; an error of one command does not.
            Err(e @ Failure::Connect { .. }) => return Err(e),
            Err(e) => {
                eprintln!("error: {e}");
                last = 1;
                continue;
            }
        };
        if code < 0 {
            eprintln!("[killed]");
        } else if code != 0 {
            eprintln!("[exit {code}]");
        }
        last = exit_code(code);
    }
    Ok(last)
}

/// `cd`, `cd DIR`: one directory change and nothing else on the line.
fn is_cd(line: &str) -> bool {
    let rest = match line.strip_prefix("cd") {
        Some(r) => r,
        None => return false,
    };
    (rest.is_empty() || rest.starts_with(char::is_whitespace))
        && !rest.contains([';', '&', '|', '`', '\n', '>', '<'])
}

fn short(id: &str) -> &str {
    let end = id.char_indices().nth(12).map_or(id.len(), |(i, _)| i);
    &id[..end]
}

/// The `ws://` or `wss://` URL of a sandbox's exec stream.
fn stream_url(base: &str, id: &str) -> String {
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws_base}{}", path(id, "/exec/stream"))
}

/// Runs `sh ARGS` over one exec stream, sending its output to `sink`; Ctrl-C sends `stop`.
/// Returns the command's exit code as the stream reported it (-1: killed).
async fn stream_command(
    ctx: &Ctx,
    id: &str,
    args: Vec<String>,
    cwd: Option<String>,
    sink: &mut Sink,
) -> Result<i32, Failure> {
    let url = stream_url(ctx.api.base(), id);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Failure::local(format!("bad stream URL {url}: {e}")))?;
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
    let start = ClientMessage::Start {
        cmd: "sh".into(),
        args,
        env: Default::default(),
        cwd,
        user: None,
    };
    let text = serde_json::to_string(&start).map_err(|e| Failure::local(e.to_string()))?;
    tx.send(Message::Text(text.into()))
        .await
        .map_err(|e| broken(ctx, e))?;
    let mut stopped = false;
    loop {
        let frame = tokio::select! {
            f = rx.next() => f,
            _ = tokio::signal::ctrl_c(), if !stopped => {
                stopped = true;
                if let Ok(t) = serde_json::to_string(&ClientMessage::Stop) {
                    let _ = tx.send(Message::Text(t.into())).await;
                }
                continue;
            }
        };
        let msg = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                return Err(Failure::local(
                    "the exec stream closed before the command exited",
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(broken(ctx, e)),
        };
        let event: ServerMessage = serde_json::from_str(msg.as_str())
            .map_err(|e| Failure::local(format!("unexpected stream message: {e}")))?;
        match event {
            // `dropped` belongs to attaching to a background process, not to an exec.
            ServerMessage::Start { .. } | ServerMessage::Dropped { .. } => {}
            ServerMessage::Stdout { data } => match sink {
                Sink::Live => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(data.as_bytes());
                    let _ = o.flush();
                }
                Sink::Capture(out, _) => out.extend_from_slice(data.as_bytes()),
            },
            ServerMessage::Stderr { data } => match sink {
                Sink::Live => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(data.as_bytes());
                    let _ = e.flush();
                }
                Sink::Capture(_, err) => err.extend_from_slice(data.as_bytes()),
            },
            ServerMessage::Exit { exit_code: code } => {
                let _ = tx.send(Message::Close(None)).await;
                return Ok(code);
            }
            ServerMessage::Error { data } => return Err(Failure::local(data)),
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
    fn cd_lines() {
        assert!(is_cd("cd"));
        assert!(is_cd("cd /tmp"));
        assert!(is_cd("cd  'my dir'"));
        assert!(!is_cd("cdx"));
        assert!(!is_cd("cd /tmp && ls"));
        assert!(!is_cd("cd /tmp; ls"));
        assert!(!is_cd("echo cd"));
    }

    #[test]
    fn stream_urls() {
        assert_eq!(
            stream_url("http://127.0.0.1:8080", "sb-1"),
            "ws://127.0.0.1:8080/v1/sandboxes/sb-1/exec/stream"
        );
        assert_eq!(
            stream_url("https://w.example", "a b"),
            "wss://w.example/v1/sandboxes/a%20b/exec/stream"
        );
    }
}
