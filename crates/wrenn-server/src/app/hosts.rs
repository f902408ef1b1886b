//! What a silent host means for its sandboxes: while the heartbeat finds a sandbox's host
//! unreachable, the sandbox reads as unavailable — `error` in `/v1/sandboxes` (the seed
//! spec's statuses), `missing` in `/v1/capsules` — computed at read time and never stored,
//! so the host's return shows it as it was. Its operations answer `host_unreachable` (503,
//! from `Hosts::agent`), the reaper leaves it alone, and the reconciler skips its host until
//! it answers again. It must not change records.

use super::App;
use crate::store::SandboxRecord;
use wrenn_types::agent::SandboxStatus;
use wrenn_types::api;

/// The `/v1/sandboxes` status of a sandbox whose host is unreachable.
pub const UNAVAILABLE_STATUS: SandboxStatus = SandboxStatus::Error;

impl App {
    /// Whether `sb` is unavailable now: it is pending, running or paused on a host the
    /// heartbeat finds silent.
    pub(crate) fn unavailable(&self, sb: &SandboxRecord) -> bool {
        !matches!(sb.status, SandboxStatus::Stopped | SandboxStatus::Error)
            && self.hosts.is_unreachable(&sb.host_id)
    }

    /// `view` as a tenant sees it now: with the unavailable status while its host is silent.
    pub(super) fn shown(&self, sb: &SandboxRecord, mut view: api::Sandbox) -> api::Sandbox {
        if self.unavailable(sb) {
            view.status = UNAVAILABLE_STATUS.as_str().into();
        }
        view
    }
}
