//! System-level durability checks of Wrenn: the invariants that must hold after any mix of
//! operations, dropped clients and killed processes ([`invariants`]), a `wrenn up` child
//! process that can be killed and restarted ([`up`]), the data directory's QEMUs resolved
//! through the agent's pid files ([`qemus`]), and the soak run built on both
//! (`src/main.rs`). The fault suite `crates/wrenn-cli/tests/faults_e2e.rs` uses the same
//! invariants. This crate only observes and drives a system through its APIs, its data
//! directory and `/proc`; it changes nothing of Wrenn itself.

pub mod invariants;
pub mod qemus;
pub mod up;
