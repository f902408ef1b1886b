//! `wrenn doctor` on this machine, and with a program missing from `PATH`; `wrenn up` and
//! `wrenn agent` refusing to start on a failing check. The checks create and delete one network
//! namespace, so the passing run needs root (CI runs as root); the other tests do not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wrenn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wrenn"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of the check called `name` (the second column).
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.get(9..)
                .is_some_and(|rest| rest.starts_with(&format!("{name} ")))
        })
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{stdout}"))
}

/// (program, package, need) of every entry of the shared list.
fn listed_programs() -> Vec<(String, String, String)> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wrenn-agent/src/doctor/programs.txt");
    std::fs::read_to_string(list)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[1].to_string(), w[2].to_string())
        })
        .collect()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn doctor_passes_on_this_host_and_says_what_it_found() {
    if !is_root() {
        eprintln!("skipped: the network checks need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    // Images are not built in a new data dir; the check wants an envd to build them with.
    let envd = tmp.path().join("wrenn-envd");
    std::fs::write(&envd, "").unwrap();
    let out = wrenn()
        .args(["doctor", "--data-dir"])
        .arg(&data_dir)
        .arg("--envd-bin")
        .arg(&envd)
        .env_remove("WRENN_ACCEL")
        .env_remove("WRENN_QEMU")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    eprintln!("{stdout}");

    assert!(line(&stdout, "root").starts_with("ok "));
    for (program, _, need) in listed_programs() {
        if need == "test" {
            assert!(
                !stdout.contains(&format!(" {program} ")),
                "{program} is test-only"
            );
            continue;
        }
        let l = line(&stdout, &program);
        assert!(l.starts_with("ok "), "{l}");
    }
    // Versions as the programs print them; QEMU is the 10.0 scripts/deps.sh installs.
    assert!(
        line(&stdout, "qemu-system-x86_64").contains("QEMU emulator version 10."),
        "{stdout}"
    );
    assert!(
        line(&stdout, "qemu-img").contains("qemu-img version 10."),
        "{stdout}"
    );
    assert!(line(&stdout, "ip").contains("iproute2"), "{stdout}");
    assert!(line(&stdout, "mkfs.ext4").contains("mke2fs"), "{stdout}");

    assert!(line(&stdout, "/dev/net/tun").starts_with("ok "));
    let ns = line(&stdout, "network namespaces");
    assert!(ns.starts_with("ok ") && ns.contains("TAP device"), "{ns}");
    let rules = line(&stdout, "iptables rules");
    assert!(
        rules.starts_with("ok ") && rules.contains("MASQUERADE"),
        "{rules}"
    );
    assert!(line(&stdout, "IPv4 forwarding").starts_with("ok "));
    let accel = line(&stdout, "accelerator");
    assert!(
        accel.starts_with("ok       accelerator         KVM")
            || (accel.starts_with("warning") && accel.contains("TCG") && accel.contains("fix:")),
        "{accel}"
    );
    let cgroup = line(&stdout, "cgroups");
    assert!(!cgroup.starts_with("fail"), "{cgroup}");
    assert!(line(&stdout, "memory").contains("available of"), "{stdout}");
    assert!(line(&stdout, "disk").contains("free at"), "{stdout}");
    let dir = line(&stdout, "data dir");
    assert!(
        dir.starts_with("ok ") && dir.contains("does not exist yet"),
        "{dir}"
    );
    let images = line(&stdout, "images");
    assert!(
        images.starts_with("warning") && images.contains("not built yet"),
        "{images}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(summary.contains(" 0 failed ("), "{summary}");
    // The doctor looks, it does not create the data dir; its namespace is gone.
    assert!(!data_dir.exists());
    let name = ns
        .split_whitespace()
        .find(|w| w.starts_with("wrenn-doctor-"))
        .unwrap();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name)),
        "the doctor left its namespace {name}"
    );
}

/// A directory of symlinks to every listed program except `left_out`, to use as `PATH`.
fn path_without(left_out: &str) -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .collect();
    for (program, _, _) in listed_programs() {
        if program == left_out || program.contains('/') {
            continue;
        }
        if let Some(found) = dirs.iter().map(|d| d.join(&program)).find(|p| p.exists()) {
            std::os::unix::fs::symlink(found, bin.path().join(&program)).unwrap();
        }
    }
    bin
}

#[test]
fn a_program_missing_from_path_fails_with_its_name_and_package() {
    let bin = path_without("qemu-img");
    let tmp = tempfile::tempdir().unwrap();
    let out = wrenn()
        .args(["doctor", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let l = line(&stdout, "qemu-img");
    assert!(l.starts_with("fail "), "{l}");
    assert!(l.contains("not found on PATH"), "{l}");
    assert!(l.contains("Debian package qemu-utils"), "{l}");
    assert!(l.contains("fix: "), "{l}");
    if is_root() {
        // Only that program is missing: the others still run.
        assert!(
            line(&stdout, "qemu-system-x86_64").starts_with("ok "),
            "{stdout}"
        );
        assert!(
            line(&stdout, "network namespaces").starts_with("ok "),
            "{stdout}"
        );
    }
}

#[test]
fn up_and_agent_refuse_to_start_on_a_failing_check() {
    let bin = path_without("qemu-img");
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let up = [
        "up",
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
    ];
    let agent = [
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "0123456789abcdef0123",
    ];
    for args in [&up[..], &agent[..]] {
        let out = wrenn()
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("PATH", bin.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success(),
            "{args:?} started:\n{stdout}\n{stderr}"
        );
        assert!(stderr.contains("refusing to start"), "{stderr}");
        let failed = stderr
            .lines()
            .find(|l| l.starts_with("fail") && l.contains("qemu-img"))
            .unwrap_or_else(|| panic!("no failing qemu-img line:\n{stderr}"));
        assert!(failed.contains("qemu-utils"), "{failed}");
        assert!(
            !data_dir.exists(),
            "{args:?} made its data dir before refusing"
        );
    }
}
