//! The host side of envd's API: a typed HTTP and WebSocket client for the daemon inside a
//! guest (routes in [`wrenn_types::envd`]).
//!
//! It owns the wire details only (URLs, status checks, error bodies, timeouts). Which guest to
//! talk to, and when, belongs to the sandbox manager; this module never starts or stops VMs.

mod procs;
mod pty;
mod ready;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt, TryStreamExt};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wrenn_types::envd::{
    max_exec_answer_bytes, EnvdErrorCode, ExecRequest, ExecResponse, Health, SetClock,
    DEFAULT_MAX_OUTPUT_BYTES,
};
use wrenn_types::fs::{
    FileEntry, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, RemoveRequest,
};
use wrenn_types::stream::{ClientMessage, ServerMessage};
use wrenn_types::ErrorBody;

/// Connect timeout of ordinary requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra time a buffered exec gets on top of its own timeout before the client gives up.
const EXEC_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);
/// How much of a non-JSON error answer is kept for the error message.
const MAX_ERROR_TEXT: usize = 4096;

/// A WebSocket connected to envd's `/exec/stream`.
pub type ExecStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What went wrong talking to envd.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// envd could not be reached, or the connection broke or timed out mid-request.
    #[error("envd at {url} unreachable: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// envd answered with its error body.
    #[error("envd answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: EnvdErrorCode,
        message: String,
    },
    /// envd answered something that does not follow its API.
    #[error("unexpected answer from envd: {0}")]
    Protocol(String),
    /// The WebSocket to `/exec/stream` could not be opened or broke.
    #[error("envd exec stream: {0}")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// envd did not answer `/health` within the time allowed.
    #[error("envd not ready after {waited:?}: {last_error}")]
    NotReady {
        waited: Duration,
        last_error: String,
    },
    /// The base URL given to [`EnvdClient::from_base_url`] is not an `http://` URL, or the
    /// HTTP client could not be built.
    #[error("invalid envd client setup: {0}")]
    Setup(String),
}

