//! The Wrenn host agent: one per host, owner of every microVM on it.
//!
//! - [`images`]: builds the guest kernel, initramfs and base templates from Debian packages.
//! - [`guest`]: facts about the guest every other module agrees on (addresses, paths, port).
//! - [`envd_client`]: the typed client of envd, the daemon inside every guest.
//! - [`cmd`]: the one place external commands are run, with their stderr kept on failure.
//! - [`failpoints`]: named failure points in the sandbox operations, for tests.
//! - [`doctor`]: the host checks of `wrenn doctor`, run by `wrenn up` and `wrenn agent` at start.
//! - [`startup`]: starting an agent ([`startup::start`]): data directory, images, recovery, API.

pub mod api;
mod api_copy;
pub mod cmd;
pub mod doctor;
pub mod envd_client;
pub mod failpoints;
pub mod guest;
pub mod images;
pub mod net;
pub mod sandbox;
pub mod startup;
pub mod vmm;
