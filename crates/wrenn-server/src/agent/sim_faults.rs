//! Faults of the simulated agent, for the control plane's tests: a lifecycle call that is slow
//! to answer (the work is done at once, the answer comes after the delay, so a client that
//! gives up in between leaves the control plane to record what the agent did, as with a real
//! agent that finishes an operation whatever happens to its caller), a call that fails, a host
//! that stops answering its probes (`set_silent`), and a
//! host that disagrees with the database (a sandbox it forgot, one nobody created, one whose
//! VM died, a snapshot template nobody names); and what a test reads back of the simulated
//! host (a sandbox's status and egress policy, its templates). It does nothing unless a test
//! asks.

use super::sim::{now, SimAgent, SimSandbox, SimTemplate};
use super::{AgentApiError, AgentResult};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use wrenn_types::agent::{AgentErrorCode, SandboxInfo, SandboxStatus, TemplateInfo, TemplateKind};

/// A lifecycle call of the agent API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimOp {
    Create,
    Pause,
    Resume,
    Snapshot,
    Destroy,
}

/// The delays and failures set by a test.
#[derive(Default)]
pub(super) struct Faults {
    delays: Mutex<HashMap<SimOp, Duration>>,
    failing: Mutex<HashMap<SimOp, (AgentErrorCode, String)>>,
    /// The host is silent: its probes (info, lists) fail as a dead host's would.
    silent: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// The error `op` is set to fail with, if any (before any work is done).
    pub(super) fn fail_if_set(&self, op: SimOp) -> AgentResult<()> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match failing.get(&op) {
            Some((code, message)) => Err(AgentApiError::new(*code, message.clone())),
            None => Ok(()),
        }
    }

    /// A transport error while the host is silent ([`SimAgent::set_silent`]).
    pub(super) fn answering(&self) -> AgentResult<()> {
        if self.silent.load(std::sync::atomic::Ordering::Acquire) {
            return Err(AgentApiError::Transport(
                "simulated host is not answering".into(),
            ));
        }
        Ok(())
    }

    /// Waits the delay set for `op` (the work is done; the answer is late).
    pub(super) async fn answer(&self, op: SimOp) {
        let delay = self
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&op)
            .copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }
}

impl SimAgent {
    /// Makes every following create fail with an internal error (to test error paths).
    pub fn set_fail_creates(&self, fail: bool) {
        self.set_fail(SimOp::Create, fail);
    }

    /// Status of a sandbox as the simulated host sees it.
    pub fn sandbox_status(&self, id: &str) -> Option<SandboxStatus> {
        self.lock().sandboxes.get(id).map(|s| s.info.status)
    }

    /// The egress policy the sandbox's create request carried, if any.
    pub fn sandbox_network(&self, id: &str) -> Option<wrenn_types::network::SandboxNetwork> {
        self.lock().networks.get(id).cloned()
    }

    /// Names of all templates (base and snapshot) on the simulated host.
    pub fn template_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().templates.keys().cloned().collect();
        v.sort();
        v
    }

    /// Makes the host stop answering its probes (host info, sandbox and template lists), as
    /// a dead or cut-off host would, or answer again; its sandboxes are kept as they are.
    pub fn set_silent(&self, silent: bool) {
        self.faults
            .silent
            .store(silent, std::sync::atomic::Ordering::Release);
    }

    /// Answers `op` only `delay` after doing it (zero: at once).
    pub fn set_delay(&self, op: SimOp, delay: Duration) {
        let mut delays = self.faults.delays.lock().unwrap_or_else(|p| p.into_inner());
        if delay.is_zero() {
            delays.remove(&op);
        } else {
            delays.insert(op, delay);
        }
    }

    /// Makes every following `op` fail with an internal error, doing nothing.
    pub fn set_fail(&self, op: SimOp, fail: bool) {
        let mut failing = self
            .faults
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if fail {
            failing.insert(
                op,
                (
                    AgentErrorCode::Internal,
                    format!("simulated {op:?} failure"),
                ),
            );
        } else {
            failing.remove(&op);
        }
    }

    /// Makes every following `op` fail with `code` and `message`, doing nothing (a message
    /// of the host's own, such as a real agent's with its paths and addresses).
    pub fn set_fail_with(&self, op: SimOp, code: AgentErrorCode, message: &str) {
        self.faults
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(op, (code, message.to_string()));
    }

    /// Loses a sandbox (its VM and files), as a host that lost its disk would; false if the
    /// host did not have it.
    pub fn forget(&self, id: &str) -> bool {
        let Some(sb) = self.lock().sandboxes.remove(id) else {
            return false;
        };
        for f in sb.files.values() {
            let _ = std::fs::remove_file(f);
        }
        true
    }

    /// A sandbox in `status` that no control plane asked for.
    pub fn invent(&self, id: &str, status: SandboxStatus) {
        let info = SandboxInfo {
            id: id.into(),
            status,
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 512,
            guest_ip: "172.16.0.2".into(),
            host_ip: String::new(),
            started_at: Some(now()),
            error: None,
            disk_size_mb: None,
        };
        self.lock().sandboxes.insert(
            id.into(),
            SimSandbox {
                info,
                files: HashMap::new(),
            },
        );
    }

    /// Sets a sandbox's status (`Error`: its VM died); false if the host does not have it.
    pub fn set_status(&self, id: &str, status: SandboxStatus) -> bool {
        match self.lock().sandboxes.get_mut(id) {
            Some(sb) => {
                sb.info.status = status;
                if status != SandboxStatus::Running {
                    sb.info.host_ip = String::new();
                }
                true
            }
            None => false,
        }
    }

    /// A snapshot template that no control plane asked for.
    pub fn invent_template(&self, name: &str) {
        let info = TemplateInfo {
            name: name.into(),
            kind: TemplateKind::Snapshot,
            vcpus: Some(1),
            memory_mb: Some(512),
            size_bytes: 1,
            created_at: now(),
        };
        self.lock().templates.insert(
            name.into(),
            SimTemplate {
                info,
                files: HashMap::new(),
            },
        );
    }
}
