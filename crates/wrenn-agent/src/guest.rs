//! Facts about the guest that the image builder, the VM layer and the network slots share.
//!
//! Every guest has the same address inside its own network namespace, so a snapshot taken in
//! one slot restores into any other.

/// The guest's address (on `eth0`), the same in every sandbox.
pub const GUEST_IP: &str = "172.16.0.2";
/// Prefix length of the guest's network.
pub const GUEST_PREFIX: u8 = 24;
/// The guest's default gateway: the TAP device's address inside the namespace.
pub const GUEST_GATEWAY: &str = "172.16.0.1";
/// Fixed MAC of the guest NIC, so a restored guest's ARP cache stays valid.
pub const GUEST_MAC: &str = "02:fc:00:00:00:02";
/// Fixed MAC of the TAP device (the guest's gateway) in every slot, so the ARP entry a
/// snapshot carries stays right in whichever slot it is restored.
pub const GATEWAY_MAC: &str = "02:fc:00:00:00:01";
/// Where the image builder installs envd inside the guest.
pub const GUEST_ENVD_PATH: &str = "/usr/local/bin/wrenn-envd";
/// The init the initramfs switches to: mounts, network, then envd (restarted if it dies).
pub const GUEST_INIT_PATH: &str = "/sbin/wrenn-init";
/// The unprivileged user of every template.
pub const GUEST_USER: &str = "user";
/// A template's warm-up script: when a base template has it, its warm snapshot runs it (after
/// envd is up, before saving), so that what it starts is already running in every clone.
pub const GUEST_WARMUP_PATH: &str = "/usr/local/lib/wrenn/warmup";
