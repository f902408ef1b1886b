//! This process's control-plane identity for `https://` hosts: a client certificate with the
//! control-plane role, made in memory from the CA in `<data_dir>/pki` the first time a
//! client for such a host is built (the CA may appear after the server started: `wrenn hosts
//! add` creates it), then kept for the life of the process. One rustls configuration is
//! shared by every host's client, so connections are reused and no key is made per request.

use super::{tls, Ca, PkiError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

static PKI_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
static CONFIG: Mutex<Option<Arc<rustls::ClientConfig>>> = Mutex::new(None);
/// The CA certificate `CONFIG` trusts (the roots of a pinned configuration).
static CA_PEM: Mutex<Option<String>> = Mutex::new(None);

/// The directory of this process's CA: `<data_dir>/pki`.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Makes this process's `https://` clients use the CA of `data_dir` (called once at build).
pub fn use_data_dir(data_dir: &Path) {
    *PKI_DIR.lock().unwrap_or_else(|p| p.into_inner()) = Some(pki_dir(data_dir));
}

/// A client configuration with a new control-plane identity from `ca`.
pub fn config_from(ca: &Ca) -> Result<rustls::ClientConfig, PkiError> {
    let id = ca.control_plane_identity()?;
    tls::client_config(ca.cert_pem(), &id.cert_pem, &id.key_pem)
}

/// The process's client configuration, made on first use from the CA of the data dir.
pub fn config() -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let mut cached = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cached.as_ref() {
        return Ok(c.clone());
    }
    let dir = PKI_DIR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| PkiError::NoCa("(no data dir set)".into()))?;
    let ca = Ca::load(&dir)?;
    let cfg = Arc::new(config_from(&ca)?);
    *CA_PEM.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.cert_pem().to_string());
    *cached = Some(cfg.clone());
    Ok(cfg)
}

/// The process's client configuration for one joined host: [`config`] that also pins the
/// host's certificate to the SHA-256 recorded at its join (see [`super::pin`]).
pub fn pinned_config(sha256: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let base = config()?;
    let ca_pem = CA_PEM
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| PkiError::NoCa("(no CA loaded)".into()))?;
    Ok(Arc::new(super::pin::pinned(&base, &ca_pem, sha256)?))
}
