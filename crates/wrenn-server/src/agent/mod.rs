//! The control plane's side of the host agents. The operations are the [`HostAgent`] trait of
//! `wrenn-agent-api` (re-exported here with its types), implemented by [`http::HttpAgent`]
//! (a real agent over HTTP/WebSocket) and [`sim::SimAgent`] (an in-memory simulation for
//! tests, with its command interpreter in `sim_exec`, its directory operations in `sim_fs`, the faults a test can set in
//! [`sim_faults`], its made-up resource samples in `sim_metrics`, its background processes in `sim_procs`, its guest ports in `sim_ports`, its template copies in `sim_copy`, and [`sim_server`] serving
//! it over the agent API's own router).
//! This module moves requests and bytes; it knows nothing of teams, the store or placement.

pub mod http;
pub mod sim;
pub mod sim_copy;
mod sim_exec;
pub mod sim_faults;
mod sim_fs;
mod sim_metrics;
mod sim_ports;
mod sim_procs;
mod sim_pty;
pub mod sim_server;

pub use wrenn_agent_api::{
    AgentApiError, AgentResult, ByteStream, ExecSession, FileBody, HostAgent,
};
