//! The Wrenn control plane: the public API of `spec/openapi.yaml` (accounts, teams, API
//! keys, sandboxes, snapshots), host placement and the idle auto-pause reaper. It keeps its
//! state in a [`store::Store`] and drives VMs only through host agents ([`agent::HostAgent`]);
//! it never touches a VM itself and never links the agent's code.

pub mod store;
