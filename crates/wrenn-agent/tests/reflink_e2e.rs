//! End-to-end test of clones whose RAM is a reflink of their template's RAM file, with real
//! microVMs on a real XFS filesystem (a loop device the test makes, because the host's own
//! filesystem may not reflink). On such a filesystem a clone's RAM is a file of its own from
//! its create, so even its first pause saves device state only and its first resume maps the
//! file again instead of reading the RAM back: the state file stays small, the QEMU after a
//! resume holds only what the guest touches, the guest's RAM survives pause and resume, and
//! neither the template's RAM file nor a second clone sees what a clone wrote.
//!
//! Needs root, the guest images (as `vm_e2e.rs`) and `mkfs.xfs` (`xfsprogs`, installed by
//! `scripts/deps.sh --with-test-deps`). Slots 10300-10319, network prefix `rl`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{images_dir, rand_suffix, rt, Slots, TestAgent};

const TAG: &str = "reflink";

/// A loop-mounted XFS filesystem in a sparse file beside the images, holding a copy of the
/// kernel and the minimal template; unmounted and removed on drop.
struct XfsDataDir {
    root: PathBuf,
    mnt: PathBuf,
}

impl XfsDataDir {
    fn make() -> XfsDataDir {
        let parent = images_dir().join("e2e");
        std::fs::create_dir_all(&parent).unwrap();
        remove_stale(&parent);
        let root = parent.join(format!("{TAG}-{}-{}", std::process::id(), rand_suffix()));
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let img = root.join("xfs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 30)
            .unwrap();
        run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "reflink=1"])
            .arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        let d = XfsDataDir { root, mnt };
        let (from, to) = (images_dir().join("images"), d.mnt.join("images"));
        std::fs::create_dir_all(to.join("templates")).unwrap();
        for sub in ["kernel", "templates/minimal"] {
            run(Command::new("cp")
                .args(["-a", "--sparse=always"])
                .arg(from.join(sub))
                .arg(to.join(sub)));
        }
        d
    }
}

impl Drop for XfsDataDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Unmounts and removes what a killed earlier run of this test left.
fn remove_stale(parent: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{TAG}-")) {
            continue;
        }
        let mnt = e.path().join("mnt");
        if mounts.contains(&format!(" {} ", mnt.display())) {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Proportional set size of process `pid` in MB.
fn pss_mb(pid: u32) -> u64 {
    common::proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss") / 1024
}

/// The RAM mode a sandbox's record names.
fn ram_mode(agent: &TestAgent, id: &str) -> String {
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.sandbox_dir(id).join("sandbox.json")).unwrap())
            .unwrap();
    rec["ram"].as_str().unwrap_or_default().to_string()
}

/// Every template RAM file under the data directory (warm snapshots and templates), with its
/// SHA-256.
fn template_ram(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for sub in ["warm", "templates"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let mem = e.path().join("mem");
            if mem.exists() {
                out.push((mem.clone(), sha256(&mem)));
            }
        }
    }
    out.sort();
    out
}

const MEM_MB: u32 = 256;

#[test]
fn a_clone_on_a_reflink_filesystem_never_copies_its_ram() {
    let fs = XfsDataDir::make();
    rt().block_on(async {
        let agent = TestAgent::start(
            fs.mnt.clone(),
            Slots {
                prefix: "rl",
                first: 10300,
                count: 20,
                pool: 1,
            },
        )
        .await;
        let a = agent.create("minimal", MEM_MB).await;
        let dir = agent.sandbox_dir(&a);
        assert!(
            dir.join("mem").exists(),
            "the clone has a RAM file of its own"
        );
        assert!(!dir.join("tmem").exists(), "and no link to the template's");
        assert_eq!(ram_mode(&agent, &a), "own_file");
        let templates = template_ram(&fs.mnt);
        assert!(!templates.is_empty(), "the warm snapshot's RAM file");

        // Something of the clone's own in guest RAM (a tmpfs), then the first pause.
        let written = agent
            .sh(
                &a,
                "mkdir -p /run/rl && mount -t tmpfs tmpfs /run/rl && \
                 head -c 16000000 /dev/urandom > /run/rl/data && \
                 sha256sum /run/rl/data | cut -d' ' -f1",
            )
            .await;
        agent.lifecycle(&a, "pause").await;
        let state = std::fs::metadata(dir.join("state")).unwrap().len();
        assert!(
            state < 4 << 20,
            "the first pause saved device state only, not the RAM: state is {state} bytes"
        );
        assert_eq!(ram_mode(&agent, &a), "own_file");

        // The first resume maps the file again: the guest's data is there, and QEMU holds
        // far less than the guest's RAM (a resume that read the RAM back would hold all of it).
        agent.lifecycle(&a, "resume").await;
        let read = agent.sh(&a, "sha256sum /run/rl/data | cut -d' ' -f1").await;
        assert_eq!(
            read.trim(),
            written.trim(),
            "guest RAM survives pause and resume"
        );
        let pss = pss_mb(agent.qemu_pid(&a));
        assert!(
            pss < u64::from(MEM_MB) / 2 + 40,
            "QEMU after the first resume holds {pss} MB of a {MEM_MB} MB guest"
        );

        // A second clone of the same template starts from the template's RAM, not a's.
        let b = agent.create("minimal", MEM_MB).await;
        let seen = agent
            .sh(&b, "test -e /run/rl/data && echo leaked || echo clean")
            .await;
        assert_eq!(seen.trim(), "clean");
        agent.lifecycle(&b, "pause").await;
        agent.lifecycle(&b, "resume").await;
        assert_eq!(agent.sh(&b, "echo ok").await.trim(), "ok");

        // A snapshot of a: its clones start with a's RAM (their own reflinks of it).
        agent.lifecycle(&a, "pause").await;
        let (s, v) = agent
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{a}/snapshot"),
                Some(serde_json::json!({ "name": "rl-snap" })),
            )
            .await;
        assert_eq!(s, 201, "snapshot: {v}");
        let c = agent.create("rl-snap", MEM_MB).await;
        assert_eq!(ram_mode(&agent, &c), "own_file");
        let read = agent.sh(&c, "sha256sum /run/rl/data | cut -d' ' -f1").await;
        assert_eq!(read.trim(), written.trim(), "the template carries a's RAM");
        agent.sh(&c, "echo changed > /run/rl/data").await;
        agent.destroy(&c).await;
        let again = agent.create("rl-snap", MEM_MB).await;
        let read = agent
            .sh(&again, "sha256sum /run/rl/data | cut -d' ' -f1")
            .await;
        assert_eq!(read.trim(), written.trim(), "a clone's writes stay its own");

        // No clone changed a template's RAM file.
        for (mem, sum) in &templates {
            assert_eq!(&sha256(mem), sum, "{} changed", mem.display());
        }
        for id in [&b, &again] {
            agent.destroy(id).await;
        }
    });
}
