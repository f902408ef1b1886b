//! Joining hosts: making one-time join tokens (`wrenn hosts add` and `wrenn hosts rotate`
//! call [`new_join_token`] on the store directly) and the join itself ([`App::join_host`],
//! `POST /v1/hosts/join`): the token is checked against this control plane's CA and spent
//! once, the agent's CSR is signed for its advertised URL, and the host is recorded with its
//! certificate's SHA-256 and registered here at once (the other servers' heartbeats find it in
//! the store). The CA is [`crate::pki`]'s; the rows are the store's.

use super::App;
use crate::error::ApiError;
use crate::pki::token::{JoinToken, MAX_TOKEN_LEN};
use crate::pki::{self, Ca, PkiError};
use crate::store::{self, JoinTokenRecord, JoinTokenSpend, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime of a join token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// `POST /v1/hosts/join`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The one-time join token (`wrenn hosts add`).
    pub token: String,
    /// The URL the control plane reaches the agent at: `https://HOST:PORT`.
    pub url: String,
    /// The agent's certificate request (PEM); only its public key is used.
    pub csr_pem: String,
}

/// `POST /v1/hosts/join`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub host_id: String,
    /// The agent's certificate (PEM), signed by the CA.
    pub cert_pem: String,
    /// The CA's certificate (PEM); its SHA-256 is the token's pin.
    pub ca_pem: String,
}

/// What making a token can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no host {0}")]
    NoHost(String),
    #[error("a token lives at least 1 s and at most {} s", MAX_TOKEN_TTL.as_secs())]
    BadTtl,
}

/// Makes a join token valid for `ttl`, creating the CA in `<data_dir>/pki` on first need;
/// `rotate` names the host whose credentials it replaces (which must exist). The store gets
/// only the token's hash; the returned token is shown once.
pub async fn new_join_token(
    store: &dyn Store,
    data_dir: &Path,
    rotate: Option<&str>,
    ttl: Duration,
) -> Result<(JoinToken, JoinTokenRecord), TokenError> {
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(TokenError::BadTtl);
    }
    if let Some(id) = rotate {
        if !store.list_hosts().await?.iter().any(|h| h.id == id) {
            return Err(TokenError::NoHost(id.to_string()));
        }
    }
    let ca = Ca::load_or_create(&pki::client::pki_dir(data_dir))?;
    let token = JoinToken::generate(&ca.fingerprint());
    let now = store::now();
    let rec = JoinTokenRecord {
        id: format!("jt-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        token_hash: token.hash(),
        host_id: rotate.map(str::to_string),
        expires_at: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
        used_at: None,
        created_at: now,
    };
    store.insert_join_token(&rec).await?;
    Ok((token, rec))
}

fn refused(why: &str) -> ApiError {
    ApiError::InvalidJoinToken(format!("join token refused: {why}"))
}

impl App {
    /// Joins a host: checks the request, spends its token, signs its CSR, records and
    /// registers the host.
    pub async fn join_host(&self, req: JoinRequest) -> Result<JoinResponse, ApiError> {
        if req.token.len() > MAX_TOKEN_LEN {
            return Err(refused("malformed"));
        }
        let token = JoinToken::parse(&req.token).ok_or_else(|| refused("malformed"))?;
        // Checked before the token is spent, so a bad request leaves it usable.
        pki::advertised_host(&req.url).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if req.csr_pem.len() > pki::MAX_CSR_BYTES
            || rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err()
        {
            return Err(ApiError::BadRequest(
                PkiError::BadCsr.to_string() + " (csr_pem)",
            ));
        }
        let ca = match Ca::load(&pki::client::pki_dir(&self.cfg.data_dir)) {
            Ok(ca) => ca,
            Err(PkiError::NoCa(_)) => {
                return Err(refused(
                    "this control plane has no CA (none was made for it)",
                ))
            }
            Err(e) => return Err(ApiError::Internal(format!("loading the CA: {e}"))),
        };
        if token.ca_pin != ca.fingerprint() {
            return Err(refused("it was made for another control plane's CA"));
        }
        let rotated = match self
            .store
            .spend_join_token(&token.hash(), store::now())
            .await?
        {
            JoinTokenSpend::Spent { host_id } => host_id,
            JoinTokenSpend::Unknown => return Err(refused("unknown")),
            JoinTokenSpend::Used => return Err(refused("already used")),
            JoinTokenSpend::Expired => return Err(refused("expired")),
        };
        let url = req.url.trim_end_matches('/').to_string();
        let host_id = rotated
            .clone()
            .unwrap_or_else(|| format!("host-{}", uuid::Uuid::new_v4().simple()));
        let cert_pem = ca
            .sign_agent_csr(&req.csr_pem, &url, &host_id)
            .map_err(|e| ApiError::Internal(format!("signing a host's CSR: {e}")))?;
        let cert_sha = pki::fingerprint(
            &pki::first_cert_der(&cert_pem)
                .map_err(|e| ApiError::Internal(format!("reading a signed certificate: {e}")))?,
        );
        let recorded = self
            .store
            .record_joined_host(rotated.as_deref(), &host_id, &url, &cert_sha, store::now())
            .await?
            .ok_or_else(|| refused("the host it rotates was removed"))?;
        let cert_pem = if recorded == host_id {
            cert_pem
        } else {
            // A host already had this URL: the certificate names that host's id, and the
            // pin recorded for it is this certificate's.
            let cert_pem = ca
                .sign_agent_csr(&req.csr_pem, &url, &recorded)
                .map_err(|e| ApiError::Internal(format!("signing a host's CSR: {e}")))?;
            let cert_sha =
                pki::fingerprint(&pki::first_cert_der(&cert_pem).map_err(|e| {
                    ApiError::Internal(format!("reading a signed certificate: {e}"))
                })?);
            self.store
                .record_joined_host(Some(&recorded), &recorded, &url, &cert_sha, store::now())
                .await?
                .ok_or_else(|| refused("the host it rotates was removed"))?;
            cert_pem
        };
        if let Err(e) = self.hosts.take_up_joined(&recorded).await {
            // The heartbeat takes it up from the store.
            tracing::warn!(host = %recorded, "registering a joined host: {e}");
        }
        tracing::info!(host = %recorded, %url, rotated = rotated.is_some(), "host joined");
        Ok(JoinResponse {
            host_id: recorded,
            cert_pem,
            ca_pem: ca.cert_pem().to_string(),
        })
    }
}
