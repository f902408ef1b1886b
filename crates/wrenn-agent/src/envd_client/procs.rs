//! The background-process routes of envd's client (`/processes`): start, list, signal, and
//! attaching to one process's output over WebSocket. An attach refused by envd (no such
//! process) is read from the refused upgrade's answer into [`EnvdError::Api`], like any
//! other error answer.

use super::{EnvdClient, EnvdError, ExecStream, CONNECT_TIMEOUT, MAX_ERROR_TEXT};
use tokio_tungstenite::tungstenite;
use wrenn_types::envd::EnvdErrorCode;
use wrenn_types::process::{ProcessInfo, ProcessList, Signal, StartProcess};
use wrenn_types::ErrorBody;

impl EnvdClient {
    /// `POST /processes`: starts `req` in the background.
    pub async fn start_process(&self, req: &StartProcess) -> Result<ProcessInfo, EnvdError> {
        let resp = self
            .send(self.http.post(self.url("/processes")).json(req))
            .await?;
        resp.json().await.map_err(|e| self.connect_err(e))
    }

    /// `GET /processes`: running and recently finished background processes.
    pub async fn list_processes(&self) -> Result<Vec<ProcessInfo>, EnvdError> {
        let resp = self.send(self.http.get(self.url("/processes"))).await?;
        let list: ProcessList = resp.json().await.map_err(|e| self.connect_err(e))?;
        Ok(list.processes)
    }

    /// `DELETE /processes/{selector}`: sends `signal` to the process's group. `selector` is
    /// a pid or a tag (checked by the caller: it goes into the path as it is).
    pub async fn kill_process(&self, selector: &str, signal: Signal) -> Result<(), EnvdError> {
        let url = self.url(&format!("/processes/{selector}"));
        let req = self.http.delete(url).query(&[("signal", signal.as_str())]);
        self.send(req).await?;
        Ok(())
    }

    /// `GET /processes/{selector}/stream`: a WebSocket of the process's output events.
    pub async fn attach_process(&self, selector: &str) -> Result<ExecStream, EnvdError> {
        let ws_url = format!(
            "ws{}/processes/{selector}/stream",
            &self.base["http".len()..]
        );
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
            Ok(Err(tungstenite::Error::Http(resp))) => Err(refused(&resp)),
            Ok(Err(e)) => Err(EnvdError::WebSocket(Box::new(e))),
            Ok(Ok((ws, _response))) => Ok(ws),
        }
    }
}

/// The error body of a refused upgrade.
fn refused(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> EnvdError {
    let status = resp.status().as_u16();
    let body = resp.body().as_deref().unwrap_or_default();
    let body = &body[..body.len().min(MAX_ERROR_TEXT)];
    match serde_json::from_slice::<ErrorBody<EnvdErrorCode>>(body) {
        Ok(e) => EnvdError::Api {
            status,
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => EnvdError::Protocol(format!(
            "status {status}: {}",
            String::from_utf8_lossy(body)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &[u8]) -> tungstenite::http::Response<Option<Vec<u8>>> {
        tungstenite::http::Response::builder()
            .status(status)
            .body(Some(body.to_vec()))
            .unwrap()
    }

    #[test]
    fn a_refused_attach_is_envds_error_answer() {
        let body =
            br#"{"error":{"code":"process_not_found","message":"no background process web"}}"#;
        match refused(&answer(404, body)) {
            EnvdError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code), (404, EnvdErrorCode::ProcessNotFound));
                assert_eq!(message, "no background process web");
            }
            other => panic!("not an API error: {other}"),
        }
        assert!(matches!(
            refused(&answer(502, b"bad gateway")),
            EnvdError::Protocol(m) if m.contains("502")
        ));
    }
}
