//! A CA's certificate verifier with one extra check on the peer's certificate. [`Checked`]
//! forwards the chain and name checks and the handshake signature checks to the CA's verifier
//! (a server's for a client configuration, a client's for a server configuration) and then
//! refuses a certificate its own check rejects. The per-host pin ([`super::pin`]) and the
//! agent's requirement of the control-plane role ([`super::tls`]) are two such checks.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// What a certificate must also satisfy, beyond chaining to the CA.
type Check = Box<dyn Fn(&CertificateDer<'_>) -> bool + Send + Sync>;

/// `inner` (the CA's verifier) plus `check`.
pub(super) struct Checked<V: ?Sized> {
    inner: Arc<V>,
    check: Check,
}

impl<V: ?Sized> Checked<V> {
    pub(super) fn new(
        inner: Arc<V>,
        check: impl Fn(&CertificateDer<'_>) -> bool + Send + Sync + 'static,
    ) -> Checked<V> {
        Checked {
            inner,
            check: Box::new(check),
        }
    }

    /// The extra check, as rustls's refusal of an application-rejected certificate.
    fn accept(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if (self.check)(end_entity) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl<V: std::fmt::Debug + ?Sized> std::fmt::Debug for Checked<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The three handshake signature methods both verifier traits declare, forwarded to `inner`.
macro_rules! forward_signature_checks {
    () => {
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
    };
}

impl<V: ServerCertVerifier + ?Sized> ServerCertVerifier for Checked<V> {
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
        self.accept(end_entity)?;
        Ok(ok)
    }

    forward_signature_checks!();
}

impl<V: ClientCertVerifier + ?Sized> ClientCertVerifier for Checked<V> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.accept(end_entity)?;
        Ok(ok)
    }

    forward_signature_checks!();
}
