//! Placement: the registry of host agents (rows in the store plus one [`HostAgent`] client
//! each), their health, the base templates they offer, and the choice of host for a new
//! sandbox (the least-loaded healthy host that has the template). It does not decide
//! anything about teams or sandbox records. (Not to be confused with the agent's `net` host
//! rules.)

use crate::agent::http::HttpAgent;
use crate::agent::{AgentApiError as AgentError, HostAgent};
use crate::error::ApiError;
use crate::store::{self, HostCapacity, HostRecord, HostStatus, Store};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wrenn_types::agent::{HostInfo, TemplateInfo, TemplateKind};

/// How long a health probe may take before the host counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A host that answered a probe.
pub struct LiveHost {
    pub id: String,
    pub agent: Arc<dyn HostAgent>,
    pub info: HostInfo,
    pub templates: Vec<TemplateInfo>,
}

/// The registry of host agents.
pub struct Hosts {
    store: Arc<dyn Store>,
    agents: RwLock<HashMap<String, Arc<dyn HostAgent>>>,
}

impl Hosts {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            agents: RwLock::new(HashMap::new()),
        }
    }

    /// Creates HTTP clients for the hosts already in the store (after a restart).
    pub async fn load(&self) -> Result<(), ApiError> {
        for h in self.store.list_hosts().await? {
            if h.url.starts_with("http://") || h.url.starts_with("https://") {
                let agent = HttpAgent::new(&h.url, &h.token)?;
                self.insert(&h.id, Arc::new(agent));
            }
        }
        Ok(())
    }

    fn insert(&self, id: &str, agent: Arc<dyn HostAgent>) {
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), agent);
    }

    /// Registers (or re-registers, by URL) a host agent reachable over HTTP.
    pub async fn register(&self, url: &str, token: &str) -> Result<HostRecord, ApiError> {
        let agent = HttpAgent::new(url, token)?;
        self.register_agent(url, token, Arc::new(agent)).await
    }

    /// Registers a host with a given client (an [`HttpAgent`], or a simulated agent whose
    /// `url` is only a label such as `sim://host-a`).
    pub async fn register_agent(
        &self,
        url: &str,
        token: &str,
        agent: Arc<dyn HostAgent>,
    ) -> Result<HostRecord, ApiError> {
        let rec = HostRecord {
            id: format!("host-{}", uuid::Uuid::new_v4().simple()),
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            status: HostStatus::Healthy,
            cpus: 0,
            total_memory_mb: 0,
            free_memory_mb: 0,
            running: 0,
            last_seen: None,
            created_at: store::now(),
        };
        let stored = self.store.upsert_host(&rec).await?;
        self.insert(&stored.id, agent);
        Ok(stored)
    }

    /// The client for a host.
    pub fn agent(&self, host_id: &str) -> Result<Arc<dyn HostAgent>, ApiError> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host_id)
            .cloned()
            .ok_or_else(|| {
                ApiError::Agent(AgentError::Transport(format!(
                    "host {host_id} is not registered with this control plane"
                )))
            })
    }

    /// Every registered host's id and client, by id.
    pub fn all(&self) -> Vec<(String, Arc<dyn HostAgent>)> {
        let mut all: Vec<(String, Arc<dyn HostAgent>)> = self
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Probes every host (concurrently, with a timeout), records health and capacity, and
    /// returns the ones that answered.
    pub async fn probe(&self) -> Vec<LiveHost> {
        let probes = self.all().into_iter().map(|(id, agent)| async move {
            let res = tokio::time::timeout(PROBE_TIMEOUT, async {
                let info = agent.host_info().await?;
                let templates = agent.list_templates().await?;
                Ok::<_, AgentError>((info, templates))
            })
            .await;
            (id, agent, res)
        });
        let mut live = Vec::new();
        for (id, agent, res) in futures_util::future::join_all(probes).await {
            match res {
                Ok(Ok((info, templates))) => {
                    let cap = HostCapacity {
                        cpus: i64::from(info.cpus),
                        total_memory_mb: info.total_memory_mb as i64,
                        free_memory_mb: info.free_memory_mb as i64,
                        running: i64::from(info.running),
                    };
                    if let Err(e) = self
                        .store
                        .update_host_health(&id, HostStatus::Healthy, Some(cap), store::now())
                        .await
                    {
                        tracing::warn!(host = %id, error = %e, "recording host health failed");
                    }
                    live.push(LiveHost {
                        id,
                        agent,
                        info,
                        templates,
                    });
                }
                Ok(Err(e)) => self.mark_unreachable(&id, &e.to_string()).await,
                Err(_) => self.mark_unreachable(&id, "probe timed out").await,
            }
        }
        live
    }

    async fn mark_unreachable(&self, id: &str, why: &str) {
        tracing::warn!(host = %id, reason = %why, "host agent unreachable");
        let _ = self
            .store
            .update_host_health(id, HostStatus::Unreachable, None, store::now())
            .await;
    }

    /// Base templates offered by the live hosts, one entry per name.
    pub async fn base_templates(&self) -> Vec<TemplateInfo> {
        let mut by_name: HashMap<String, TemplateInfo> = HashMap::new();
        for h in self.probe().await {
            for t in h
                .templates
                .into_iter()
                .filter(|t| t.kind == TemplateKind::Base)
            {
                by_name.entry(t.name.clone()).or_insert(t);
            }
        }
        let mut v: Vec<TemplateInfo> = by_name.into_values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Whether `name` is a base template on any live host.
    pub async fn is_base_template(&self, name: &str) -> bool {
        self.base_templates().await.iter().any(|t| t.name == name)
    }

    /// Picks the host for a new sandbox from a base template: among live hosts that have
    /// it, the one with the fewest running sandboxes, then the most free memory.
    /// `None` if no live host has the template.
    pub async fn place_base(
        &self,
        template: &str,
        memory_mb: i64,
    ) -> Result<LiveHost, NoPlacement> {
        let live = self.probe().await;
        if live.is_empty() {
            return Err(NoPlacement::NoLiveHost);
        }
        let mut candidates: Vec<LiveHost> = live
            .into_iter()
            .filter(|h| {
                h.templates
                    .iter()
                    .any(|t| t.name == template && t.kind == TemplateKind::Base)
            })
            .collect();
        candidates.sort_by(|a, b| {
            let fits_a = a.info.free_memory_mb as i64 >= memory_mb;
            let fits_b = b.info.free_memory_mb as i64 >= memory_mb;
            fits_b
                .cmp(&fits_a)
                .then(a.info.running.cmp(&b.info.running))
                .then(b.info.free_memory_mb.cmp(&a.info.free_memory_mb))
        });
        candidates.into_iter().next().ok_or(NoPlacement::NoTemplate)
    }
}

/// Why no host was chosen for a new sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPlacement {
    /// No registered host answered its probe.
    NoLiveHost,
    /// Hosts answered, but none has the template.
    NoTemplate,
}
