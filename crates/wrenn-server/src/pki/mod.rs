//! The control plane's certificate authority and the identities it issues for mutual TLS
//! between servers and host agents. The CA lives in `<data_dir>/pki/` (`ca.pem`, `ca.key`,
//! the key 0600), created on first need with `create_new` so two processes never make two
//! CAs. It signs two kinds of certificates, told apart by extended key usage and by a URI
//! subject alternative name:
//!
//! - an agent's (server auth only), from the agent's own CSR at join: the advertised host
//!   (IP or DNS name) and `urn:wrenn:host:<host id>`;
//! - a control plane's (client auth only), made in memory by each server process at start:
//!   `urn:wrenn:role:control-plane`, the role an agent requires of every client.
//!
//! [`token`] is the one-time join token's format, [`tls`] the rustls configurations of both
//! ends and the agent's TLS listener, [`client`] the process's control-plane identity used by
//! [`crate::agent::HttpAgent`] for `https://` hosts, [`pin`] the per-host pin; `checked` is
//! the one wrapper of the CA's verifiers that adds a check (the pin, the control-plane role).
//! Storing tokens and hosts is the store's; the join's rules are `app::host_join`'s.

mod checked;
pub mod client;
pub mod pin;
pub mod tls;
pub mod token;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The URI SAN that gives a certificate the control-plane role.
pub const CONTROL_PLANE_ROLE: &str = "urn:wrenn:role:control-plane";
/// The prefix of the URI SAN naming a host's id in its certificate.
pub const HOST_URI_PREFIX: &str = "urn:wrenn:host:";
/// Largest CSR accepted (PEM text).
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// How long an agent's certificate is valid (`wrenn hosts rotate` issues a new one).
const AGENT_CERT_DAYS: i64 = 5 * 365;
/// How long a server process's client certificate is valid (made again at every start).
const CONTROL_PLANE_CERT_DAYS: i64 = 365;
/// How long the CA is valid.
const CA_DAYS: i64 = 20 * 365;

/// What can go wrong with the CA or a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// No CA in the data dir yet (`wrenn hosts add` makes it).
    #[error("no CA in {0} (run `wrenn hosts add` on the control plane's host to create it)")]
    NoCa(String),
    /// A file of the CA could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The CSR is not a valid, self-signed PKCS#10 request.
    #[error("the CSR is not a valid PEM certificate request")]
    BadCsr,
    /// The advertised URL is not `https://HOST:PORT`.
    #[error("{0}")]
    BadUrl(String),
    /// A certificate or key could not be made or read.
    #[error("certificate: {0}")]
    Cert(String),
}

fn cert_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lowercase hex SHA-256 of a certificate's DER: the CA pin in join tokens.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|_| PkiError::Cert("no PEM certificate".into()))
}

/// The host (IP or DNS name) of an advertised agent URL, which must be `https://HOST:PORT`
/// with nothing after it (at most 253 characters).
pub fn advertised_host(url: &str) -> Result<String, PkiError> {
    let bad = |why: &str| PkiError::BadUrl(format!("url must be https://HOST:PORT ({why})"));
    if url.len() > 253 + 16 {
        return Err(bad("too long"));
    }
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("not https"))?;
    let rest = rest.trim_end_matches('/');
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
        return Err(bad("a path, query or user is not allowed"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or_else(|| bad("no port"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        (h.to_string(), p)
    };
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("bad port"))?;
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host);
    }
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        });
    if !dns_ok {
        return Err(bad("bad host"));
    }
    Ok(host.to_ascii_lowercase())
}

fn san_for_host(host: &str) -> Result<SanType, PkiError> {
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.to_string().try_into().map_err(cert_err)?),
    })
}

fn uri_san(uri: &str) -> Result<SanType, PkiError> {
    Ok(SanType::URI(uri.to_string().try_into().map_err(cert_err)?))
}

/// Validity from an hour ago (clocks differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn serial(params: &mut CertificateParams) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
}

