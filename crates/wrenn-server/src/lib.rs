//! The Wrenn control plane: the public API of `spec/openapi.yaml` (accounts, teams, API
//! keys, sandboxes, snapshots), host placement, the idle auto-pause reaper and the
//! reconciler that keeps the database and the agents in agreement. It keeps its
//! state in a [`store::Store`] and drives VMs only through host agents ([`agent::HostAgent`]);
//! it never touches a VM itself and never links the agent's code.
//!
//! Code map: `config` (settings and limits) → `server` (entry points) → `api` (HTTP: the
//! router, handlers, OAuth routes, `/metrics` and the request middleware) → `app` (domain
//! operations, one file per job) → `store` (SQL) and `placement` (host registry and
//! placement) → `agent` (agent clients). `auth` holds the credential primitives, `error`
//! the one error→code→status mapping, `metrics` the metrics registry and the request-id
//! rules, `failpoints` the named failure points for tests; `reaper` and `reconciler` are the
//! background loops, both run by `periodic`.

pub mod agent;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod failpoints;
pub mod heartbeat;
pub mod leader;
pub mod listener;
pub mod metrics;
mod periodic;
pub mod pki;
pub mod placement;
pub mod reaper;
pub mod reconciler;
pub mod redact;
pub mod server;
pub mod store;

pub use config::{limits, ConfigError, GithubConfig, OAuthConfig, ServerConfig};
pub use error::{ApiError, ErrorCode};
pub use server::{
    add_account, build, open_store, serve, serve_limited, AddedAccount, BuildError, Server,
};
