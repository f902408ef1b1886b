//! What of a host's words a tenant may read. The agent's messages for the errors that mean
//! something to a tenant (a file not found, a conflict, a bad request, a body too large, an
//! exec stream's error event) are passed on, but first stripped of what belongs to the host:
//! URLs, IP addresses (with or without a port), host paths (the agent's data directory, QEMU's
//! files and sockets, `/proc`, `/sys`, `/run`, `/dev`) and command lines (from a QEMU program
//! name or option on). Every other agent failure reaches a tenant only as its kind (`error`).
//! The full text is logged with the request id. Pure text work; no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Words that mark a path as the host's.
const HOST_PATH_MARKS: [&str; 10] = [
    "wrenn", "qemu", "/proc/", "/sys/", "/run/", "/dev/", ".qcow2", ".sock", "vmlinux", "initrd",
];

/// Words from which the rest of a message is a command line.
const COMMAND_MARKS: [&str; 5] = ["qemu-system", "qemu-img", "-drive", "-netdev", "-object"];

/// `message` with the host's details replaced by `<address>`, `<url>`, `<host path>` and
/// `<command line>`.
pub fn for_tenant(message: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for word in message.split_whitespace() {
        let core = word.trim_matches(|c: char| "\"'()[]{}<>,;`".contains(c) || c == '.');
        if COMMAND_MARKS.iter().any(|m| core.starts_with(m)) {
            out.push("<command line>");
            break;
        }
        out.push(if core.contains("://") {
            "<url>"
        } else if has_address(core) {
            "<address>"
        } else if core.contains('/') && HOST_PATH_MARKS.iter().any(|m| core.contains(m)) {
            "<host path>"
        } else {
            word
        });
    }
    out.join(" ")
}

/// Whether `word` holds an IPv4 or IPv6 address anywhere (`10.0.0.7:7070`, `addr=10.0.0.7`,
/// `[fd00::1]:80`).
fn has_address(word: &str) -> bool {
    let v4 = word
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|p| p.parse::<Ipv4Addr>().is_ok());
    let v6 = word
        .split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
        .filter(|p| p.matches(':').count() >= 2)
        .any(|p| p.parse::<Ipv6Addr>().is_ok());
    v4 || v6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_details_are_replaced() {
        let m = for_tenant(
            "snapshot failed: cannot open /var/lib/wrenn/sandboxes/sb-1/mem (agent at \
             http://10.0.0.7:7070/v1, guest 10.11.0.2:49983, [fd00::1]:80)",
        );
        assert_eq!(
            m,
            "snapshot failed: cannot open <host path> (agent at <url> guest <address> <address>"
        );
        let m = for_tenant("QEMU exited: qemu-system-x86_64 -M microvm -drive file=/x");
        assert_eq!(m, "QEMU exited: <command line>");
        assert_eq!(for_tenant("addr=192.168.1.4 refused"), "<address> refused");
    }

    #[test]
    fn the_tenants_own_words_stay() {
        for m in [
            "no such file: /home/user/data.csv",
            "sandbox sb-abc is paused, not running",
            "is a directory: /tmp/out",
            "exit code 2 after 1.5 s",
        ] {
            assert_eq!(for_tenant(m), m);
        }
    }
}