/// The CA certificate's parameters.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Wrenn control plane CA");
    dn.push(DnType::OrganizationName, "Wrenn");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    serial(&mut params);
    params
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// The control plane's CA: its certificate and key, loaded from (or made in) a directory.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// The CA as rcgen's issuer (its name and key; re-signed in memory, same DER name).
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// The CA's files in `dir` (`<data_dir>/pki`).
    pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("ca.pem"), dir.join("ca.key"))
    }

    /// Loads the CA of `dir`, or `NoCa` if there is none.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = Self::paths(dir);
        let cert_pem = match std::fs::read_to_string(&cert_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PkiError::NoCa(dir.display().to_string()))
            }
            Err(e) => return Err(io_err(&cert_path)(e)),
        };
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err)?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(cert_err)?;
        let issuer = params.self_signed(&key).map_err(cert_err)?;
        let cert_der = first_cert_der(&cert_pem)?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
            key,
        })
    }

    /// Loads the CA of `dir`, creating it first if there is none. The key is written 0600
    /// with `create_new` and the certificate put in place with a hard link (which fails if
    /// one is there), so two processes creating it at once end with one CA; a crash between
    /// the two files leaves a key from which the next start makes the certificate.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        match Self::load(dir) {
            Err(PkiError::NoCa(_)) => {}
            other => return other,
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let (cert_path, key_path) = Self::paths(dir);
        for _ in 0..50 {
            let key = match std::fs::read_to_string(&key_path) {
                Ok(pem) => match KeyPair::from_pem(&pem) {
                    Ok(k) => k,
                    Err(_) => {
                        // Being written by another process.
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = KeyPair::generate().map_err(cert_err)?;
                    match write_new(&key_path, key.serialize_pem().as_bytes()) {
                        Ok(()) => key,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(io_err(&key_path)(e)),
                    }
                }
                Err(e) => return Err(io_err(&key_path)(e)),
            };
            if !cert_path.exists() {
                let cert = ca_params().self_signed(&key).map_err(cert_err)?;
                let tmp = dir.join(format!("ca.pem.{}.tmp", std::process::id()));
                std::fs::write(&tmp, cert.pem()).map_err(io_err(&tmp))?;
                let linked = std::fs::hard_link(&tmp, &cert_path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&cert_path)(e)),
                }
            }
            return Self::load(dir);
        }
        Err(PkiError::Cert(format!(
            "{} could not be read as a key",
            key_path.display()
        )))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA's pin: hex SHA-256 of its certificate's DER.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Signs an agent's CSR for `host_id` at the advertised `url`. Only the CSR's public key
    /// is used (after its signature is checked); names, usages and validity are ours.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        url: &str,
        host_id: &str,
    ) -> Result<String, PkiError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(PkiError::BadCsr);
        }
        let host = advertised_host(url)?;
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_id);
        dn.push(DnType::OrganizationName, "Wrenn host");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            san_for_host(&host)?,
            uri_san(&format!("{HOST_URI_PREFIX}{host_id}"))?,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, AGENT_CERT_DAYS);
        serial(&mut params);
        csr.params = params;
        let cert = csr.signed_by(&self.issuer, &self.key).map_err(cert_err)?;
        Ok(cert.pem())
    }

    /// A new key and client certificate with the control-plane role (kept in memory by the
    /// server process that asks).
    pub fn control_plane_identity(&self) -> Result<Identity, PkiError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Wrenn control plane");
        dn.push(DnType::OrganizationName, "Wrenn");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![uri_san(CONTROL_PLANE_ROLE)?];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, CONTROL_PLANE_CERT_DAYS);
        serial(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(cert_err)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A new key and its CSR (PEM), as an agent makes them to join.
pub fn new_key_and_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Wrenn host");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_err)?))
}

/// The URI SANs of a certificate (DER).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Writes a new file, mode 0600; fails if it exists.
pub fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests;
