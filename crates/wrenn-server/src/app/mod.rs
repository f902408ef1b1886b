//! [`App`], the control plane's domain layer: one type spread over one file per job, each an
//! `impl App` block. Each public method is one operation of the public API, scoped to a
//! team, returning [`ApiError`](crate::error::ApiError). It calls the store and host agents;
//! it knows nothing of HTTP requests, headers or JSON extraction (that is `api`).
//!
//! The jobs: `accounts` (signup, login, OAuth login, sessions), `keys` (API keys: issue,
//! list, revoke, check), `sandboxes` (reads, exec, files, activity), `lifecycle` (create,
//! pause, resume, destroy), `capsules` (the `/v1/capsules` view: labels, status words,
//! guest directory operations), `snapshots` (snapshot templates), `template_copy` (a snapshot's
//! copies on other hosts: placement of its creates, the relayed copy, their deletion), `reaper` (the idle reaper's
//! pass), `reconcile` (the reconciler's pass), `usage` (the usage meter's pass and daily
//! usage), `stats` (team stats, a capsule's resource samples), `hosts` (what a
//! silent host means for its sandboxes' views), `proxy` (who reaches a
//! capsule's port, and how many connections at once) and `events` (the team's lifecycle events
//! and their subscribers). Beside them, `ops` runs a lifecycle
//! operation to completion in a task of its own, one at a time per sandbox, and records its
//! intent; `settle` finishes or undoes an operation that was cut short, from what the agent
//! says. This file owns the shared state ([`App`] and its construction) and what belongs to
//! no job (timestamps on the wire, the `/metrics` page); it must not hold a job's operations.

mod accounts;
mod capsules;
mod events;
mod exec_slots;
mod hosts;
pub(crate) use exec_slots::ExecSlot;
mod keys;
mod lifecycle;
mod ops;
mod processes;
mod proxy;
mod reaper;
mod reconcile;
mod sandboxes;
mod settle;
mod snapshots;
mod stats;
pub mod template_copy;
mod usage;

pub(crate) use accounts::add_password_account;
pub use accounts::OAuthFinish;
pub use events::Frame;
pub use processes::ExecOutcome;
pub use reconcile::ReconcileReport;
pub use sandboxes::check_command;
pub use snapshots::valid_template_name;
pub use usage::run_meter;

pub mod host_join;

use crate::auth::JwtKeys;
use crate::config::ServerConfig;
use crate::failpoints::Failpoints;
use crate::metrics::Metrics;
use crate::placement::Hosts;
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The shared state behind every request.
pub struct App {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hosts: Hosts,
    /// Whether this control plane runs the reaper and the reconciler (`crate::leader`).
    pub(crate) leader: crate::leader::Leader,
    pub(crate) cfg: ServerConfig,
    /// OAuth providers and the signed-state machinery (`auth::oauth`).
    pub(crate) oauth: crate::auth::oauth::OAuth,
    /// Counters and histograms served at `/metrics`.
    pub(crate) metrics: Metrics,
    /// Failure points for tests (`crate::failpoints`).
    pub(crate) failpoints: Failpoints,
    /// This control plane's name in the intents it records (random per process).
    pub(crate) instance: String,
    /// The lifecycle operations this process is running, one per sandbox.
    ops: ops::Ops,
    /// When the reconciler first saw each VM or template no record owns.
    orphans: Mutex<HashMap<String, Instant>>,
    /// The subscribers of each team's lifecycle events (`events`).
    pub(crate) events: events::Events,
    jwt: JwtKeys,
    /// Login and signup rate limits and the password hashing cap.
    guards: accounts::AuthGuards,
    key_touches: Mutex<HashMap<String, Instant>>,
    /// Execs, exec streams and attaches running now, per sandbox and per team.
    exec_slots: exec_slots::ExecSlots,
    /// Proxied requests and connections open now, per capsule and per team (`proxy`).
    proxy_slots: exec_slots::ExecSlots,
}

/// RFC 3339 with milliseconds, UTC, as every timestamp of the public API.
pub fn ts(t: DateTime<Utc>) -> String {
    wrenn_types::time::Timestamp::from(t).to_string()
}

impl App {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        cfg: ServerConfig,
        oauth: crate::auth::oauth::OAuth,
        failpoints: Failpoints,
    ) -> Self {
        Self {
            hosts: Hosts::new(store.clone(), cfg.heartbeat_interval),
            leader: crate::leader::Leader::new(store.single_writer()),
            oauth,
            jwt: JwtKeys::new(&cfg.jwt_secret),
            guards: accounts::AuthGuards::new(&cfg.auth_limits),
            store,
            cfg,
            key_touches: Mutex::new(HashMap::new()),
            exec_slots: exec_slots::ExecSlots::default(),
            proxy_slots: exec_slots::ExecSlots::default(),
            metrics: Metrics::default(),
            failpoints,
            instance: format!("cp-{}", crate::auth::random_id(12)),
            ops: ops::Ops::default(),
            orphans: Mutex::new(HashMap::new()),
            events: events::Events::default(),
        }
    }

    /// Reaches the failure point `name` (see [`crate::failpoints`]): an armed `error` fails
    /// the step with an internal error, `sleep` waits here.
    pub(crate) async fn fail(&self, name: &'static str) -> Result<(), crate::error::ApiError> {
        let wait = self
            .failpoints
            .reach(name)
            .map_err(|e| crate::error::ApiError::Internal(e.to_string()))?;
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The `/metrics` page: every metric in the Prometheus text format, with the sandbox
    /// counts read from the store now (left out, and `wrenn_store_up` 0, when that fails).
    pub async fn metrics_text(&self) -> String {
        let counts = match self.store.count_sandboxes_by_status().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "counting sandboxes for /metrics failed");
                None
            }
        };
        self.metrics.render(counts.as_deref())
    }
}
