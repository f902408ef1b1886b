//! Buffered exec (`POST /exec`): run a command to completion, capture stdout and stderr up to
//! a cap each, kill the whole process group on timeout, and package the result.
//!
//! Process creation lives in [`crate::process`]; this module only waits and collects.

use crate::process::{self, SpawnError, Spec};
use crate::users::UserDb;
use base64::Engine as _;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use wrenn_types::envd::{Encoding, ExecRequest, ExecResponse};

/// After the command's main process exits, output still in flight is read for at most this
/// long (a background process that keeps the pipe open must not hold the answer back).
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Timeouts beyond this are treated as this (one year; avoids overflow in time arithmetic).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
const READ_CHUNK: usize = 64 * 1024;

/// Why a buffered exec failed before producing a result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The command could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Waiting for the process failed (should not happen; reported instead of panicking).
    #[error("waiting for the process failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// One captured stream: at most `cap` bytes kept, the rest read and dropped (so the command
/// never blocks on a full pipe and the daemon's memory stays bounded), and every byte counted.
#[derive(Debug, Default)]
struct Capture {
    data: Vec<u8>,
    truncated: bool,
    /// Bytes read in all, kept or not.
    total: u64,
}

async fn capture<R: AsyncRead + Unpin>(mut reader: R, cap: usize, out: &mut Capture) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                out.total += n as u64;
                let room = cap.saturating_sub(out.data.len());
                if n > room {
                    out.truncated = true;
                }
                out.data.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs `req` to completion. `default_cap` applies when the request sets no cap of its own.
pub async fn run(
    db: &UserDb,
    req: &ExecRequest,
    default_cap: usize,
) -> Result<ExecResponse, ExecError> {
    let spec = Spec {
        cmd: req.cmd.clone(),
        args: req.args.clone(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        user: req.user.clone(),
    };
    let cap = req.max_output_bytes.unwrap_or(default_cap).min(default_cap);
    let timeout = req
        .timeout_sec
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s).min(MAX_TIMEOUT));

    let began = Instant::now();
    let mut started = process::spawn(db, &spec)?;
    let stdout = started.child.stdout.take();
    let stderr = started.child.stderr.take();
    let mut out = Capture::default();
    let mut err = Capture::default();

    let (status, timed_out) = {
        let readers = async {
            let o = async {
                if let Some(s) = stdout {
                    capture(s, cap, &mut out).await;
                }
            };
            let e = async {
                if let Some(s) = stderr {
                    capture(s, cap, &mut err).await;
                }
            };
            tokio::join!(o, e);
        };
        tokio::pin!(readers);
        let mut readers_done = false;

        // Read output while waiting, so a chatty command never blocks on a full pipe.
        let outcome = {
            let child = &mut started.child;
            let waited = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
                    None => Some(child.wait().await),
                }
            };
            tokio::pin!(waited);
            loop {
                tokio::select! {
                    w = &mut waited => break w,
                    () = &mut readers, if !readers_done => readers_done = true,
                }
            }
        };
        let result = match outcome {
            Some(status) => (status.map_err(ExecError::Wait)?, false),
            None => {
                // Timed out: the leader is not reaped yet, so its pid still names the group.
                started.kill_group();
                (started.child.wait().await.map_err(ExecError::Wait)?, true)
            }
        };
        if !readers_done {
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut readers).await;
        }
        result
    };

    let exit_code = if timed_out {
        -1
    } else {
        process::exit_code(status)
    };
    let duration_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(cmd = %req.cmd, exit_code, timed_out, duration_ms, "exec");
    Ok(package(out, err, exit_code, duration_ms, timed_out))
}

/// Drops a character cut in half by the cap, so truncated text stays valid UTF-8.
fn trim_cut_char(c: &mut Capture) {
    if c.truncated {
        let keep = crate::utf8::complete_prefix_len(&c.data);
        c.data.truncate(keep);
    }
}

