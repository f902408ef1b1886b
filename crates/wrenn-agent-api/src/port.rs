//! Connections to a port of a sandbox's guest ([`paths::OPEN_PORT`]), the hop under the control
//! plane's port proxy. The route is an HTTP/1.1 upgrade to the protocol [`PORT_UPGRADE`]: the
//! agent connects to the port first (so a port with nothing listening is an ordinary error
//! answer, `port_unreachable`), then answers `101` and copies bytes both ways until either side
//! closes. What runs over the connection (HTTP, WebSocket, anything) is the client's business;
//! the copy holds a fixed buffer per direction.

use crate::paths;
use crate::router::Operations;
use crate::{AgentApiError, AgentResult, HostAgent};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use wrenn_types::agent::AgentErrorCode;

/// The `Upgrade` protocol of [`paths::OPEN_PORT`]: raw bytes to and from the guest's port.
pub const PORT_UPGRADE: &str = "wrenn-port";

/// A byte stream both ways.
pub trait PortIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PortIo for T {}

/// An open connection to a port of a sandbox's guest; dropping it closes the connection.
pub type PortStream = Box<dyn PortIo>;

/// The port number of a request, 1..=65535.
pub fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

pub(crate) fn routes() -> Router<Arc<dyn HostAgent>> {
    Router::new().operation(paths::OPEN_PORT, open)
}

fn bad_request(message: impl Into<String>) -> AgentApiError {
    AgentApiError::new(AgentErrorCode::BadRequest, message)
}

async fn open(
    State(a): State<Arc<dyn HostAgent>>,
    Path((id, port)): Path<(String, String)>,
    mut req: Request,
) -> AgentResult<Response> {
    let port = parse_port(&port).ok_or_else(|| bad_request("port must be 1..=65535"))?;
    let asks_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PORT_UPGRADE));
    let Some(on_upgrade) = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| asks_upgrade)
    else {
        return Err(bad_request(format!(
            "expected an HTTP/1.1 upgrade to {PORT_UPGRADE}"
        )));
    };
    let mut guest = a.open_port(&id, port).await?;
    tokio::spawn(async move {
        // No upgrade means the client went away between the answer and the switch.
        if let Ok(upgraded) = on_upgrade.await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(PORT_UPGRADE));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn ports_are_one_to_65535_in_plain_digits() {
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["", "0", "65536", "-1", "+80", "8o", "000080", "99999999999"] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
    }
}
