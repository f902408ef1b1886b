//! A sandbox's own egress policy at each start: the `network` of its create request (kept in
//! its record) turned into addresses ([`crate::net::SandboxEgress::resolve`], names resolved
//! anew each time) and given to its slot; and every [`RERESOLVE_EVERY`] the names of running
//! sandboxes resolved again, so the rules follow a name whose addresses change. Owns no rules
//! itself; the slot pool installs them and takes them away with the slot.

use std::sync::Arc;
use std::time::Duration;

use super::{Manager, SandboxError};
use crate::net::SandboxEgress;
use wrenn_types::agent::SandboxStatus;
use wrenn_types::network::{parse_target, SandboxNetwork, Target};

/// How often the domain names of running sandboxes' policies are resolved again.
pub const RERESOLVE_EVERY: Duration = Duration::from_secs(300);

/// Whether a policy names any domain.
fn has_names(network: &SandboxNetwork) -> bool {
    network
        .allow_out
        .iter()
        .chain(&network.deny_out)
        .any(|e| matches!(parse_target(e), Ok(Target::Name(_))))
}

impl Manager {
    /// The rules of `network` for this host, or `None` for the default policy. A policy that
    /// cannot be applied (a name that does not resolve, an allowed network holding one of the
    /// host's addresses) is the caller's bad request.
    pub(super) async fn sandbox_egress(
        &self,
        network: Option<&SandboxNetwork>,
    ) -> Result<Option<SandboxEgress>, SandboxError> {
        let Some(network) = network else {
            return Ok(None);
        };
        let egress = SandboxEgress::resolve(
            network,
            &self.pool.config().static_hosts,
            &self.pool.host_addresses(),
        )
        .await
        .map_err(|e| SandboxError::BadRequest(e.0))?;
        Ok((!egress.is_default()).then_some(egress))
    }

    /// Puts a sandbox's own rules back on the slot it kept across an agent restart. When they
    /// cannot be resolved any more, the sandbox loses the internet rather than gain more than
    /// it was given.
    pub(super) async fn restore_sandbox_egress(
        &self,
        id: &str,
        index: u32,
        network: Option<&SandboxNetwork>,
    ) {
        let egress = match self.sandbox_egress(network).await {
            Ok(Some(egress)) => egress,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(sandbox = %id, %err, "its network policy no longer resolves; \
                                                    it keeps only the default denials and no internet");
                SandboxEgress {
                    internet: false,
                    ..SandboxEgress::default()
                }
            }
        };
        if let Err(err) = self.pool.set_sandbox_egress(index, egress).await {
            tracing::warn!(sandbox = %id, %err, "restoring its network policy failed");
        }
    }
}

impl Manager {
    /// Starts the task that resolves running sandboxes' names again every
    /// [`RERESOLVE_EVERY`]; it ends with the manager.
    pub(super) fn start_reresolver(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RERESOLVE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(mgr) = me.upgrade() else { return };
                mgr.reresolve_once().await;
            }
        });
    }

    /// One round: every running sandbox with nothing under way whose policy names a domain
    /// gets its rules from a fresh resolution. A name that no longer resolves leaves the rules
    /// as they were; a sandbox whose slot changed meanwhile is left to its next start.
    pub(super) async fn reresolve_once(&self) {
        let entries: Vec<_> = self
            .map()
            .iter()
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        for (id, e) in entries {
            let (network, index) = {
                let Ok(inner) = e.inner.try_lock() else {
                    continue;
                };
                match (&inner.rec.network, &inner.slot) {
                    (Some(n), Some(slot))
                        if inner.rec.status == SandboxStatus::Running
                            && inner.rec.op.is_none()
                            && has_names(n) =>
                    {
                        (n.clone(), slot.index)
                    }
                    _ => continue,
                }
            };
            let egress = match self.sandbox_egress(Some(&network)).await {
                Ok(egress) => egress.unwrap_or_default(),
                Err(err) => {
                    tracing::warn!(sandbox = %id, %err, "resolving its network policy again failed; its rules stay");
                    continue;
                }
            };
            let Ok(inner) = e.inner.try_lock() else {
                continue;
            };
            if inner.slot.as_ref().map(|s| s.index) != Some(index)
                || inner.rec.status != SandboxStatus::Running
            {
                continue;
            }
            if let Err(err) = self.pool.set_sandbox_egress(index, egress).await {
                tracing::warn!(sandbox = %id, %err, "updating its network rules failed");
            }
            drop(inner);
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn only_policies_with_names_are_resolved_again() {
        let with = |allow: &[&str], deny: &[&str]| SandboxNetwork {
            allow_internet_access: None,
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
        };
        assert!(!has_names(&with(&["10.0.0.0/24"], &["1.2.3.4"])));
        assert!(has_names(&with(&["10.0.0.0/24"], &["api.example.com"])));
        assert!(has_names(&with(&["api.example.com"], &[])));
        assert!(!has_names(&SandboxNetwork::default()));
    }
}
