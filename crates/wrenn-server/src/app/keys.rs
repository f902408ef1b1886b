//! API keys: issue (`wrn_` + 128 bits, only the SHA-256 stored), list and revoke a team's
//! keys, and check a key on each request (recording `last_used` at most every few seconds
//! per key). It must not touch accounts, sandboxes or snapshots.

use super::{ts, App};
use crate::auth::{self, Claims};
use crate::config::limits;
use crate::error::ApiError;
use crate::store::{self, ApiKeyRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wrenn_types::api;
use wrenn_types::ids::TeamId;

/// `last_used` of an API key is written at most this often per key.
const KEY_TOUCH_INTERVAL: Duration = Duration::from_secs(5);

fn key_view(k: &ApiKeyRecord, plaintext: Option<String>) -> api::ApiKeyResponse {
    api::ApiKeyResponse {
        id: k.id.clone(),
        team_id: k.team_id.clone(),
        name: k.name.clone(),
        key_prefix: k.key_prefix.clone(),
        created_at: ts(k.created_at),
        last_used: k.last_used.map(ts),
        key: plaintext,
    }
}

impl App {
    /// Checks an API key; returns the team it belongs to. Records `last_used` in the
    /// background, at most every few seconds per key.
    pub async fn verify_api_key(self: &Arc<Self>, key: &str) -> Result<TeamId, ApiError> {
        let invalid = || ApiError::Unauthorized("invalid API key".into());
        if !key.starts_with(auth::API_KEY_PREFIX) || key.len() > 128 {
            return Err(invalid());
        }
        let rec = self
            .store
            .api_key_by_hash(&auth::hash_api_key(key))
            .await?
            .ok_or_else(invalid)?;
        let due = {
            let mut touches = self.key_touches.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match touches.get(&rec.id) {
                Some(t) if now.duration_since(*t) < KEY_TOUCH_INTERVAL => false,
                _ => {
                    touches.insert(rec.id.clone(), now);
                    true
                }
            }
        };
        if due {
            let app = self.clone();
            let id = rec.id.clone();
            tokio::spawn(async move {
                if let Err(e) = app.store.touch_api_key(&id, store::now()).await {
                    tracing::warn!(error = %e, "recording API key use failed");
                }
            });
        }
        // A key's team was made by this control plane: one whose id breaks the naming rule
        // is no team's, and the key is refused like an unknown one.
        TeamId::new(rec.team_id).map_err(|_| invalid())
    }

    pub async fn create_api_key(
        &self,
        claims: &Claims,
        req: api::CreateApiKeyRequest,
    ) -> Result<api::ApiKeyResponse, ApiError> {
        let name = req
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Unnamed API Key".into());
        if name.chars().count() > limits::MAX_KEY_NAME {
            return Err(ApiError::BadRequest(format!(
                "name must be at most {} characters",
                limits::MAX_KEY_NAME
            )));
        }
        let key = auth::generate_api_key();
        let rec = ApiKeyRecord {
            id: format!("key-{}", uuid::Uuid::new_v4().simple()),
            team_id: claims.team_id.clone(),
            name,
            key_hash: key.hash,
            key_prefix: key.prefix,
            created_by: Some(claims.sub.clone()),
            created_at: store::now(),
            last_used: None,
        };
        self.store.insert_api_key(&rec).await?;
        Ok(key_view(&rec, Some(key.plaintext)))
    }

    /// The keys of the signed-in user's team (the team is the session's, like a new key's).
    pub async fn list_api_keys(
        &self,
        claims: &Claims,
    ) -> Result<Vec<api::ApiKeyResponse>, ApiError> {
        Ok(self
            .store
            .list_api_keys(&claims.team_id)
            .await?
            .iter()
            .map(|k| key_view(k, None))
            .collect())
    }

    pub async fn delete_api_key(&self, claims: &Claims, id: &str) -> Result<(), ApiError> {
        if self.store.delete_api_key(&claims.team_id, id).await? {
            Ok(())
        } else {
            Err(ApiError::ApiKeyNotFound(id.into()))
        }
    }
}
