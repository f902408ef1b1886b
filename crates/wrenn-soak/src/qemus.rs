//! The QEMU processes of a `wrenn up` data directory and whom each one runs for, read from the
//! agent's own record: the pid file it writes beside each VM (`sandboxes/<id>/qemu.pid`,
//! `pool/<name>/qemu.pid`). A pooled clone's QEMU names its `pool/` directory on its command
//! line for its whole life, also after a create took it and its directory became
//! `sandboxes/<id>`, so the command line alone cannot say which sandbox it runs. The command
//! line is the fallback for the moment between QEMU's start and its pid file (a create or a
//! refill under way). This module owns that resolution; the verdict is `invariants`'.

use std::collections::BTreeMap;
use std::path::Path;

/// What a live QEMU of the data directory runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The sandbox with this id.
    Sandbox(String),
    /// A clone waiting in (or being made for) the agent's warm pool.
    Pooled,
    /// Nothing the agent records: its command line.
    Unknown(String),
}

/// Every live QEMU whose command line names a path in `data_dir`, with what it runs.
pub fn qemus_of(data_dir: &Path) -> Vec<(i32, Owner)> {
    let sandboxes = pid_files(&data_dir.join("sandboxes"));
    let pooled = pid_files(&data_dir.join("pool"));
    let inside = format!("{}/", data_dir.display());
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.contains("qemu-system")) {
            continue;
        }
        if !args.iter().any(|a| a.contains(&inside)) {
            continue;
        }
        out.push((pid, owner(data_dir, pid, &args, &sandboxes, &pooled)));
    }
    out
}

/// Whom QEMU `pid` (command line `args`) runs for: its pid file's directory first, else the
/// directory its command line names.
fn owner(
    data_dir: &Path,
    pid: i32,
    args: &[String],
    sandboxes: &BTreeMap<i32, String>,
    pooled: &BTreeMap<i32, String>,
) -> Owner {
    if let Some(id) = sandboxes.get(&pid) {
        return Owner::Sandbox(id.clone());
    }
    if pooled.contains_key(&pid) {
        return Owner::Pooled;
    }
    let named_in = |sub: &str| {
        let prefix = format!("{}/", data_dir.join(sub).display());
        args.iter().find_map(|a| {
            let (_, rest) = a.split_once(&prefix)?;
            rest.split('/').next().map(str::to_string)
        })
    };
    if let Some(id) = named_in("sandboxes") {
        return Owner::Sandbox(id);
    }
    if named_in("pool").is_some() {
        return Owner::Pooled;
    }
    Owner::Unknown(args.join(" "))
}

/// The pids in `<dir>/<name>/qemu.pid`, each with its `<name>`.
fn pid_files(dir: &Path) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("qemu.pid")) else {
            continue;
        };
        if let Ok(pid) = text.trim().parse() {
            out.insert(pid, e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn a_pid_file_says_which_sandbox_a_pooled_qemu_runs() {
        let d = tempfile_dir();
        let data = d.as_path();
        std::fs::create_dir_all(data.join("sandboxes/sb-1")).unwrap();
        std::fs::write(data.join("sandboxes/sb-1/qemu.pid"), "4242\n").unwrap();
        std::fs::create_dir_all(data.join("pool/minimal-abc")).unwrap();
        std::fs::write(data.join("pool/minimal-abc/qemu.pid"), "4343\n").unwrap();
        let (sb, pool) = (
            pid_files(&data.join("sandboxes")),
            pid_files(&data.join("pool")),
        );
        // Taken from the pool: its command line still names the pool directory.
        let cmd = args(&format!(
            "qemu-system-x86_64 -qmp unix:{}/pool/minimal-old/qmp.sock",
            data.display()
        ));
        assert_eq!(
            owner(data, 4242, &cmd, &sb, &pool),
            Owner::Sandbox("sb-1".into())
        );
        assert_eq!(owner(data, 4343, &cmd, &sb, &pool), Owner::Pooled);
        // No pid file yet (just started): the command line decides.
        assert_eq!(owner(data, 1, &cmd, &sb, &pool), Owner::Pooled);
        let cmd = args(&format!(
            "qemu-system-x86_64 -qmp unix:{}/sandboxes/sb-2/qmp.sock",
            data.display()
        ));
        assert_eq!(
            owner(data, 2, &cmd, &sb, &pool),
            Owner::Sandbox("sb-2".into())
        );
        let cmd = args(&format!(
            "qemu-system-x86_64 -qmp unix:{}/warm/x/qmp.sock",
            data.display()
        ));
        assert!(matches!(
            owner(data, 3, &cmd, &sb, &pool),
            Owner::Unknown(_)
        ));
        std::fs::remove_dir_all(data).unwrap();
    }

    /// A fresh scratch directory (the crate has no tempfile dependency).
    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "wrenn-soak-qemus-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
