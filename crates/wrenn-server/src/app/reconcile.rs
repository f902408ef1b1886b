//! The reconciler's pass: brings the database and every host agent into agreement. For each
//! reachable host it reads the agent's sandboxes and templates first and the database after
//! (a sandbox's row and a snapshot name's reservation are written before the agent is called,
//! so whatever the agent lists, the database read afterwards knows of), then:
//!
//! - a sandbox with an abandoned operation is settled (`settle`);
//! - a sandbox the agent does not know becomes `error`; one the agent says is `error` or
//!   `stopped` becomes that; a running/paused mismatch takes the agent's state. Each is asked
//!   of the agent again, one by one, before it is written (the list may be older than the
//!   row), and written compare-and-set. Records are never deleted here, except those of
//!   sandboxes whose destroy was asked for;
//! - a VM no record owns is destroyed, and a snapshot template no template or reservation
//!   names is deleted, once it has been seen unowned for `orphan_grace` and the database
//!   still does not know it.
//!
//! With several control planes on one PostgreSQL database a lease in the store (`try_lease`)
//! makes one of them run the passes; with SQLite (one control plane) no lease is needed.
//! The loop is `crate::reconciler`. It must not start lifecycle operations of its own.

use super::settle::{take_agent_state, Settled};
use super::App;
use crate::agent::HostAgent;
use crate::error::ApiError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wrenn_types::agent::{codes, SandboxInfo, SandboxStatus, TemplateKind};

/// The store lease that makes one control plane the reconciler.
const LEASE: &str = "reconciler";

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Another control plane holds the reconciler lease: nothing was done.
    pub skipped: bool,
    /// Hosts that could not be compared (unreachable, or a store error), by host id.
    pub failed_hosts: Vec<String>,
    /// Sandboxes whose abandoned operation was settled.
    pub settled: Vec<String>,
    /// Sandboxes whose record took the agent's state, with the status it took.
    pub corrected: Vec<(String, SandboxStatus)>,
    /// VMs no record owned, destroyed on their agent.
    pub destroyed_vms: Vec<String>,
    /// Snapshot templates no record named, deleted on their agent (agent names).
    pub removed_templates: Vec<String>,
}

impl ReconcileReport {
    /// Whether the pass changed a record, a VM or a template.
    pub fn changed_anything(&self) -> bool {
        !(self.settled.is_empty()
            && self.corrected.is_empty()
            && self.destroyed_vms.is_empty()
            && self.removed_templates.is_empty())
    }
}

/// The status a record without an operation should take, when the agent disagrees with it.
fn agent_says(db: SandboxStatus, agent: Option<SandboxStatus>) -> Option<SandboxStatus> {
    use SandboxStatus::*;
    match (db, agent) {
        (Running | Paused | Pending, None) => Some(Error),
        (Running | Paused | Pending, Some(s @ (Error | Stopped))) => Some(s),
        (Running | Pending, Some(Paused)) => Some(Paused),
        (Paused | Pending, Some(Running)) => Some(Running),
        _ => None,
    }
}

/// One sandbox's outcome.
enum Fix {
    Settled,
    Corrected(SandboxStatus),
}

