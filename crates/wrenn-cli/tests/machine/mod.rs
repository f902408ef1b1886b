//! What the end-to-end tests share about this machine: where the guest images are
//! (`WRENN_DATA_DIR`, default `/var/lib/wrenn`) and a fresh scratch data directory beside them,
//! a free loopback port, the processes whose command lines name a data directory (a daemon and
//! its QEMUs), to list them or to end them, and what a stopped daemon must not leave behind.
//! Each test binary includes it (`mod machine;`, or with `#[path]` from a harness module).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest wait for the processes of a data dir to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(20);

/// The shared data directory holding the built guest images.
pub fn images_root() -> PathBuf {
    std::env::var_os("WRENN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/wrenn".into())
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

/// Every process but this one whose command line names `dir` or a path inside it: its pid and
/// command line.
pub fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    let exact = dir.display().to_string();
    let inside = format!("{exact}/");
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| *a == exact || a.contains(&inside)) {
            out.push((pid, args.join(" ")));
        }
    }
    out
}

/// A fresh scratch data dir `<images root>/e2e/<name>` with the guest images linked in (same
/// filesystem: templates are hard-linked, not copied). What an earlier run of it left (its
/// processes, its files) is ended and removed first. Panics if the images are not built.
pub fn scratch_data_dir(name: &str) -> PathBuf {
    let root = images_root();
    assert!(
        root.join("images").join("kernel").exists(),
        "no guest images under {} (run scripts/test or `wrenn images build`)",
        root.display()
    );
    let dir = root.join("e2e").join(name);
    kill_processes_of(&dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the previous run's data dir");
    }
    std::fs::create_dir_all(&dir).expect("create scratch data dir");
    std::os::unix::fs::symlink(root.join("images"), dir.join("images"))
        .expect("link the images into the scratch dir");
    dir
}

/// SIGKILL to every process of `dir`, then waits (bounded) until none is left.
pub fn kill_processes_of(dir: &Path) {
    for (pid, _) in processes_of(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + KILL_WAIT;
    while !processes_of(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that a stopped daemon left no sandbox or template directory in `data_dir`.
pub fn assert_no_vm_files(data_dir: &Path) {
    for sub in ["sandboxes", "templates"] {
        let dir = data_dir.join(sub);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            entries.is_empty(),
            "{} not empty: {entries:?}",
            dir.display()
        );
    }
}
