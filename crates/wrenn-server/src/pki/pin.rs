//! Per-host pinning of an agent's certificate: a joined host's row keeps the SHA-256 of the
//! certificate last issued to it, and the control plane accepts from that host only a
//! certificate that chains to the CA, names the host the URL names, **and** has that digest.
//! A rotation (`wrenn hosts rotate`, then `wrenn agent --join --rejoin`) records the new
//! digest, so the old certificate (and its key, wherever it went) is refused from then on,
//! although it is still within its validity and the CA keeps no revocation list.

use super::checked::Checked;
use super::PkiError;
use rustls::client::WebPkiServerVerifier;
use std::sync::Arc;

/// `base` (a control plane's client configuration) that trusts the CA of `ca_pem` and also
/// requires the server's certificate to have the lowercase hex SHA-256 `sha256`.
pub fn pinned(
    base: &rustls::ClientConfig,
    ca_pem: &str,
    sha256: &str,
) -> Result<rustls::ClientConfig, PkiError> {
    let roots = super::tls::roots(ca_pem)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, base.crypto_provider().clone())
        .build()
        .map_err(|e| PkiError::Cert(e.to_string()))?;
    let mut cfg = base.clone();
    let sha256 = sha256.to_ascii_lowercase();
    cfg.dangerous()
        .set_certificate_verifier(Arc::new(Checked::new(inner, move |cert| {
            super::fingerprint(cert.as_ref()) == sha256
        })));
    Ok(cfg)
}
