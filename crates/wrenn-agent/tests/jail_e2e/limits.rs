//! The per-VM cgroups seen from the host: the QEMU's groups (from `/proc/PID/cgroup`) carry
//! its limits, and a memory hog and a fork bomb in one guest leave another sandbox and the
//! host's memory alone.

use super::{median, start_agent, status_field, TestAgent, LIMIT_PREFIX, LIMIT_SLOTS};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wrenn_agent::vmm::cgroup;

/// The group of `pid` that holds `controller`, from its `/proc/PID/cgroup` and the mounts: the
/// v1 hierarchy carrying the controller, or the unified one.
fn group_of(pid: u32, v1: bool, controller: &str) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mount = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hit = if v1 {
                f[2] == "cgroup" && f[3].split(',').any(|o| o == controller)
            } else {
                f[2] == "cgroup2"
            };
            hit.then(|| PathBuf::from(f[1]))
        })
        .unwrap_or_else(|| panic!("no mount for {controller}"));
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = own
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, names, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if v1 {
                names.split(',').any(|n| n == controller)
            } else {
                names.is_empty()
            };
            hit.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("{pid} in no {controller} group: {own}"));
    mount.join(path.trim_start_matches('/'))
}

fn read_in(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

/// The QEMU `pid` of sandbox `dir` (1 vCPU, 256 MB) is in the VM's groups (those the
/// agent names for it), whose limits are set.
pub fn assert_limits(cg: &cgroup::Cgroups, pid: u32, dir: &Path) {
    let ours = cg.dirs_for(dir);
    let memory_max = ((256 + cgroup::OVERHEAD_TCG_MB) << 20).to_string();
    match &cg.backend {
        cgroup::Backend::V2(_) => {
            let group = group_of(pid, false, "");
            assert_eq!(ours, std::slice::from_ref(&group));
            assert_eq!(read_in(&group, "cpu.max"), "100000 100000");
            assert_eq!(read_in(&group, "memory.max"), memory_max);
            if group.join("memory.swap.max").exists() {
                assert_eq!(read_in(&group, "memory.swap.max"), "0");
            }
            assert_eq!(
                read_in(&group, "pids.max"),
                (cgroup::PIDS_BASE + 1).to_string()
            );
        }
        cgroup::Backend::V1(v1) => {
            let mut seen = vec![];
            for c in ["cpu", "memory", "pids", "blkio"] {
                let group = group_of(pid, true, c);
                if c == "blkio" && !ours.contains(&group) {
                    // Only where the blkio hierarchy is mounted.
                    assert!(!v1.hierarchies.iter().any(|h| h.controllers == ["blkio"]));
                    continue;
                }
                assert!(
                    ours.contains(&group),
                    "{c} group {group:?} not one of {ours:?}"
                );
                seen.push(group.clone());
                match c {
                    "cpu" => {
                        assert_eq!(read_in(&group, "cpu.cfs_period_us"), "100000");
                        assert_eq!(read_in(&group, "cpu.cfs_quota_us"), "100000");
                    }
                    "memory" => {
                        assert_eq!(read_in(&group, "memory.limit_in_bytes"), memory_max);
                        if group.join("memory.memsw.limit_in_bytes").exists() {
                            assert_eq!(read_in(&group, "memory.memsw.limit_in_bytes"), memory_max);
                        } else {
                            assert_eq!(read_in(&group, "memory.swappiness"), "0");
                        }
                    }
                    "pids" => assert_eq!(
                        read_in(&group, "pids.max"),
                        (cgroup::PIDS_BASE + 1).to_string()
                    ),
                    _ => {
                        for f in ["blkio.weight", "blkio.bfq.weight"] {
                            if group.join(f).exists() {
                                assert_eq!(
                                    read_in(&group, f).split_whitespace().last(),
                                    Some("100")
                                );
                            }
                        }
                    }
                }
            }
            assert_eq!(seen.len(), ours.len(), "{seen:?} vs {ours:?}");
        }
    }
}

/// `MemAvailable` of the host, in bytes.
fn mem_available() -> u64 {
    crate::common::proc_kib("/proc/meminfo", "MemAvailable") * 1024
}

/// The resident memory of every process but `except`, in bytes.
fn others_rss(except: u32) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == except {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
    }
    total
}

