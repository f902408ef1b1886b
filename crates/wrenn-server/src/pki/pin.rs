//! Per-host pinning of an agent's certificate: a joined host's row keeps the SHA-256 of the
//! certificate last issued to it, and the control plane accepts from that host only a
//! certificate that chains to the CA, names the host the URL names, **and** has that digest.
//! A rotation (`wrenn hosts rotate`, then `wrenn agent --join --rejoin`) records the new
//! digest, so the old certificate (and its key, wherever it went) is refused from then on,
//! although it is still within its validity and the CA keeps no revocation list.

use super::PkiError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// The CA's server verifier plus the digest check.
#[derive(Debug)]
struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    sha256: String,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if super::fingerprint(end_entity.as_ref()) != self.sha256 {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

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
    cfg.dangerous().set_certificate_verifier(Arc::new(Pinned {
        inner,
        sha256: sha256.to_ascii_lowercase(),
    }));
    Ok(cfg)
}
