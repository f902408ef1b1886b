//! The Wrenn control plane: the public API of `spec/openapi.yaml` (accounts, teams, API
//! keys, sandboxes, snapshots), host placement and the idle auto-pause reaper. It keeps its
//! state in a [`store::Store`] and drives VMs only through host agents ([`agent::HostAgent`]);
//! it never touches a VM itself and never links the agent's code.
//!
//! Code map: `config` (settings and limits) → `server` (entry points) → `api` (HTTP) →
//! `app` (domain operations) → `store` (SQL) and `hosts` (placement) → `agent` (agent
//! clients). `auth` holds the credential primitives, `error` the one error→HTTP mapping,
//! `metrics` the `/metrics` registry and the request-id/logging middleware.

pub mod agent;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod hosts;
pub mod metrics;
pub mod reaper;
pub mod server;
pub mod store;

pub use config::{limits, ConfigError, GithubConfig, OAuthConfig, ServerConfig};
pub use error::ApiError;
pub use server::{build, serve, BuildError, Server};