impl EnvdError {
    /// envd's error code, when envd itself reported the error.
    pub fn code(&self) -> Option<EnvdErrorCode> {
        match self {
            EnvdError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// HTTP status of an error envd reported.
    pub fn status(&self) -> Option<u16> {
        match self {
            EnvdError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one envd instance. Cheap to clone (connections are pooled and shared).
#[derive(Debug, Clone)]
pub struct EnvdClient {
    http: reqwest::Client,
    probe: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: String,
}

impl EnvdClient {
    /// A client of the envd listening at `addr` (the guest's address as the host reaches it).
    pub fn new(addr: SocketAddr) -> Result<Self, EnvdError> {
        Self::from_base_url(&format!("http://{addr}"))
    }

    /// A client of the envd at `base` (`http://host:port`).
    pub fn from_base_url(base: &str) -> Result<Self, EnvdError> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(EnvdError::Setup(format!("{base} is not an http:// URL")));
        }
        let build = |connect: Duration| {
            reqwest::Client::builder()
                .connect_timeout(connect)
                .no_proxy()
                .tcp_nodelay(true)
                .build()
                .map_err(|e| EnvdError::Setup(e.to_string()))
        };
        Ok(Self {
            http: build(CONNECT_TIMEOUT)?,
            probe: build(ready::PROBE_TIMEOUT)?,
            base: base.to_string(),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn connect_err(&self, source: reqwest::Error) -> EnvdError {
        if source.is_decode() {
            EnvdError::Protocol(source.to_string())
        } else {
            EnvdError::Connect {
                url: self.base.clone(),
                source,
            }
        }
    }

    /// Sends a request and returns the response if its status is a success; an error body
    /// becomes [`EnvdError::Api`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, EnvdError> {
        let resp = req.send().await.map_err(|e| self.connect_err(e))?;
        check(resp).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, EnvdError> {
        let resp = self.send(self.http.get(self.url("/health"))).await?;
        resp.json().await.map_err(|e| self.connect_err(e))
    }

    /// `POST /exec`: runs a command to completion. Waits as long as the request's own
    /// timeout allows (plus a margin), or without limit if it has none.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResponse, EnvdError> {
        let mut builder = self.http.post(self.url("/exec")).json(req);
        if let Some(secs) = req.timeout_sec.filter(|s| *s > 0) {
            builder =
                builder.timeout(Duration::from_secs(secs).saturating_add(EXEC_TIMEOUT_MARGIN));
        }
        let resp = self.send(builder).await?;
        // Read up to what output capped at the request's cap can take, never more: a guest
        // cannot make the agent hold an answer of any size.
        let cap = req.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        let limit = max_exec_answer_bytes(cap);
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(EnvdError::Protocol(format!(
                "exec answer over {limit} bytes"
            )));
        }
        let mut body = Vec::new();
        let mut chunks = resp.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.connect_err(e))?;
            if body.len() + chunk.len() > limit {
                return Err(EnvdError::Protocol(format!(
                    "exec answer over {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| EnvdError::Protocol(format!("unreadable exec answer: {e}")))
    }

    /// `POST /clock`: sets the guest's wall clock to `now`.
    pub async fn set_clock(&self, now: SystemTime) -> Result<(), EnvdError> {
        let unix_ms = unix_ms(now)?;
        self.send(
            self.http
                .post(self.url("/clock"))
                .json(&SetClock { unix_ms }),
        )
        .await?;
        Ok(())
    }

    /// `PUT /files`: streams `body` into the guest file `path` (absolute), owned by root.
    /// The file is replaced atomically; a failed upload leaves any old file as it was.
    pub async fn write_file(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), EnvdError> {
        self.put_file(&[("path", path)], body.into()).await
    }

    /// Like [`Self::write_file`], but the file (and directories created for it) belong to
    /// the guest user `user`.
    pub async fn write_file_as(
        &self,
        path: &str,
        user: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), EnvdError> {
        self.put_file(&[("path", path), ("user", user)], body.into())
            .await
    }

    async fn put_file(&self, query: &[(&str, &str)], body: reqwest::Body) -> Result<(), EnvdError> {
        self.send(self.http.put(self.url("/files")).query(query).body(body))
            .await?;
        Ok(())
    }

    /// `POST /files/list`: the directory's entries, `req.depth` levels deep.
    pub async fn list_dir(&self, req: &ListDirRequest) -> Result<ListDirResponse, EnvdError> {
        let resp = self
            .send(self.http.post(self.url("/files/list")).json(req))
            .await?;
        resp.json().await.map_err(|e| self.connect_err(e))
    }

    /// `POST /files/mkdir`: creates the directory `path` with its parents.
    pub async fn make_dir(&self, path: &str) -> Result<FileEntry, EnvdError> {
        let req = MakeDirRequest { path: path.into() };
        let resp = self
            .send(self.http.post(self.url("/files/mkdir")).json(&req))
            .await?;
        let made: MakeDirResponse = resp.json().await.map_err(|e| self.connect_err(e))?;
        Ok(made.entry)
    }

    /// `POST /files/remove`: removes the file, link or directory tree at `path`.
    pub async fn remove_path(&self, path: &str) -> Result<(), EnvdError> {
        let req = RemoveRequest { path: path.into() };
        self.send(self.http.post(self.url("/files/remove")).json(&req))
            .await?;
        Ok(())
    }

    /// `GET /files`: the response for the guest file `path`, after its status was checked.
    /// Its body is the file's bytes (`Content-Length` is set); read it with
    /// [`reqwest::Response::bytes_stream`] to forward it without buffering.
    pub async fn read_file(&self, path: &str) -> Result<reqwest::Response, EnvdError> {
        self.send(self.http.get(self.url("/files")).query(&[("path", path)]))
            .await
    }

    /// [`Self::read_file`] as a stream of chunks.
    pub async fn read_file_stream(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, EnvdError>> + Send + 'static, EnvdError> {
        let resp = self.read_file(path).await?;
        let url = self.base.clone();
        Ok(resp
            .bytes_stream()
            .map_err(move |source| EnvdError::Connect {
                url: url.clone(),
                source,
            }))
    }

    /// Opens a WebSocket to `/exec/stream`. The caller sends the `start` message (see
    /// [`send_message`]) and reads [`ServerMessage`]s (see [`next_message`]); the same
    /// messages can be forwarded unchanged to and from the public API.
    pub async fn exec_stream(&self) -> Result<ExecStream, EnvdError> {
        let ws_url = format!("ws{}/exec/stream", &self.base["http".len()..]);
        let connect = tokio_tungstenite::connect_async_with_config(
            ws_url.as_str(),
            Some(wrenn_agent_api::ws_client_config()),
            false,
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => Err(EnvdError::WebSocket(Box::new(
                tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {ws_url} timed out"),
                )),
            ))),
            Ok(Err(e)) => Err(EnvdError::WebSocket(Box::new(e))),
            Ok(Ok((ws, _response))) => Ok(ws),
        }
    }
}

/// Turns a non-success response into [`EnvdError::Api`] (or `Protocol` if the body is not
/// envd's error body).
/// Milliseconds since the Unix epoch, as envd's clock request carries them.
fn unix_ms(now: SystemTime) -> Result<u64, EnvdError> {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| EnvdError::Protocol("time before the Unix epoch".into()))?
        .as_millis();
    u64::try_from(ms).map_err(|_| EnvdError::Protocol("time out of range".into()))
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, EnvdError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_TEXT {
            body.truncate(MAX_ERROR_TEXT);
            break;
        }
    }
    match serde_json::from_slice::<ErrorBody<EnvdErrorCode>>(&body) {
        Ok(e) => Err(EnvdError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        }),
        Err(_) => Err(EnvdError::Protocol(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ))),
    }
}

/// Sends one client message (`start` or `stop`) on an exec stream.
pub async fn send_message(ws: &mut ExecStream, msg: &ClientMessage) -> Result<(), EnvdError> {
    let text = serde_json::to_string(msg).map_err(|e| EnvdError::Protocol(e.to_string()))?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| EnvdError::WebSocket(Box::new(e)))
}

