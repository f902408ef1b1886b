//! The HTTP side of the client: one [`Api`] per invocation holding the base URL and the
//! credentials, request helpers that turn every failure (connection, error body, odd answer)
//! into a [`Failure`] that prints as one line. It knows the public API's auth schemes and
//! error body, nothing of commands or output.

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::time::Duration;
use wrenn_types::ErrorBody;

/// Why a client command failed; printed as `error: <display>`.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The API answered with its error body (or an error status without one).
    #[error("{message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    /// A local problem: missing credentials, bad arguments, files, unexpected answers.
    #[error("{0}")]
    Local(String),
}

impl Failure {
    pub fn local(msg: impl Into<String>) -> Self {
        Failure::Local(msg.into())
    }
}

/// Which credential a request carries.
#[derive(Clone, Copy)]
pub enum Auth {
    /// None (signup, login).
    Anonymous,
    /// `Authorization: Bearer <session token>` (API keys).
    Session,
    /// `X-API-Key` (sandboxes, files, snapshots).
    Key,
}

/// The public API at one base URL.
pub struct Api {
    base: String,
    http: reqwest::Client,
    api_key: Option<String>,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str, api_key: Option<String>, token: Option<String>) -> Result<Api, Failure> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::local(format!(
                "base URL must start with http:// or https://, got {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("wrenn-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::local(format!("HTTP client: {e}")))?;
        Ok(Api {
            base,
            http,
            api_key,
            token,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn api_key(&self) -> Result<&str, Failure> {
        self.api_key.as_deref().ok_or_else(|| {
            Failure::local(
                "no API key: pass --api-key, set WRENN_API_KEY or run `wrenn keys create --save`",
            )
        })
    }

    fn token(&self) -> Result<&str, Failure> {
        self.token.as_deref().ok_or_else(|| {
            Failure::local("not logged in: run `wrenn login` or `wrenn signup` first")
        })
    }

    /// A request to `path` (starting with `/`) with the given credential.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
    ) -> Result<RequestBuilder, Failure> {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        Ok(match auth {
            Auth::Anonymous => rb,
            Auth::Session => rb.bearer_auth(self.token()?),
            Auth::Key => rb.header("x-api-key", self.api_key()?),
        })
    }

    /// Sends a request; an error status becomes [`Failure::Api`].
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, Failure> {
        let resp = rb.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(api_failure(status, text.as_bytes()))
    }

    /// Sends a request and decodes the JSON answer, also returned as a generic value so
    /// `--json` can print every field the server sent.
    pub async fn json<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
    ) -> Result<(T, serde_json::Value), Failure> {
        let resp = self.send(rb).await?;
        let text = resp.text().await.map_err(|e| self.transport(e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Failure::local(format!("server answered invalid JSON: {e}")))?;
        let typed = serde_json::from_value(value.clone())
            .map_err(|e| Failure::local(format!("unexpected answer from the server: {e}")))?;
        Ok((typed, value))
    }

    /// Maps a transport error to a one-line [`Failure::Connect`] naming the deepest cause.
    pub fn transport(&self, e: reqwest::Error) -> Failure {
        let mut reason = e.to_string();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        if e.is_connect() {
            reason.push_str(" (is the server running? see --base-url / WRENN_BASE_URL)");
        }
        Failure::Connect {
            url: self.base.clone(),
            reason,
        }
    }
}

/// Decodes an error answer: the API's `{"error":{"code","message"}}` body, or the status and
/// the start of whatever else came back.
pub fn api_failure(status: u16, body: &[u8]) -> Failure {
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        return Failure::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let first = text.lines().next().unwrap_or("").trim();
    let mut message = format!("the server answered HTTP {status}");
    if !first.is_empty() {
        let cut: String = first.chars().take(200).collect();
        message.push_str(": ");
        message.push_str(&cut);
    }
    Failure::Api {
        status,
        code: format!("http_{status}"),
        message,
    }
}

/// Percent-encodes one path segment (IDs and names come from the user).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_prints_message_and_code() {
        let f = api_failure(
            404,
            br#"{"error":{"code":"not_found","message":"sandbox x not found"}}"#,
        );
        assert_eq!(f.to_string(), "sandbox x not found (not_found)");
        let f = api_failure(502, b"<html>Bad Gateway</html>\nmore");
        assert_eq!(
            f.to_string(),
            "the server answered HTTP 502: <html>Bad Gateway</html> (http_502)"
        );
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("sb-1_a.b"), "sb-1_a.b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