fn package(
    mut out: Capture,
    mut err: Capture,
    exit_code: i32,
    duration_ms: u64,
    timed_out: bool,
) -> ExecResponse {
    trim_cut_char(&mut out);
    trim_cut_char(&mut err);
    let (stdout_truncated, stderr_truncated) = (out.truncated, err.truncated);
    let (stdout_bytes, stderr_bytes) = (out.total, err.total);
    let (stdout, stderr, encoding) =
        match (String::from_utf8(out.data), String::from_utf8(err.data)) {
            (Ok(o), Ok(e)) => (o, e, Encoding::Utf8),
            (o, e) => {
                let bytes = |r: Result<String, std::string::FromUtf8Error>| match r {
                    Ok(s) => s.into_bytes(),
                    Err(e) => e.into_bytes(),
                };
                let b64 = base64::engine::general_purpose::STANDARD;
                (b64.encode(bytes(o)), b64.encode(bytes(e)), Encoding::Base64)
            }
        };
    ExecResponse {
        stdout,
        stderr,
        exit_code,
        duration_ms,
        encoding,
        timed_out,
        truncated: stdout_truncated || stderr_truncated,
        stdout_truncated,
        stderr_truncated,
        stdout_bytes,
        stderr_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(data: &[u8], truncated: bool) -> Capture {
        Capture {
            data: data.to_vec(),
            truncated,
            total: data.len() as u64 + u64::from(truncated) * 1000,
        }
    }

    #[test]
    fn utf8_output_stays_text() {
        let r = package(cap(b"hi\n", false), cap("é".as_bytes(), false), 0, 1, false);
        assert_eq!(r.encoding, Encoding::Utf8);
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("hi\n", "é"));
        assert!(!r.truncated);
    }

    #[test]
    fn invalid_utf8_in_either_stream_makes_both_base64() {
        let r = package(cap(b"ok", false), cap(b"\xff\xfe", false), 1, 1, false);
        assert_eq!(r.encoding, Encoding::Base64);
        assert_eq!(r.stdout, "b2s=");
        assert_eq!(r.stderr, "//4=");
    }

    #[test]
    fn cap_cutting_a_character_does_not_force_base64() {
        // "aé" cut after the first byte of "é" by the cap.
        let r = package(cap(b"a\xc3", true), cap(b"", false), 0, 1, false);
        assert_eq!(r.encoding, Encoding::Utf8);
        assert_eq!(r.stdout, "a");
        assert!(r.truncated);
        assert!(r.stdout_truncated && !r.stderr_truncated);
        assert_eq!((r.stdout_bytes, r.stderr_bytes), (1002, 0));
    }

    /// A stream longer than the cap keeps exactly the cap's bytes, counts all of them and
    /// says it was cut; reading goes on to the end (the writer is never left blocked).
    #[tokio::test]
    async fn capture_keeps_the_cap_and_counts_everything() {
        let (mut w, r) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'x'; 10_000];
            for _ in 0..100 {
                w.write_all(&chunk).await.unwrap();
            }
        });
        let mut c = Capture::default();
        capture(r, 4_000, &mut c).await;
        writer.await.unwrap();
        assert_eq!(c.data.len(), 4_000);
        assert!(c.truncated);
        assert_eq!(c.total, 1_000_000);

        let mut small = Capture::default();
        capture(&b"hello"[..], 4_000, &mut small).await;
        assert_eq!(
            (small.data.as_slice(), small.truncated, small.total),
            (&b"hello"[..], false, 5)
        );
    }

    #[test]
    fn a_multibyte_character_cut_by_the_cap_is_dropped_whole() {
        // "é€" is 5 bytes; a cap of 4 keeps "é" and the first two bytes of "€".
        let mut c = cap("é€".as_bytes(), true);
        c.data.truncate(4);
        let r = package(c, cap(b"", false), 0, 1, false);
        assert_eq!(r.encoding, Encoding::Utf8);
        assert_eq!(r.stdout, "é");
    }
}
