//! Large exec output end to end: a real `wrenn up` and real microVMs. Twenty buffered execs at
//! once, each printing 32 MiB, on two sandboxes: every one answers 200 with exit code 0, the
//! first 1 MiB of its output (the default cap, kept by envd in the guest), `stdout_truncated`
//! and the total byte count, while the `wrenn up` process's resident memory (sampled all
//! through the run) stays under a stated bound. An exec stream whose client reads nothing
//! while its command prints without end is disconnected after the stall time (3 s here), its
//! command ends in the guest, and the process's memory stays under the same bound.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`) built with
//! this tree's envd. Slots 9950-9999, network prefix `xl`. `WRENN_XL_EXECS` and `WRENN_XL_MIB`
//! change the number of execs and the MiB each prints (for measuring). The last test to end
//! stops `wrenn up` with SIGTERM (its network namespaces go with it) and removes the scratch
//! data dir; a failed or filtered run leaves them to the next run's start.
//! Run: `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test exec_limits_e2e`

mod common;

use common::{enter, rss_bytes, rt, Ticket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default output cap of a buffered exec (`ExecLimits::default().max_output_bytes`).
const CAP: u64 = 1024 * 1024;
/// The bound on the `wrenn up` process's resident memory during the run. Measured (TCG, two
/// cores): 53 MiB before, a peak of 85 MiB during the twenty execs (VmHWM 86 MiB), all twenty
/// answered in 20 s; without the caps four such execs grew it from 119 to 211 MiB and failed.
const RSS_BOUND: u64 = 128 * 1024 * 1024;

/// The stall time of this binary's `wrenn up` (which reads `WRENN_STREAM_STALL_MS`); set
/// before the suite starts, by whichever test comes first.
const STALL_MS: u64 = 3000;

fn start() {
    std::env::set_var("WRENN_STREAM_STALL_MS", STALL_MS.to_string());
    common::use_slots("xl", 9950);
}

/// Samples the resident memory of `pid` every 50 ms until `done`; the peak.
fn sample_peak(pid: u32, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !done.load(Ordering::SeqCst) {
            if let Some(rss) = rss_bytes(pid) {
                peak = peak.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

/// Tests of this binary; the last one to end tears the daemon down ([`finish`]).
const TESTS: usize = 2;
static FINISHED: AtomicUsize = AtomicUsize::new(0);

/// Ends a test that passed; the last one stops `wrenn up` cleanly and removes its data dir.
async fn finish(t: Ticket) {
    drop(t);
    if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 < TESTS {
        return;
    }
    let x = common::enter_exclusive().await;
    let status = x.suite.stop(nix::sys::signal::Signal::SIGTERM).await;
    assert!(status.success(), "wrenn up exit: {status}");
    let left = common::processes_of(&x.suite.data_dir);
    assert!(left.is_empty(), "processes left after stopping: {left:?}");
    let _ = std::fs::remove_dir_all(&x.suite.data_dir);
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn twenty_execs_printing_32_mib_each_are_capped_and_memory_stays_bounded() {
    start();
    rt().block_on(async {
        let t = enter().await;
        let api = t.suite.api(&t.suite.alice);
        let execs = env_num("WRENN_XL_EXECS", 20);
        let mib = env_num("WRENN_XL_MIB", 32);
        let total = mib * 1024 * 1024;

        // Two sandboxes, so the twenty stay within the default 16 per sandbox.
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (sb, _) = api.create(json!({})).await;
            ids.push(sb["id"].as_str().unwrap().to_string());
        }

        let pid = t.suite.daemon_pid();
        let before = rss_bytes(pid).expect("daemon RSS");
        let done = Arc::new(AtomicBool::new(false));
        let sampler = sample_peak(pid, done.clone());

        // Prints `total` bytes of 'x' on stdout and a short line on stderr.
        let script = format!("head -c {total} /dev/zero | tr '\\0' x; echo done >&2");
        let began = Instant::now();
        let tasks: Vec<_> = (0..execs)
            .map(|i| {
                let api = api.clone();
                let id = ids[i as usize % ids.len()].clone();
                let body = json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 1800});
                tokio::spawn(async move {
                    let (s, v) = api.post(&format!("/v1/sandboxes/{id}/exec"), body).await;
                    (s, v)
                })
            })
            .collect();
        let mut answers: Vec<(u16, Value)> = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let took = began.elapsed();
        done.store(true, Ordering::SeqCst);
        let peak = sampler.await.unwrap().max(before);
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        eprintln!(
            "[numbers] {execs} execs x {mib} MiB in {took:?}; wrenn up RSS before {} MiB, \
             peak {} MiB ({hwm})",
            before / (1024 * 1024),
            peak / (1024 * 1024)
        );

        for (s, v) in &answers {
            assert_eq!(*s, 200, "exec: {v}");
            assert_eq!(v["exit_code"], 0, "{v}");
            assert_eq!(v["encoding"], "utf-8");
            let stdout = v["stdout"].as_str().unwrap();
            let kept = CAP.min(total);
            assert_eq!(stdout.len() as u64, kept, "kept output");
            assert!(stdout.bytes().all(|b| b == b'x'));
            assert_eq!(
                v["stdout_truncated"],
                total > CAP,
                "{}",
                v["stdout_truncated"]
            );
            assert_eq!(v["stdout_bytes"], total);
            assert_eq!(v["stderr"], "done\n");
            assert_eq!(v["stderr_truncated"], false);
            assert_eq!(v["stderr_bytes"], 5);
        }
        assert!(
            peak < RSS_BOUND,
            "wrenn up's RSS peaked at {} MiB, over the bound of {} MiB",
            peak / (1024 * 1024),
            RSS_BOUND / (1024 * 1024)
        );

        for id in &ids {
            api.destroy(id).await;
        }
        finish(t).await;
    });
}

#[test]
fn a_stream_client_that_reads_nothing_is_disconnected_and_its_command_ends() {
    start();
    rt().block_on(async {
        let t = enter().await;
        let api = t.suite.api(&t.suite.alice);
        let (sb, _) = api.create(json!({})).await;
        let id = sb["id"].as_str().unwrap().to_string();
        let pid = t.suite.daemon_pid();
        let done = Arc::new(AtomicBool::new(false));
        let sampler = sample_peak(pid, done.clone());

        // Prints without end; this client never reads.
        let mut ws = api.exec_stream(&id).await.expect("exec stream");
        let start = json!({"type": "start", "cmd": "sh",
                           "args": ["-c", "echo $$ > /tmp/flood.pid; exec yes flood"]});
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            start.to_string().into(),
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(STALL_MS * 4)).await;

        // The server has given up on this client: what reached the socket before drains, then
        // the stream ends.
        let began = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            let mut bytes = 0usize;
            let end = loop {
                match ws.next().await {
                    Some(Ok(m)) if !m.is_close() => bytes += m.len(),
                    Some(Ok(m)) => break format!("{m:?}"),
                    Some(Err(e)) => break format!("error: {e}"),
                    None => break "end".into(),
                }
            };
            (bytes, end)
        })
        .await
        .expect("the stream of a stalled client did not end");
        eprintln!(
            "[numbers] stalled stream: {} KiB were in flight, drained in {:?}, then {}",
            ended.0 / 1024,
            began.elapsed(),
            ended.1
        );

        // And the command it ran is gone from the guest.
        // (A killed process that envd has not reaped yet is a zombie: gone as well.)
        let check = "p=$(cat /tmp/flood.pid); \
            s=$(sed -n 's/^State:[[:space:]]*//p' /proc/$p/status 2>/dev/null); \
            case \"$s\" in ''|Z*) echo gone;; *) echo \"alive $s\"; ps -eo pid,stat,args;; esac";
        let mut state = String::new();
        for _ in 0..240 {
            state = api.sh(&id, check).await;
            if state.trim() == "gone" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            state.trim(),
            "gone",
            "the stalled stream's command still runs"
        );
        eprintln!(
            "[numbers] stalled stream: command gone {:?} after the stream ended",
            began.elapsed()
        );

        done.store(true, Ordering::SeqCst);
        let peak = sampler.await.unwrap();
        eprintln!(
            "[numbers] stalled stream: wrenn up RSS peak {} MiB",
            peak / (1024 * 1024)
        );
        assert!(
            peak < RSS_BOUND,
            "wrenn up's RSS peaked at {} MiB during the stalled stream",
            peak / (1024 * 1024)
        );
        api.destroy(&id).await;
        finish(t).await;
    });
}