/// How much the host's available memory dropped since `before` (available, others' RSS),
/// less what the processes other than `pid` grew by meanwhile: the test shares the host with
/// builds and other tests.
fn host_drop(before: (u64, u64), pid: u32) -> u64 {
    let (avail, others) = (mem_available(), others_rss(pid));
    (before.0.saturating_sub(avail)).saturating_sub(others.saturating_sub(before.1))
}

/// Kills the QEMUs it holds when dropped (a failed test leaves no VM running).
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: a plain system call on the QEMU's pid.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl TestAgent {
    /// How long an exec of `true` in `id` takes, in ms.
    async fn exec_ms(&self, id: &str) -> f64 {
        let t = Instant::now();
        let (s, v) = self.try_sh(id, "true", 30).await;
        assert_eq!((s, &v["exit_code"]), (200, &json!(0)), "{v}");
        t.elapsed().as_secs_f64() * 1000.0
    }

    /// The median of 7 execs in `id`, in ms.
    async fn usual_ms(&self, id: &str) -> f64 {
        let mut times = vec![];
        for _ in 0..7 {
            times.push(self.exec_ms(id).await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        median(&mut times).1
    }

    /// Runs `stress` in sandbox `noisy` (QEMU `pid`) and, while it runs (at most `cap`), times
    /// execs in `quiet` and watches the host's available memory. The timings, the largest
    /// [`host_drop`] seen and the stress exec's answer (`None`: none within `cap` plus a
    /// minute).
    async fn under_stress(
        &self,
        (noisy, pid): (&str, u32),
        stress: &str,
        quiet: &str,
        cap: Duration,
    ) -> (Vec<f64>, u64, Option<(u16, Value)>) {
        let done = std::sync::atomic::AtomicBool::new(false);
        let stressed = async {
            let r = tokio::time::timeout(
                cap + Duration::from_secs(60),
                self.try_sh(noisy, stress, 120),
            )
            .await
            .ok();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        };
        let probe = async {
            let before = (mem_available(), others_rss(pid));
            let (start, mut times, mut drop) = (Instant::now(), vec![], 0);
            // Let the stress begin.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && start.elapsed() < cap {
                drop = drop.max(host_drop(before, pid));
                times.push(self.exec_ms(quiet).await);
                drop = drop.max(host_drop(before, pid));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (times, drop)
        };
        let (answer, (times, drop)) = tokio::join!(stressed, probe);
        (times, drop, answer)
    }
}

/// A memory hog and a fork bomb in one guest stay that guest's problem: its QEMU stays alive
/// within its memory limit, another sandbox's exec answers within twice its usual time, and
/// the host's available memory drops by less than the noisy guest's limit.
#[test]
fn a_memory_hog_and_a_fork_bomb_stay_in_their_guest() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cg = cgroup::cgroups().expect("this host has no usable cgroups (see wrenn doctor)");
        let a = start_agent(LIMIT_PREFIX, LIMIT_SLOTS).await;
        let (quiet, noisy) = (a.create("minimal", 256).await, a.create("minimal", 256).await);
        let pid = a.qemu_pid(&noisy);
        let _reap = Reap(vec![pid, a.qemu_pid(&quiet)]);
        let dir = a.sandbox_dir(&noisy);
        assert_limits(cg, pid, &dir);
        let limit = ((256 + cgroup::OVERHEAD_TCG_MB) << 20) as f64;
        let memory_group = cg
            .dirs_for(&dir)
            .into_iter()
            .find(|d| match &cg.backend {
                cgroup::Backend::V2(_) => true,
                cgroup::Backend::V1(_) => d.join("memory.limit_in_bytes").exists(),
            })
            .unwrap();
        let rss_idle = status_field(pid, "VmRSS");

        // The quiet sandbox's usual exec time, taken before the hog, between the two and (for
        // the hog) after: the host is shared with builds and other tests, whose load comes and
        // goes. Not after the fork bomb: the noisy guest may still be full of it.
        for _ in 0..2 {
            a.exec_ms(&quiet).await;
        }
        let usual_before = a.usual_ms(&quiet).await;
        let cpu_group = cg
            .dirs_for(&dir)
            .into_iter()
            .find(|d| d.join("cpu.stat").exists())
            .unwrap();

        // The hog: python allocating (and touching) 16 MB at a time, far beyond the guest's
        // 256 MB, three times over; the guest's OOM killer ends each.
        let hog = "for i in 1 2 3; do \
                   python3 -c 'b=[]\nwhile True: b.append(b\"x\" * (16 << 20))' 2>/dev/null; \
                   echo \"exit $?\"; done";
        let (mut times, dropped, answer) = a
            .under_stress((&noisy, pid), hog, &quiet, Duration::from_secs(120))
            .await;
        let (s, v) = answer.expect("the hog's exec answers");
        assert_eq!(s, 200, "{v}");
        // Each hog was killed (137) by the guest's OOM killer, or failed to allocate (1).
        let exits: Vec<&str> = v["stdout"].as_str().unwrap().lines().collect();
        assert_eq!(exits.len(), 3, "{v}");
        assert!(
            exits.iter().all(|e| *e == "exit 137" || *e == "exit 1"),
            "{v}"
        );
        assert!(alive(pid), "the noisy QEMU died");
        assert!(times.len() >= 3, "too few probes during the hog: {times:?}");
        let (_, during, worst) = median(&mut times);
        let usual_between = a.usual_ms(&quiet).await;
        let usual = usual_before.max(usual_between);
        let peak = match &cg.backend {
            cgroup::Backend::V2(_) => read_in(&memory_group, "memory.peak"),
            cgroup::Backend::V1(_) => read_in(&memory_group, "memory.max_usage_in_bytes"),
        };
        eprintln!(
            "hog: quiet exec ms usual {usual:.1}, during {during:.1} (worst {worst:.1}, {} \
             probes); host available memory dropped {} MiB beyond other processes' growth (limit {} \
             MiB); noisy QEMU RSS idle \
             {rss_idle}, peak {}; group peak {} MiB",
            times.len(),
            dropped >> 20,
            (limit as u64) >> 20,
            status_field(pid, "VmHWM"),
            peak.parse::<u64>().unwrap_or(0) >> 20,
        );
        assert!(peak.parse::<f64>().unwrap() <= limit, "group peak {peak}");
        if let cgroup::Backend::V1(_) = cg.backend {
            let stat = read_in(&memory_group, "memory.stat");
            let field = |k: &str| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k} ")))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    >> 20
            };
            eprintln!(
                "hog: group hit its limit {} times; now rss {} MiB, cache {} MiB (mapped {} MiB)",
                read_in(&memory_group, "memory.failcnt"),
                field("rss"),
                field("cache"),
                field("mapped_file"),
            );
            // The host's OOM killer never acted in the group: the allowance covers QEMU.
            let oom = read_in(&memory_group, "memory.oom_control");
            assert!(
                !oom.lines()
                    .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
                "{oom}"
            );
        }
        assert!(
            during <= 2.0 * usual,
            "the quiet sandbox slowed down: {during:.1} ms vs {usual:.1} ms"
        );
        assert!(
            dropped as f64 <= limit,
            "the host lost {} MiB",
            dropped >> 20
        );

        // The fork bomb, killed after 20 s by `timeout` (its whole process group; the bomb's
        // first shell stays, or `timeout` would see it exit at once).
        let bomb = "timeout -s KILL 20 bash -c ':(){ :|:& };:; sleep 60'; echo over";
        let (mut times, _, answer) = a
            .under_stress((&noisy, pid), bomb, &quiet, Duration::from_secs(25))
            .await;
        assert!(alive(pid), "the noisy QEMU died");
        assert!(
            times.len() >= 3,
            "too few probes during the fork bomb: {times:?}, its answer {answer:?}"
        );
        let (_, during, worst) = median(&mut times);
        let usual = usual_between;
        eprintln!(
            "fork bomb: quiet exec ms usual {usual:.1}, during {during:.1} (worst {worst:.1}, \
             {} probes); its exec answered: {:?}; noisy QEMU threads {}; its cpu.stat {:?}",
            times.len(),
            answer.as_ref().map(|(s, _)| *s),
            status_field(pid, "Threads"),
            read_in(&cpu_group, "cpu.stat"),
        );
        assert!(
            during <= 2.0 * usual,
            "the quiet sandbox slowed down: {during:.1} ms vs {usual:.1} ms"
        );
        // Whether the noisy guest itself came back is its own business; said, not required.
        let back = tokio::time::timeout(Duration::from_secs(30), a.try_sh(&noisy, "true", 10)).await;
        eprintln!(
            "fork bomb: the noisy guest answers again within 30 s: {}",
            matches!(back, Ok((200, _)))
        );
        a.destroy(&quiet).await;
        a.destroy(&noisy).await;
        for d in cg.dirs_for(&dir) {
            assert!(!d.exists(), "cgroup {d:?} left after destroy");
        }
        let _ = std::fs::remove_dir_all(&a.data_dir);
    });
}
