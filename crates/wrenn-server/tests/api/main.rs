//! The public API over real HTTP, against a control plane whose host is the simulated agent
//! reached through the real agent HTTP client.

#[path = "../support/mod.rs"]
mod support;

mod accounts;
mod ids;
mod sandboxes;
mod snapshots;
