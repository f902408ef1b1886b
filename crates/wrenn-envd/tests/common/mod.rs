//! Test harness: starts the real `wrenn-envd` binary on 127.0.0.1 with an ephemeral port and
//! stops it when dropped. Shared by every integration test of envd.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wrenn-envd");

/// A running envd, killed on drop.
pub struct Envd {
    child: Child,
    pub addr: SocketAddr,
}

impl Envd {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts envd with extra flags and waits until it logs its listening address.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::spawn(Command::new(BIN), extra)
    }

    /// Starts envd with SIGINT and SIGQUIT ignored, as a shell without job control starts a
    /// background job (a guest's init may start envd so).
    pub fn start_ignoring_interrupts() -> Self {
        let mut sh = Command::new("sh");
        sh.args(["-c", "trap '' INT QUIT; exec \"$0\" \"$@\"", BIN]);
        Self::spawn(sh, &[])
    }

    fn spawn(mut command: Command, extra: &[&str]) -> Self {
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            // Must not reach the commands envd runs (tests check that).
            .env("WRENN_TEST_LEAK", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wrenn-envd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Keep reading the log for the daemon's whole life, so it never blocks on stderr.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("envd: {line}");
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let (Some(t), Ok(addr)) = (tx.take(), rest.trim().parse::<SocketAddr>()) {
                        let _ = t.send(addr);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("envd did not report its address");
        Envd { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/exec/stream", self.addr)
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// POSTs `body` to `/exec`; returns the status and the JSON answer.
pub async fn exec(envd: &Envd, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = http()
        .post(envd.url("/exec"))
        .json(&body)
        .send()
        .await
        .expect("send /exec");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json answer"))
}

/// True once `pid` has exited (gone, or a zombie waiting for a parent that is not envd).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Waits up to 10 s for `pid` to be gone.
pub fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    process_gone(pid)
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

/// Asserts an envd error answer: status, stable code, and the `{"error":{...}}` shape.
pub fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "answer: {body}");
    assert_eq!(body["error"]["code"], want_code, "answer: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "answer: {body}"
    );
}
