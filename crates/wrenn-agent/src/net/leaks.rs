//! Leak listing: everything of a prefix present on the host (namespaces, links, routes,
//! iptables rules and chains), read from the kernel and `ip` / `iptables-save`. Reads only;
//! removing is [`super::slot`]'s and [`super::host_rules`]'s.

use super::{host_rules, slot, NetError};
use crate::cmd;

/// One thing of a prefix found on the host.
pub(super) struct Found {
    /// The slot it belongs to, if it belongs to one (host-wide rules do not).
    pub(super) index: Option<u32>,
    /// Human-readable description.
    pub(super) what: String,
}

/// Parses `<prefix><sep><digits>` into the index.
fn index_of(name: &str, prefix: &str, sep: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_prefix(sep)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 5 {
        return None;
    }
    digits.parse().ok()
}

/// Everything of `prefix` present on the host: namespaces, links, routes, rules and chains.
pub(super) fn list(prefix: &str) -> Result<Vec<Found>, NetError> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(slot::NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = index_of(&name, prefix, "-ns") {
                found.push(Found {
                    index: Some(index),
                    what: format!("network namespace {name}"),
                });
            }
        }
    }
    let links = std::fs::read_dir("/sys/class/net").map_err(|source| NetError::Io {
        what: "listing network interfaces".into(),
        source,
    })?;
    for entry in links.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(index) = index_of(&name, prefix, "v").or_else(|| index_of(&name, prefix, "p")) {
            found.push(Found {
                index: Some(index),
                what: format!("link {name}"),
            });
        }
    }
    let routes =
        cmd::run("ip", ["-o", "-4", "route", "show"]).map_err(|source| NetError::Host {
            prefix: prefix.to_string(),
            step: "listing routes",
            source,
        })?;
    for line in String::from_utf8_lossy(&routes).lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "dev" {
                if let Some(index) = words.next().and_then(|d| index_of(d, prefix, "v")) {
                    found.push(Found {
                        index: Some(index),
                        what: format!("route {}", line.trim()),
                    });
                }
                break;
            }
        }
    }
    for table in ["filter", "nat"] {
        for line in host_rules::saved(prefix, table)? {
            if !line.starts_with('#') && host_rules::is_ours(prefix, &line) {
                found.push(Found {
                    index: None,
                    what: format!("iptables {table}: {line}"),
                });
            }
        }
    }
    Ok(found)
}

/// Everything of `prefix` still present on the host (namespaces, links, routes, iptables rules
/// and chains), described one per line. Empty after [`SlotPool::shutdown`].
pub fn leftovers(prefix: &str) -> Result<Vec<String>, NetError> {
    Ok(list(prefix)?.into_iter().map(|f| f.what).collect())
}
