//! A sandbox's own egress policy at each start: the `network` of its create request (kept in
//! its record) turned into addresses ([`crate::net::SandboxEgress::resolve`], names resolved
//! anew each time) and given to its slot. Owns no rules itself; the slot pool installs them
//! and takes them away with the slot.

use super::{Manager, SandboxError};
use crate::net::SandboxEgress;
use wrenn_types::network::SandboxNetwork;

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
