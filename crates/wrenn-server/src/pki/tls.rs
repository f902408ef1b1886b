//! The rustls configurations of both ends of a server ↔ agent connection (TLS 1.3, ring) and
//! the agent's TLS listener:
//!
//! - [`client_config`]: a control plane's, trusting only the CA and presenting its
//!   control-plane certificate;
//! - [`agent_server_config`]: an agent's, presenting its own certificate and requiring a
//!   client certificate from the CA that carries [`super::CONTROL_PLANE_ROLE`] (an agent's
//!   certificate, or one from another CA, is refused in the handshake);
//! - [`serve_tls`]: serves an axum router over TLS only (HTTP/1.1 with upgrades, for the
//!   exec WebSockets and the port upgrade); a plain-HTTP client gets its connection closed.

use super::checked::Checked;
use super::{PkiError, CONTROL_PLANE_ROLE};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Time a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections an agent serves at once (further ones wait to be accepted).
const MAX_CONNECTIONS: usize = 4096;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(tls_err)?;
    if certs.is_empty() {
        return Err(PkiError::Cert("no PEM certificate".into()));
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(tls_err)
}

pub(crate) fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).map_err(tls_err)?;
    }
    Ok(Arc::new(roots))
}

/// A control plane's client configuration: trusts only the CA of `ca_pem` (the agent's
/// certificate must name the host the URL names) and presents `cert_pem`/`key_pem`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, PkiError> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(tls_err)
}

/// An agent's server configuration: presents `cert_pem`/`key_pem` and requires a client
/// certificate from the CA of `ca_pem` with the control-plane role.
pub fn agent_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, PkiError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(tls_err)?;
    // Only a control plane may call an agent.
    let verifier = Arc::new(Checked::new(inner, |cert| {
        super::uri_sans(cert)
            .iter()
            .any(|u| u == CONTROL_PLANE_ROLE)
    }));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Checks that `cert_pem` (an agent's certificate) chains to the CA of `ca_pem` and is valid
/// for the host `host` as a server, as a control plane will check it.
pub fn verify_agent_cert(ca_pem: &str, cert_pem: &str, host: &str) -> Result<(), PkiError> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(tls_err)?;
    let chain = certs(cert_pem)?;
    let name = ServerName::try_from(host.to_string()).map_err(tls_err)?;
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map_err(tls_err)?;
    Ok(())
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves. Each connection gets
/// [`HANDSHAKE_TIMEOUT`] to finish its handshake; one that fails (plain HTTP, no or a wrong
/// client certificate) is closed without an HTTP answer. At most [`MAX_CONNECTIONS`] at once.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = &mut shutdown => return Ok(()),
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "agent connection: {e}");
            }
        });
    }
}

/// `router` (whose requests need `Authorization: Bearer <token>`) behind a TLS listener that
/// already required the control plane's certificate: every request gets that header, so the
/// client presents no token (mutual TLS is the authentication).
pub fn authenticated_by_tls(router: axum::Router, token: &str) -> axum::Router {
    let value: axum::http::HeaderValue = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static("Bearer -"));
    router.layer(axum::middleware::map_request(
        move |mut req: axum::extract::Request| {
            let value = value.clone();
            async move {
                req.headers_mut()
                    .insert(axum::http::header::AUTHORIZATION, value);
                req
            }
        },
    ))
}
