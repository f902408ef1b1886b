//! The multi-host test's network: one bridge in the root namespace and one network namespace
//! per host, joined to it by a veth, with addresses the test gives them (private, and only in
//! namespaces this test creates). It also starts a process inside a host's namespace the way
//! a separate machine would see the network: its own network namespace and its own view of
//! `/sys/class/net`, while `/run/netns` stays shared with the root namespace so the sandbox
//! namespaces an agent makes outlive it (a restarted agent finds them).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

pub const BRIDGE: &str = "wmhbr0";
/// The bridge's address (the control plane's side) and the hosts' subnet.
pub const BRIDGE_ADDR: &str = "172.30.77.1";
const SUBNET_BITS: u8 = 24;

/// One host's namespace and address.
pub struct HostNet {
    pub ns: String,
    pub addr: String,
    veth_root: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("setting up the hosts' network failed (needs root and iproute2): {e}");
    }
}

/// Namespaces whose name starts with one of `prefixes`.
pub fn namespaces_with(prefixes: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// Removes the bridge and every namespace whose name starts with one of `prefixes`
/// (idempotent; a killed earlier run's leftovers too). Processes inside must be gone.
pub fn remove(prefixes: &[&str]) {
    for ns in namespaces_with(prefixes) {
        let _ = ip(&["netns", "del", &ns]);
    }
    let _ = ip(&["link", "del", BRIDGE]);
}

/// Makes the bridge and one namespace per name, host `i` at `172.30.77.(11+i)`.
pub fn create(names: &[&str]) -> Vec<HostNet> {
    must(&["link", "add", BRIDGE, "type", "bridge"]);
    must(&[
        "addr",
        "add",
        &format!("{BRIDGE_ADDR}/{SUBNET_BITS}"),
        "dev",
        BRIDGE,
    ]);
    must(&["link", "set", BRIDGE, "up"]);
    let mut hosts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let ns = name.to_string();
        let addr = format!("172.30.77.{}", 11 + i);
        let veth_root = format!("{ns}-r");
        let veth_ns = format!("{ns}-n");
        must(&["netns", "add", &ns]);
        must(&[
            "link", "add", &veth_root, "type", "veth", "peer", "name", &veth_ns,
        ]);
        must(&["link", "set", &veth_ns, "netns", &ns]);
        must(&["link", "set", &veth_root, "master", BRIDGE]);
        must(&["link", "set", &veth_root, "up"]);
        must(&["-n", &ns, "link", "set", "lo", "up"]);
        must(&["-n", &ns, "link", "set", &veth_ns, "name", "eth0"]);
        must(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/{SUBNET_BITS}"),
            "dev",
            "eth0",
        ]);
        must(&["-n", &ns, "link", "set", "eth0", "up"]);
        must(&["-n", &ns, "route", "add", "default", "via", BRIDGE_ADDR]);
        hosts.push(HostNet {
            ns,
            addr,
            veth_root,
        });
    }
    hosts
}

impl HostNet {
    /// Cuts (`false`) or restores (`true`) the host's link to the bridge.
    pub fn set_link(&self, up: bool) {
        must(&[
            "link",
            "set",
            &self.veth_root,
            if up { "up" } else { "down" },
        ]);
    }

    /// Makes `cmd` start inside this host's network namespace, in a mount namespace of its
    /// own whose `/sys/class/net` (and `/sys/devices/virtual/net`) show that namespace's links;
    /// every other mount is shared as it is (`/run/netns` included).
    pub fn enter(&self, cmd: &mut Command) {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let ns_path = c(&Path::new("/run/netns").join(&self.ns));
        let sys = c(Path::new("/sys"));
        let class_net = c(Path::new("/sys/class/net"));
        let fresh_class_net = c(Path::new("/sys/class/net/class/net"));
        let fresh_virtual_net = c(Path::new("/sys/class/net/devices/virtual/net"));
        let virtual_net = c(Path::new("/sys/devices/virtual/net"));
        let sysfs = c(Path::new("sysfs"));
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: between fork and exec only async-signal-safe system calls are made (open,
        // setns, close, unshare, mount), on C strings made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(ns_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                check(fd)?;
                check(libc::setns(fd, libc::CLONE_NEWNET))?;
                libc::close(fd);
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Whatever is mounted under /sys from here on stays in this mount namespace.
                check(libc::mount(
                    std::ptr::null(),
                    sys.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                // A sysfs mounted from inside the namespace lists the namespace's links; it
                // is mounted on /sys/class/net for a moment, and its two net directories are
                // bound over the old ones.
                check(libc::mount(
                    sysfs.as_ptr(),
                    class_net.as_ptr(),
                    sysfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    fresh_virtual_net.as_ptr(),
                    virtual_net.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    fresh_class_net.as_ptr(),
                    class_net.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                Ok(())
            });
        }
    }
}
