//! Placement: the registry of host agents (rows in the store plus one [`HostAgent`] client
//! each), the heartbeat's cache of what each host last reported (`heartbeat` fills it; reads
//! never probe), the health it implies (a host silent for [`MISSED_BEATS`] heartbeats is
//! unreachable), the base templates the reachable hosts offer, and the choice of host for a
//! new sandbox (`choose`: by capacity, among reachable hosts that are not draining). It does
//! not decide anything about teams or sandbox records. (Not to be confused with the agent's
//! `net` host rules.)

mod beat;
mod choose;
mod snapshot;

pub use choose::{choose, Candidate};

use crate::agent::http::HttpAgent;
use crate::agent::{AgentApiError as AgentError, HostAgent};
use crate::error::ApiError;
use crate::store::{self, HostRecord, HostStatus, Store};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use wrenn_types::agent::{HostInfo, TemplateInfo, TemplateKind};

/// Heartbeats a host may miss before it counts as unreachable.
pub const MISSED_BEATS: u32 = 3;

/// A host chosen for a new sandbox.
pub struct LiveHost {
    pub id: String,
    pub agent: Arc<dyn HostAgent>,
}

/// What the heartbeat last learned of one host.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    /// Its last report (none before its first answer).
    info: Option<HostInfo>,
    templates: Vec<TemplateInfo>,
    /// When it last answered; when it was first known, before that.
    last_ok: Option<Instant>,
    known_since: Instant,
    draining: bool,
    /// Memory (MiB) and sandboxes placed on it since its last report, so that a burst of
    /// creates between two heartbeats spreads instead of piling on one host.
    placed_mb: i64,
    placed: u32,
}

impl Beat {
    fn new(draining: bool) -> Self {
        Beat {
            info: None,
            templates: Vec::new(),
            last_ok: None,
            known_since: Instant::now(),
            draining,
            placed_mb: 0,
            placed: 0,
        }
    }
}

/// What a host's HTTP client was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientFor {
    url: String,
    /// SHA-256 of the certificate last issued to it (a joined `https://` host).
    pin: Option<String>,
}

/// A host's health as this control plane sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answered within the last [`MISSED_BEATS`] heartbeats.
    Healthy,
    /// Not heard from yet, and known for less than that.
    Unknown,
    /// Silent for [`MISSED_BEATS`] heartbeats or more.
    Unreachable,
}

/// The registry of host agents.
pub struct Hosts {
    store: Arc<dyn Store>,
    agents: RwLock<HashMap<String, Arc<dyn HostAgent>>>,
    beats: RwLock<HashMap<String, Beat>>,
    /// The URL and certificate pin each joined host's client was made for (hosts in the
    /// store with an `http(s)://` URL): a rotation that changes either makes a new client.
    made_for: RwLock<HashMap<String, ClientFor>>,
    /// Silence after which a host is unreachable.
    unreachable_after: Duration,
    /// How long one probe may take.
    probe_timeout: Duration,
}

impl Hosts {
    /// A registry whose heartbeat runs every `interval`.
    pub fn new(store: Arc<dyn Store>, interval: Duration) -> Self {
        Self {
            store,
            agents: RwLock::new(HashMap::new()),
            beats: RwLock::new(HashMap::new()),
            made_for: RwLock::new(HashMap::new()),
            unreachable_after: interval * MISSED_BEATS,
            probe_timeout: (interval * 2).clamp(Duration::from_millis(500), Duration::from_secs(5)),
        }
    }

    /// Creates clients for the hosts in the store not known yet, forgets those no longer
    /// there, and takes each row's drain flag (the heartbeat's first step; also at start).
    pub async fn load(&self) -> Result<(), ApiError> {
        let asked = Instant::now();
        let rows = self.store.list_hosts().await?;
        self.sync(&rows, asked)
    }

