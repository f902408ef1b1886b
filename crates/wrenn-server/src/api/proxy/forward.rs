//! One proxied exchange: a connection to the capsule's port through its agent, one HTTP/1.1
//! request over it and its answer, bodies streamed both ways by hyper (a bounded buffer per
//! direction, never a whole body), or, for an upgrade (WebSocket), the two upgraded
//! connections joined byte for byte. Hop-by-hop headers are dropped both ways (an upgrade
//! keeps its `Connection: upgrade` and `Upgrade`); the guest gets the client's `Host` and
//! `X-Forwarded-For`, `-Host`, `-Proto` (and `-Prefix` for the path form) of our own. A
//! redirect to a path of the guest (path form) or to the guest's own local address gets the
//! proxy's address; relative ones stay as they are. The connection holds one of the capsule's
//! proxy slots, marks the capsule active while open, and is cut once the capsule stops running.

use crate::app::{App, ExecSlot};
use crate::error::ApiError;
use crate::store::SandboxRecord;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use wrenn_agent_api::AgentApiError;
use wrenn_types::agent::AgentErrorCode;

/// How a request named the capsule's port.
pub(super) enum Form {
    /// `{port}-{id}.{domain}`: the request's `Host`.
    Host { host: String },
    /// `/v1/capsules/{id}/proxy/{port}`: the prefix, and the request's `Host`.
    Path {
        prefix: String,
        host: Option<String>,
    },
}

/// The capsule's port a request goes to, and the path (with query) the guest sees.
pub(super) struct Target {
    pub id: String,
    pub port: u16,
    pub path_and_query: String,
    pub form: Form,
}

/// Headers that belong to one connection, never passed on (RFC 9110 7.6.1), besides the
/// ones `Connection` names.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers describing the client, set by the proxy only.
const FORWARDED: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
];

fn connection_tokens(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in connection_tokens(h) {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The protocol a request or answer upgrades to (`Connection: upgrade` with `Upgrade`).
fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    connection_tokens(h)
        .iter()
        .any(|t| t == "upgrade")
        .then(|| h.get(header::UPGRADE).cloned())
        .flatten()
}

fn set_upgrade(h: &mut HeaderMap, protocol: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, protocol);
}

fn unanswered(target: &Target) -> ApiError {
    ApiError::PortUnreachable {
        id: target.id.clone(),
        port: target.port,
    }
}

/// The agent's refusal to connect, in the tenant's words.
fn open_error(e: AgentApiError, target: &Target) -> ApiError {
    match e.code() {
        Some(AgentErrorCode::PortUnreachable) => {
            tracing::info!(sandbox = %target.id, port = target.port, error = %e, "proxied port unreachable");
            unanswered(target)
        }
        _ => e.into(),
    }
}

/// The scheme clients use to reach this server: that of its public URL.
fn public_scheme(app: &App) -> &'static str {
    match &app.cfg.public_url {
        Some(u) if u.starts_with("https://") => "https",
        _ => "http",
    }
}

/// Runs `work` while the capsule runs: marks it active every activity period and stops
/// `work` once the capsule is paused, destroyed or busy with an operation.
fn while_running<F>(
    app: Arc<App>,
    sb: SandboxRecord,
    work: F,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    F: Future<Output = ()> + Send + 'static,
{
    Box::pin(async move {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(app.activity_period(&sb));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut work => break,
                _ = tick.tick() => {
                    if app.still_running(&sb).await.is_err() {
                        break;
                    }
                    app.stream_activity(&sb).await;
                }
            }
        }
        app.stream_activity(&sb).await;
    })
}

