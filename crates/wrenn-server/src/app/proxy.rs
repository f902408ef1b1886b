//! The port proxy's rules (the HTTP side is `api::proxy`): which capsule a proxied request may
//! reach — with an API key only its own team's, running, with nothing under way; in `url` mode
//! any running capsule whose id it names — and how many proxied connections a capsule and a
//! team hold at once (`429 quota_exceeded` beyond).

use super::{App, ExecSlot};
use crate::config::ProxyAuth;
use crate::error::ApiError;
use crate::store::{QuotaExceeded, SandboxRecord};
use std::sync::Arc;

impl App {
    /// The running capsule `id` a proxied request may reach with `key` (its API key, if it
    /// sent one): 401 without a valid key (unless the proxy is in `url` mode), 404 for a
    /// capsule of another team or none, 409 for one that is not running.
    pub async fn proxy_target(
        self: &Arc<Self>,
        key: Option<&str>,
        id: &str,
    ) -> Result<SandboxRecord, ApiError> {
        let team = match (self.cfg.proxy.auth, key) {
            (ProxyAuth::ApiKey, None) => {
                return Err(ApiError::Unauthorized(
                    "missing X-API-Key header (or Authorization: Bearer with an API key)".into(),
                ))
            }
            (_, Some(key)) => self.verify_api_key(key).await?.into_string(),
            (ProxyAuth::Url, None) => self
                .store
                .find_sandbox(id)
                .await?
                .ok_or_else(|| ApiError::SandboxNotFound(id.into()))?
                .team_id
                .clone(),
        };
        self.running_record(&team, id).await
    }

    /// One proxied request or connection to `sb`, held until it ends.
    pub(crate) fn proxy_slot(&self, sb: &SandboxRecord) -> Result<ExecSlot, ApiError> {
        let p = &self.cfg.proxy;
        self.proxy_slots
            .take(&sb.team_id, &sb.id, p.per_capsule, p.per_team)
            .map_err(|e| match e {
                ApiError::QuotaExceeded(QuotaExceeded::ExecsPerTeam(n)) => {
                    ApiError::ProxyBusy(format!(
                        "team quota exceeded: at most {n} proxied connections at once per team"
                    ))
                }
                _ => ApiError::ProxyBusy(format!(
                    "team quota exceeded: at most {} proxied connections at once per capsule",
                    p.per_capsule
                )),
            })
    }
}
