//! The simulated agent's guest ports ([`wrenn_agent_api::HostAgent::open_port`]): a test binds a
//! server of its own on the host and exposes it as a port of a sandbox
//! ([`SimAgent::expose_port`]); connecting to that port of the running sandbox connects to
//! the test's server. A port nobody exposed has nothing listening (`port_unreachable`).

use super::sim::SimAgent;
use super::{AgentApiError, AgentResult};
use std::net::SocketAddr;
use wrenn_agent_api::PortStream;
use wrenn_types::agent::{AgentErrorCode, SandboxStatus};

impl SimAgent {
    /// Makes `port` of sandbox `id` lead to the server at `addr`.
    pub fn expose_port(&self, id: &str, port: u16, addr: SocketAddr) {
        self.lock().ports.insert((id.to_string(), port), addr);
    }

    pub(super) async fn sim_open_port(&self, id: &str, port: u16) -> AgentResult<PortStream> {
        let addr = {
            let st = self.lock();
            let sb = st.sandboxes.get(id).ok_or_else(|| {
                AgentApiError::new(AgentErrorCode::NotFound, format!("sandbox {id} not found"))
            })?;
            if sb.info.status != SandboxStatus::Running {
                return Err(AgentApiError::new(
                    AgentErrorCode::Conflict,
                    format!("sandbox {id} is {}", sb.info.status.as_str()),
                ));
            }
            st.ports.get(&(id.to_string(), port)).copied()
        };
        let unreachable = || {
            // Worded like the real agent, host address included, so that the control plane's
            // answer can be checked to hide it.
            AgentApiError::new(
                AgentErrorCode::PortUnreachable,
                format!(
                    "nothing accepts connections on port {port} of sandbox {id} at 10.11.0.9: \
                     connection refused"
                ),
            )
        };
        let addr = addr.ok_or_else(unreachable)?;
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(_) => Err(unreachable()),
        }
    }
}