/// The next server message of an exec stream; `None` once envd has closed the stream.
pub async fn next_message(ws: &mut ExecStream) -> Result<Option<ServerMessage>, EnvdError> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(EnvdError::WebSocket(Box::new(e))),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map(Some)
                    .map_err(|e| EnvdError::Protocol(format!("bad exec stream message: {e}")))
            }
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(_))) => {
                return Err(EnvdError::Protocol(
                    "binary message on the exec stream".into(),
                ))
            }
            Some(Ok(_)) => {} // ping, pong, raw frames
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_must_be_http() {
        assert!(EnvdClient::from_base_url("ftp://x").is_err());
        assert!(EnvdClient::from_base_url("http://").is_err());
        let c = EnvdClient::from_base_url("http://10.0.0.2:49983/").expect("client");
        assert_eq!(c.base_url(), "http://10.0.0.2:49983");
        let c = EnvdClient::new(SocketAddr::from(([172, 16, 0, 2], 49983))).expect("client");
        assert_eq!(c.url("/health"), "http://172.16.0.2:49983/health");
    }

    #[test]
    fn api_errors_keep_code_and_status() {
        let e = EnvdError::Api {
            status: 404,
            code: EnvdErrorCode::NotFound,
            message: "no such file: /x".into(),
        };
        assert_eq!(e.code(), Some(EnvdErrorCode::NotFound));
        assert_eq!(e.status(), Some(404));
        assert_eq!(EnvdError::Protocol("x".into()).code(), None);
    }
}