impl App {
    /// One reconciler pass over every registered host (see the module doc).
    pub async fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport, ApiError> {
        let ttl = (self.cfg.reconcile_interval * 3).max(Duration::from_secs(30));
        // One control plane per SQLite file: the lease is this process's, also when a crashed
        // predecessor's row still names it (waiting it out would leave its cut-short
        // operations unsettled).
        // The leader (`crate::leader`) takes the lease too, so a pass run by hand elsewhere
        // is refused, but reconciles without it: the advisory lock says no other control
        // plane leads, also while a dead predecessor's lease has not expired.
        if !self.store.single_writer()
            && !self.store.try_lease(LEASE, &self.instance, ttl).await?
            && !self.leader.leads()
        {
            return Ok(ReconcileReport {
                skipped: true,
                ..Default::default()
            });
        }
        let mut report = ReconcileReport::default();
        let mut unowned = HashSet::new();
        for (host_id, agent) in self.hosts.all() {
            // A silent host's sandboxes keep their records as they are until it returns;
            // the first pass after that compares them again.
            if self.hosts.is_unreachable(&host_id) {
                report.failed_hosts.push(host_id);
                continue;
            }
            if let Err(e) = self
                .reconcile_host(&host_id, &agent, &mut report, &mut unowned)
                .await
            {
                tracing::warn!(host = %host_id, error = %e, "reconciling a host failed");
                report.failed_hosts.push(host_id);
            }
        }
        // What was not seen unowned this pass starts its grace again if it is seen later.
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| unowned.contains(k));
        Ok(report)
    }

    async fn reconcile_host(
        self: &Arc<Self>,
        host_id: &str,
        agent: &Arc<dyn HostAgent>,
        report: &mut ReconcileReport,
        unowned: &mut HashSet<String>,
    ) -> Result<(), ApiError> {
        // The agent first, the database after (see the module doc).
        let vms = agent.list_sandboxes().await?;
        let templates = agent.list_templates().await?;
        let rows = self.store.list_host_sandboxes(host_id).await?;
        let names: HashSet<String> = self
            .store
            .host_template_names(host_id)
            .await?
            .into_iter()
            .collect();
        let listed: HashMap<&str, &SandboxInfo> = vms.iter().map(|v| (v.id.as_str(), v)).collect();
        for sb in &rows {
            let on_agent = listed.get(sb.id.as_str()).map(|i| i.status);
            if sb.intent.is_none() && agent_says(sb.status, on_agent).is_none() {
                continue;
            }
            let id = sb.id.clone();
            let fixed = self
                .try_run(&sb.id, None, move |app| async move {
                    app.reconcile_one(&id).await
                })
                .await;
            match fixed {
                // This process is working on it: nothing to reconcile.
                None | Some(Ok(None)) => {}
                Some(Ok(Some(Fix::Settled))) => report.settled.push(sb.id.clone()),
                Some(Ok(Some(Fix::Corrected(s)))) => report.corrected.push((sb.id.clone(), s)),
                Some(Err(e)) => {
                    tracing::warn!(sandbox = %sb.id, error = %e, "reconciling a sandbox failed")
                }
            }
        }
        let recorded: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        for vm in vms.iter().filter(|v| !recorded.contains(v.id.as_str())) {
            if !self.orphan_due(format!("{host_id}/sandbox/{}", vm.id), unowned)
                || self.store.find_sandbox(&vm.id).await?.is_some()
            {
                continue;
            }
            tracing::warn!(host = %host_id, sandbox = %vm.id, "destroying a VM no record owns");
            match agent.destroy(&vm.id).await {
                Ok(()) => report.destroyed_vms.push(vm.id.clone()),
                Err(e) if e.code() == Some(codes::NOT_FOUND) => {}
                Err(e) => tracing::warn!(sandbox = %vm.id, error = %e, "destroying it failed"),
            }
        }
        let snapshots = templates
            .iter()
            .filter(|t| t.kind == TemplateKind::Snapshot && !names.contains(&t.name));
        for t in snapshots {
            if !self.orphan_due(format!("{host_id}/template/{}", t.name), unowned)
                || self
                    .store
                    .host_template_names(host_id)
                    .await?
                    .contains(&t.name)
            {
                continue;
            }
            tracing::warn!(host = %host_id, template = %t.name,
                "deleting a snapshot template no record names");
            match agent.delete_template(&t.name).await {
                Ok(()) => report.removed_templates.push(t.name.clone()),
                Err(e) if e.code() == Some(codes::TEMPLATE_NOT_FOUND) => {}
                Err(e) => tracing::warn!(template = %t.name, error = %e, "deleting it failed"),
            }
        }
        Ok(())
    }

    /// Reconciles one sandbox, holding its turn: settles an abandoned operation, or takes the
    /// agent's state when the agent, asked now, still disagrees with the record.
    async fn reconcile_one(&self, id: &str) -> Result<Option<Fix>, ApiError> {
        let Some(sb) = self.store.find_sandbox(id).await? else {
            return Ok(None);
        };
        if let Some(intent) = &sb.intent {
            if !self.abandoned(intent) {
                return Ok(None);
            }
            return match self.settle(sb).await? {
                Settled::Pending => Ok(None),
                Settled::Recorded | Settled::Removed => Ok(Some(Fix::Settled)),
            };
        }
        let agent = self.hosts.agent(&sb.host_id)?;
        let now = match agent.get_sandbox(id).await {
            Ok(info) => Some(info),
            Err(e) if e.code() == Some(codes::NOT_FOUND) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(want) = agent_says(sb.status, now.as_ref().map(|i| i.status)) else {
            return Ok(None);
        };
        tracing::warn!(sandbox = %id, recorded = sb.status.as_str(), agent = want.as_str(),
            "the agent disagrees with the record; taking the agent's state");
        let from = sb.status;
        let rec = match now {
            Some(info) => {
                let mut sb = sb;
                take_agent_state(&mut sb, info);
                self.record(sb).await?
            }
            None => self.mark_lost(sb).await?,
        };
        self.announce_state_change(from, &rec);
        Ok(Some(Fix::Corrected(want)))
    }

    /// Notes a VM or template seen without an owner; true once it has been so for the grace.
    fn orphan_due(&self, key: String, unowned: &mut HashSet<String>) -> bool {
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        let first = *orphans.entry(key.clone()).or_insert_with(Instant::now);
        unowned.insert(key);
        first.elapsed() >= self.cfg.orphan_grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SandboxStatus::*;

    #[test]
    fn the_agent_decides_what_a_vm_is_doing() {
        assert_eq!(agent_says(Running, None), Some(Error));
        assert_eq!(agent_says(Paused, None), Some(Error));
        assert_eq!(agent_says(Running, Some(Error)), Some(Error));
        assert_eq!(agent_says(Paused, Some(Stopped)), Some(Stopped));
        assert_eq!(agent_says(Running, Some(Paused)), Some(Paused));
        assert_eq!(agent_says(Paused, Some(Running)), Some(Running));
        // Agreement, an agent still working, and records already final: nothing to do.
        assert_eq!(agent_says(Running, Some(Running)), None);
        assert_eq!(agent_says(Running, Some(Pending)), None);
        assert_eq!(agent_says(Error, None), None);
        assert_eq!(agent_says(Stopped, Some(Running)), None);
        assert_eq!(agent_says(Error, Some(Running)), None);
    }
}
