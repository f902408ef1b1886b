//! End-to-end test of the VM jail with a real microVM: the QEMU of a sandbox runs as its own
//! unprivileged uid, without capabilities, with `no_new_privs` and QEMU's seccomp filter, in
//! its jail directory as its root, and (where the host has usable cgroups, v2 or v1) in
//! cgroups of its own with its limits set; pause and resume keep working. A memory hog and a
//! fork bomb in one guest leave another sandbox answering and the host's memory alone.
//!
//! Needs root and the guest images, as `vm_e2e.rs`. Slots 9100-9149. `WRENN_JAIL_LATENCY=N` also times N
//! creates and resumes and prints them (run once more with `WRENN_JAIL=off` to compare).

use std::path::Path;
use std::time::Instant;
use wrenn_agent::vmm::{cgroup, jail};

#[path = "jail_e2e/limits.rs"]
mod limits;

mod common;

use common::*;

/// Each test's own network prefix: two agents of one prefix in one process would each take
/// the prefix's host rules as their own.
const JAIL_PREFIX: &str = "ej";
const LIMIT_PREFIX: &str = "ek";
/// The first slot of each test (20 each).
const JAIL_SLOTS: u32 = 9100;
const LIMIT_SLOTS: u32 = 9120;

async fn start_agent(prefix: &'static str, first_slot: u32) -> TestAgent {
    let slots = Slots {
        prefix,
        first: first_slot,
        count: 20,
        pool: 2,
    };
    TestAgent::start(scratch_dir("jail"), slots).await
}

fn status_field(pid: u32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Everything the jail promises, checked on the running QEMU of sandbox `dir`.
fn assert_jailed(pid: u32, dir: &Path) {
    let cfg = jail::config();
    let uids: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    let uid = uids[0];
    assert!(uids.iter().all(|u| *u == uid), "uids {uids:?}");
    assert_ne!(uid, 0);
    assert!(
        uid > cfg.base && uid <= cfg.base + cfg.count,
        "uid {uid} outside the range"
    );
    let gids = status_field(pid, "Gid");
    assert!(
        gids.split_whitespace().all(|g| g == uid.to_string()),
        "gids {gids}"
    );
    assert_eq!(status_field(pid, "Groups"), cfg.shared_gid().to_string());
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for cap in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&status_field(pid, cap), 16).unwrap(),
            0,
            "{cap}"
        );
    }
    // Its root is its jail: the same directory as the sandbox's `jail`, holding the VM's own
    // files and nothing of the data dir.
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let jail = std::fs::metadata(dir.join("jail")).unwrap();
    assert_eq!(
        (root.dev(), root.ino()),
        (jail.dev(), jail.ino()),
        "root is not the jail"
    );
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for want in ["vmlinux", "initrd", "mem", "usr", "dev"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from the jail: {names:?}"
        );
    }
    for bad in [
        "sandbox.json",
        "state",
        "qmp.sock",
        "sandboxes",
        "etc",
        "proc",
        "root",
    ] {
        assert!(
            !names.iter().any(|n| n == bad),
            "{bad} in the jail: {names:?}"
        );
    }
    // Its writable files are its own; a QEMU of this uid cannot reach the data dir at all.
    let top = std::fs::read_dir(dir.join("jail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "qcow2")
                && std::fs::metadata(p).unwrap().uid() == uid
        });
    assert!(top.is_some(), "no disk layer owned by the VM's uid");
    // The cgroups, where the host has usable ones.
    match cgroup::cgroups() {
        Some(cg) => limits::assert_limits(cg, pid, dir),
        None => eprintln!("no usable cgroups on this host: cgroup limits not checked"),
    }
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn qemu_runs_jailed_and_pause_resume_work() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = start_agent(JAIL_PREFIX, JAIL_SLOTS).await;
        let id = a.create("minimal", 256).await;
        let dir = a.sandbox_dir(&id);
        if jail::config().enabled {
            assert_jailed(a.qemu_pid(&id), &dir);
        }
        a.sh(&id, "echo kept > /root/note").await;
        a.lifecycle(&id, "pause").await;
        assert!(!dir.join("jail").exists(), "jail left after pause");
        if let Some(cg) = cgroup::cgroups() {
            for d in cg.dirs_for(&dir) {
                assert!(!d.exists(), "cgroup {d:?} left after pause");
            }
        }
        a.lifecycle(&id, "resume").await;
        assert_eq!(a.sh(&id, "cat /root/note").await, "kept\n");
        if jail::config().enabled {
            assert_jailed(a.qemu_pid(&id), &dir);
        }
        a.destroy(&id).await;

        if let Some(n) = std::env::var("WRENN_JAIL_LATENCY")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let (mut create, mut resume) = (vec![], vec![]);
            for _ in 0..n {
                let t = Instant::now();
                let id = a.create("minimal", 256).await;
                create.push(t.elapsed().as_secs_f64() * 1000.0);
                a.lifecycle(&id, "pause").await;
                let t = Instant::now();
                a.lifecycle(&id, "resume").await;
                resume.push(t.elapsed().as_secs_f64() * 1000.0);
                a.destroy(&id).await;
            }
            let jailed = if jail::config().enabled {
                "jail on"
            } else {
                "jail off"
            };
            eprintln!(
                "{jailed}: create ms min/median/max {:.1?}",
                median(&mut create)
            );
            eprintln!(
                "{jailed}: resume ms min/median/max {:.1?}",
                median(&mut resume)
            );
        }
        let _ = std::fs::remove_dir_all(&a.data_dir);
    });
}
