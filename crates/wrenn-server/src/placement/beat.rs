//! One heartbeat pass over the registry: take the store's hosts (new, removed, drain
//! flags), probe every host at once with a timeout (its info and templates), keep what each
//! answered in the cache, and write each host's health to the store (healthy with its
//! capacity, or unreachable once silent for [`super::MISSED_BEATS`] beats). The loop that
//! runs it is `crate::heartbeat`.

use super::{Beat, Health, Hosts};
use crate::agent::{AgentApiError as AgentError, HostAgent};
use crate::store::{self, HostCapacity, HostStatus};
use std::sync::Arc;
use std::time::Instant;

impl Hosts {
    /// One heartbeat pass (see the module doc).
    pub async fn beat(&self) {
        if let Err(e) = self.load().await {
            tracing::warn!(error = %e, "reading hosts for the heartbeat failed");
        }
        let probes = self
            .all()
            .into_iter()
            .map(|(id, agent)| async move { self.beat_one(&id, agent).await });
        futures_util::future::join_all(probes).await;
    }

    /// Probes one host and records what it said (or its silence).
    pub(super) async fn beat_one(&self, id: &str, agent: Arc<dyn HostAgent>) {
        let res = tokio::time::timeout(self.probe_timeout, async {
            let info = agent.host_info().await?;
            let templates = agent.list_templates().await?;
            Ok::<_, AgentError>((info, templates))
        })
        .await;
        let (health, capacity) = {
            let mut beats = self.beats.write().unwrap_or_else(|p| p.into_inner());
            let Some(b) = beats.get_mut(id) else { return };
            let was = self.health_of(b);
            let capacity = match res {
                Ok(Ok((info, templates))) => {
                    let cap = HostCapacity {
                        cpus: i64::from(info.cpus),
                        total_memory_mb: info.total_memory_mb as i64,
                        free_memory_mb: info.free_memory_mb as i64,
                        running: i64::from(info.running),
                    };
                    *b = Beat {
                        info: Some(info),
                        templates,
                        last_ok: Some(Instant::now()),
                        known_since: b.known_since,
                        draining: b.draining,
                        placed_mb: 0,
                        placed: 0,
                    };
                    Some(cap)
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = %id, error = %e, "heartbeat: host did not answer");
                    None
                }
                Err(_) => {
                    tracing::debug!(host = %id, "heartbeat: host probe timed out");
                    None
                }
            };
            let now = self.health_of(b);
            if was != now {
                match now {
                    Health::Unreachable => {
                        tracing::warn!(host = %id, "host unreachable: its sandboxes are unavailable")
                    }
                    Health::Healthy => tracing::info!(host = %id, "host reachable"),
                    Health::Unknown => {}
                }
            }
            (now, capacity)
        };
        // Stored: healthy when it answered; unreachable when it did not and has not answered
        // within the last beats (or never has); nothing new while it is within that grace.
        let status = match (&capacity, health) {
            (Some(_), _) => HostStatus::Healthy,
            (None, Health::Healthy) => return,
            (None, Health::Unknown | Health::Unreachable) => HostStatus::Unreachable,
        };
        if let Err(e) = self
            .store
            .update_host_health(id, status, capacity, store::now())
            .await
        {
            tracing::warn!(host = %id, error = %e, "recording host health failed");
        }
    }
}
