//! The terminal route of envd's client (`/pty`): one WebSocket per terminal session, whose
//! frames the agent relays unchanged (`wrenn_agent_api::PtySession`).

use super::{EnvdClient, EnvdError, ExecStream, CONNECT_TIMEOUT};
use tokio_tungstenite::tungstenite;

impl EnvdClient {
    /// `GET /pty`: a WebSocket whose first message the caller sends (`start` or `connect`).
    pub async fn open_pty(&self) -> Result<ExecStream, EnvdError> {
        let ws_url = format!("ws{}/pty", &self.base["http".len()..]);
        let connect = tokio_tungstenite::connect_async_with_config(
            ws_url.as_str(),
            Some(wrenn_agent_api::ws_client_config()),
            false,
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => Err(EnvdError::WebSocket(Box::new(tungstenite::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {ws_url} timed out"),
                ),
            )))),
            Ok(Err(tungstenite::Error::Http(resp))) => Err(EnvdError::Protocol(format!(
                "terminal refused with status {}",
                resp.status().as_u16()
            ))),
            Ok(Err(e)) => Err(EnvdError::WebSocket(Box::new(e))),
            Ok(Ok((ws, _response))) => Ok(ws),
        }
    }
}
