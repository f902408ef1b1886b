//! System end-to-end tests: the real `wrenn up` binary (control plane, host agent, SQLite) as a
//! child process, real microVMs (QEMU; TCG here), driven only through the public API over
//! loopback HTTP and WebSocket, as a user would.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`). One daemon
//! is shared by all tests (see `common`); `zz_teardown_leaves_nothing_behind` is dispatched
//! last (the harness runs tests in name order), waits for the others, destroys what is left
//! through the API, stops the daemon and checks that no VM of this data dir survives.
//!
//! Run: `WRENN_DATA_DIR=/var/lib/wrenn cargo test -p wrenn-cli --test system_e2e -- --test-threads 2`
//! (`--nocapture` shows the measured numbers). The tests live in one file per topic beside this one.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod data;
mod restart;
mod sandboxes;

use common::{enter_exclusive, rt};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Bytes that are not a deterministic pattern anyone could fake: a xorshift sequence.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn parse_time(v: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing: {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{field} {s:?}: {e}"))
}

/// Next text frame of an exec stream, parsed (bounded wait). `None` when the socket closed.
pub(crate) async fn next_event(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    wait: Duration,
) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(wait, ws.next())
            .await
            .expect("no exec stream event in time");
        match frame {
            None | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(t.as_str()).expect("event is JSON"))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("exec stream broke: {e}"),
        }
    }
}

#[test]
fn zz_teardown_leaves_nothing_behind() {
    rt().block_on(async {
        common::wait_for_other_tests().await;
        let Some(s) = common::started_suite() else {
            eprintln!("no other test started the daemon; nothing to tear down");
            return;
        };
        let x = enter_exclusive().await;
        assert!(std::ptr::eq(x.suite, s));
        // Whatever failed tests left: destroyed through the API.
        for account in s.accounts() {
            let api = s.api(&account);
            let (st, list) = api.get("/v1/sandboxes").await;
            assert_eq!(st, 200, "{list}");
            for sb in list.as_array().unwrap() {
                api.destroy(sb["id"].as_str().unwrap()).await;
            }
            let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
            for t in snaps.as_array().unwrap() {
                let (st, v) = api
                    .delete(&format!("/v1/snapshots/{}", t["name"].as_str().unwrap()))
                    .await;
                assert_eq!(st, 204, "{v}");
            }
        }
        let qemus: Vec<_> = common::processes_of(&s.data_dir)
            .into_iter()
            .filter(|(pid, _)| *pid as u32 != s.daemon_pid())
            .collect();
        assert!(qemus.is_empty(), "VMs left after destroying all: {qemus:?}");
        let status = s.stop(nix::sys::signal::Signal::SIGTERM).await;
        assert!(status.success(), "wrenn up exit: {status}");
        let left = common::processes_of(&s.data_dir);
        assert!(left.is_empty(), "processes left after stopping: {left:?}");
        // With every sandbox gone, a clean stop leaves no network namespace of its prefix
        // (idle pooled slots are removed at shutdown).
        let prefix = format!("{}-", common::NET_PREFIX);
        let netns = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let kept: Vec<&str> = netns
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(
            kept.is_empty(),
            "network namespaces left after shutdown: {kept:?}"
        );
        common::assert_no_vm_files(&s.data_dir);
        let _ = std::fs::remove_dir_all(&s.data_dir);
    });
}