/// Sends `req` to the target port of `sb` and answers with what the guest answers.
pub(super) async fn forward(
    app: Arc<App>,
    sb: SandboxRecord,
    target: Target,
    req: Request,
    client: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let slot: Arc<ExecSlot> = Arc::new(app.proxy_slot(&sb)?);
    let agent = app.hosts.agent(&sb.host_id)?;
    let stream = agent
        .open_port(&sb.id, target.port)
        .await
        .map_err(|e| open_error(e, &target))?;
    app.stream_activity(&sb).await;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|_| unanswered(&target))?;
    {
        let (app, sb, slot) = (app.clone(), sb.clone(), slot.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let conn = async move {
                let _ = conn.with_upgrades().await;
            };
            while_running(app, sb, conn).await;
        });
    }

    let scheme = public_scheme(&app);
    let (mut parts, body) = req.into_parts();
    let client_upgrade = upgrade_protocol(&parts.headers).and_then(|p| {
        parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .map(|u| (p, u))
    });
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    for n in FORWARDED {
        headers.remove(n);
    }
    if let Some((protocol, _)) = &client_upgrade {
        set_upgrade(&mut headers, protocol.clone());
    }
    let external_host = match &target.form {
        Form::Host { host } => Some(host.clone()),
        Form::Path { host, .. } => host.clone(),
    };
    let forwarded = [
        ("x-forwarded-for", client.map(|a| a.to_string())),
        ("x-forwarded-host", external_host),
        ("x-forwarded-proto", Some(scheme.to_string())),
        (
            "x-forwarded-prefix",
            match &target.form {
                Form::Path { prefix, .. } => Some(prefix.clone()),
                Form::Host { .. } => None,
            },
        ),
    ];
    for (name, value) in forwarded {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, v);
        }
    }
    let uri: Uri = target
        .path_and_query
        .parse()
        .map_err(|_| ApiError::BadRequest("the path cannot be proxied".into()))?;
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;

    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|_| unanswered(&target))?;
    drop(sender);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some((_, client_up)), Some(protocol)) =
            (client_upgrade, upgrade_protocol(resp.headers()))
        else {
            // The guest switched protocols unasked: nothing the client can speak.
            return Err(unanswered(&target));
        };
        let guest_up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _slot = slot;
            let (Ok(c), Ok(g)) = tokio::join!(client_up, guest_up) else {
                return;
            };
            let (mut c, mut g) = (TokioIo::new(c), TokioIo::new(g));
            let copy = async move {
                let _ = tokio::io::copy_bidirectional(&mut c, &mut g).await;
            };
            while_running(app, sb, copy).await;
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        set_upgrade(&mut parts.headers, protocol);
        parts.extensions.insert(super::Proxied);
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let moved = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|loc| rewrite_location(loc, &target, scheme))
        .and_then(|loc| HeaderValue::from_str(&loc).ok());
    if let Some(loc) = moved {
        parts.headers.insert(header::LOCATION, loc);
    }
    parts.extensions.insert(super::Proxied);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A redirect's new `Location`, when it must change to stay behind the proxy: a path of the
/// guest's (path form only: the name form keeps paths as they are), or an absolute URL of the
/// guest's own local address and port, or (path form) of the request's own host.
pub(super) fn rewrite_location(loc: &str, target: &Target, scheme: &str) -> Option<String> {
    match &target.form {
        Form::Path { prefix, host } => {
            if loc.starts_with('/') && !loc.starts_with("//") {
                return Some(format!("{prefix}{loc}"));
            }
            let path = same_place(loc, target.port, host.as_deref())?;
            Some(format!("{prefix}{path}"))
        }
        Form::Host { host } => {
            let path = same_place(loc, target.port, None)?;
            Some(format!("{scheme}://{host}{path}"))
        }
    }
}

/// The path and query of an absolute URL that names the guest's own port on a local address
/// (`localhost`, `127.0.0.1`, `0.0.0.0`, `[::1]`), or the host `also`.
fn same_place(loc: &str, port: u16, also: Option<&str>) -> Option<String> {
    let uri: Uri = loc.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let path = || uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    if also.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_str())) {
        return Some(path());
    }
    let host = authority.host().to_ascii_lowercase();
    if !matches!(
        host.as_str(),
        "localhost" | "127.0.0.1" | "0.0.0.0" | "[::1]"
    ) {
        return None;
    }
    let default = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    (authority.port_u16().unwrap_or(default) == port).then(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(form: Form) -> Target {
        Target {
            id: "sb-1".into(),
            port: 8000,
            path_and_query: "/".into(),
            form,
        }
    }

    #[test]
    fn redirects_stay_behind_the_proxy() {
        let host = target(Form::Host {
            host: "8000-sb-1.example.com".into(),
        });
        assert_eq!(rewrite_location("/dir/", &host, "http"), None);
        assert_eq!(rewrite_location("dir/", &host, "http"), None);
        assert_eq!(
            rewrite_location("http://localhost:8000/a?b=1", &host, "https").as_deref(),
            Some("https://8000-sb-1.example.com/a?b=1")
        );
        assert_eq!(
            rewrite_location("http://127.0.0.1:9000/a", &host, "http"),
            None
        );
        assert_eq!(
            rewrite_location("https://example.org/a", &host, "http"),
            None
        );

        let path = target(Form::Path {
            prefix: "/v1/capsules/sb-1/proxy/8000".into(),
            host: Some("api.example.com:8080".into()),
        });
        assert_eq!(
            rewrite_location("/dir/", &path, "http").as_deref(),
            Some("/v1/capsules/sb-1/proxy/8000/dir/")
        );
        assert_eq!(rewrite_location("dir/", &path, "http"), None);
        assert_eq!(rewrite_location("//cdn.example.org/x", &path, "http"), None);
        assert_eq!(
            rewrite_location("http://0.0.0.0:8000/x", &path, "http").as_deref(),
            Some("/v1/capsules/sb-1/proxy/8000/x")
        );
        assert_eq!(
            rewrite_location("http://api.example.com:8080/dir/", &path, "http").as_deref(),
            Some("/v1/capsules/sb-1/proxy/8000/dir/")
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_upgrades_found() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(upgrade_protocol(&h), None);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));

        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(upgrade_protocol(&h), Some("websocket".parse().unwrap()));
    }
}
