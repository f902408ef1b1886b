//! Serves any [`HostAgent`](super::HostAgent) (in practice the [`super::sim::SimAgent`]) over
//! the host agent's HTTP API with the router the real agent serves too. Tests use it to drive
//! the real [`super::http::HttpAgent`] client end to end — its streaming upload and download,
//! its WebSocket proxying and its error decoding — without VMs.

pub use wrenn_agent_api::router;