    /// Takes `rows`, read from the store at `asked`: a host registered since then is kept
    /// although the rows do not name it yet; a joined host whose URL or certificate pin (the
    /// pin counts for `https://` hosts only) changed (a rotation) gets a new client.
    fn sync(&self, rows: &[HostRecord], asked: Instant) -> Result<(), ApiError> {
        for h in rows {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                continue;
            }
            let wanted = ClientFor {
                url: h.url.clone(),
                pin: h
                    .url
                    .starts_with("https://")
                    .then(|| h.cert_sha256.clone())
                    .flatten(),
            };
            let known = self.read_agents().contains_key(&h.id);
            let made_for = self
                .made_for
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&h.id)
                .cloned();
            // A host registered in this process (`register`) has no record here: its client
            // stays as it was made.
            let stale = known && made_for.is_some_and(|m| m != wanted);
            if !known || stale {
                let agent = HttpAgent::pinned(&h.url, &h.token, wanted.pin.as_deref())?;
                self.insert(&h.id, Arc::new(agent));
                self.made_for
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(h.id.clone(), wanted);
            }
        }
        let mut keep: std::collections::HashSet<String> =
            rows.iter().map(|h| h.id.clone()).collect();
        let mut beats = self.beats.write().unwrap_or_else(|p| p.into_inner());
        keep.extend(
            beats
                .iter()
                .filter(|(_, b)| b.known_since >= asked)
                .map(|(id, _)| id.clone()),
        );
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep.contains(id));
        beats.retain(|id, _| keep.contains(id));
        self.made_for
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep.contains(id));
        for h in rows {
            if self.read_agents().contains_key(&h.id) {
                beats
                    .entry(h.id.clone())
                    .or_insert_with(|| Beat::new(h.draining))
                    .draining = h.draining;
            }
        }
        Ok(())
    }

    fn read_agents(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<dyn HostAgent>>> {
        self.agents.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a host's client, or replaces it (a registration again, with a new token): what
    /// was heard through the old client counts no more.
    fn insert(&self, id: &str, agent: Arc<dyn HostAgent>) {
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), agent);
        self.beats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), Beat::new(false));
    }

    /// Takes up a host that has just joined or rotated its credential: its row's URL and
    /// certificate pin make its client (replacing one made for an older certificate), and
    /// it is probed at once.
    pub async fn take_up_joined(&self, id: &str) -> Result<(), ApiError> {
        self.load().await?;
        let agent = self.read_agents().get(id).cloned();
        if let Some(agent) = agent {
            self.beat_one(id, agent).await;
        }
        Ok(())
    }

    /// Registers (or re-registers, by URL) a host agent reachable over HTTP.
    pub async fn register(&self, url: &str, token: &str) -> Result<HostRecord, ApiError> {
        let agent = HttpAgent::new(url, token)?;
        self.register_agent(url, token, Arc::new(agent)).await
    }

    /// Registers a host with a given client (an [`HttpAgent`], or a simulated agent whose
    /// `url` is only a label such as `sim://host-a`), and probes it once at once.
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
            draining: false,
            cert_sha256: None,
        };
        let stored = self.store.upsert_host(&rec).await?;
        self.insert(&stored.id, agent.clone());
        if let Some(b) = self
            .beats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&stored.id)
        {
            b.draining = stored.draining;
        }
        self.beat_one(&stored.id, agent).await;
        Ok(stored)
    }

    /// The client for a host, for an operation on one of its sandboxes: a 503
    /// (`host_unreachable`) while the heartbeat finds the host silent.
    pub fn agent(&self, host_id: &str) -> Result<Arc<dyn HostAgent>, ApiError> {
        if self.health(host_id) == Health::Unreachable {
            return Err(ApiError::HostUnreachable);
        }
        self.any_agent(host_id)
    }

    /// The client for a host whatever its health (the reconciler's and the heartbeat's).
    pub fn any_agent(&self, host_id: &str) -> Result<Arc<dyn HostAgent>, ApiError> {
        self.read_agents().get(host_id).cloned().ok_or_else(|| {
            ApiError::Agent(AgentError::Transport(format!(
                "host {host_id} is not registered with this control plane"
            )))
        })
    }

    /// Every registered host's id and client, by id.
    pub fn all(&self) -> Vec<(String, Arc<dyn HostAgent>)> {
        let mut all: Vec<(String, Arc<dyn HostAgent>)> = self
            .read_agents()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A host's health now, from its last heartbeat (an unknown host id is unreachable).
    pub fn health(&self, host_id: &str) -> Health {
        let beats = self.beats.read().unwrap_or_else(|p| p.into_inner());
        match beats.get(host_id) {
            None => Health::Unreachable,
            Some(b) => self.health_of(b),
        }
    }

    fn health_of(&self, b: &Beat) -> Health {
        match b.last_ok {
            Some(t) if t.elapsed() < self.unreachable_after => Health::Healthy,
            Some(_) => Health::Unreachable,
            None if b.known_since.elapsed() < self.unreachable_after => Health::Unknown,
            None => Health::Unreachable,
        }
    }

    /// Whether the heartbeat finds `host_id` silent (its sandboxes are unavailable).
    pub fn is_unreachable(&self, host_id: &str) -> bool {
        self.health(host_id) == Health::Unreachable
    }

    /// The healthy hosts' last reports: (id, draining, info, templates).
    fn healthy(&self) -> Vec<(String, bool, HostInfo, Vec<TemplateInfo>, i64, u32)> {
        let beats = self.beats.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = beats
            .iter()
            .filter(|(_, b)| self.health_of(b) == Health::Healthy)
            .filter_map(|(id, b)| {
                let info = b.info.clone()?;
                Some((
                    id.clone(),
                    b.draining,
                    info,
                    b.templates.clone(),
                    b.placed_mb,
                    b.placed,
                ))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Runs a heartbeat now when no host has answered one yet (a request right after start
    /// or registration), so reads do not wait for the loop's first pass.
    async fn ensure_beaten(&self) {
        if self.healthy().is_empty() && !self.read_agents().is_empty() {
            self.beat().await;
        }
    }

    /// Base templates offered by the healthy hosts, one entry per name.
    pub async fn base_templates(&self) -> Vec<TemplateInfo> {
        self.ensure_beaten().await;
        let mut by_name: HashMap<String, TemplateInfo> = HashMap::new();
        for (_, _, _, templates, _, _) in self.healthy() {
            for t in templates
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

    /// Whether `name` is a base template on any healthy host.
    pub async fn is_base_template(&self, name: &str) -> bool {
        self.base_templates().await.iter().any(|t| t.name == name)
    }

    /// Picks the host for a new sandbox from a base template ([`choose`] among the healthy,
    /// non-draining hosts that have it) and counts the sandbox against that host until its
    /// next report.
    pub async fn place_base(
        &self,
        template: &str,
        memory_mb: i64,
    ) -> Result<LiveHost, NoPlacement> {
        self.ensure_beaten().await;
        let healthy = self.healthy();
        if healthy.is_empty() {
            return Err(NoPlacement::NoLiveHost);
        }
        let has = |ts: &[TemplateInfo]| {
            ts.iter()
                .any(|t| t.name == template && t.kind == TemplateKind::Base)
        };
        if !healthy.iter().any(|h| has(&h.3)) {
            return Err(NoPlacement::NoTemplate);
        }
        let candidates: Vec<Candidate> = healthy
            .iter()
            .filter(|h| !h.1 && has(&h.3))
            .map(|(id, _, info, _, placed_mb, placed)| {
                candidate(id, info, *placed_mb, *placed, true)
            })
            .collect();
        let chosen = choose(&candidates, memory_mb)
            .ok_or(NoPlacement::AllDraining)?
            .id
            .clone();
        self.note_placed(&chosen, memory_mb);
        let agent = self
            .any_agent(&chosen)
            .map_err(|_| NoPlacement::NoLiveHost)?;
        Ok(LiveHost { id: chosen, agent })
    }

    fn note_placed(&self, host_id: &str, memory_mb: i64) {
        if let Some(b) = self
            .beats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(host_id)
        {
            b.placed_mb += memory_mb;
            b.placed += 1;
        }
    }
}

/// A host's numbers as placement compares them.
fn candidate(
    id: &str,
    info: &HostInfo,
    placed_mb: i64,
    placed: u32,
    has_template: bool,
) -> Candidate {
    let room = if info.commit_limit_mb > 0 {
        info.commit_limit_mb as i64 - info.committed_memory_mb as i64
    } else {
        info.free_memory_mb as i64
    };
    Candidate {
        id: id.to_string(),
        room_mb: room - placed_mb,
        cpus: info.cpus,
        running: info.running + placed,
        has_template,
    }
}

/// Why no host was chosen for a new sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPlacement {
    /// No registered host answered its recent heartbeats.
    NoLiveHost,
    /// Hosts answered, but none has the template.
    NoTemplate,
    /// The healthy hosts that have the template are all draining.
    AllDraining,
}
