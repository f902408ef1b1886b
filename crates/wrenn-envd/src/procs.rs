//! Background processes (`/processes`): the table of processes started to run on their own,
//! each with a bounded ring buffer of its output, its exit code once it has exited, and the
//! wake-up its attached clients wait on.
//!
//! A process is started with [`crate::process::spawn`] (its own session, so its pid is also
//! its process group) and handed to a task that reads its output into the ring and reaps it;
//! nothing of it depends on a connection, so it runs on while nobody is attached and across a
//! pause and resume of the VM. Bounds: at most [`MAX_PROCESSES`] entries, [`RING_BYTES`] of
//! output kept per process (older output is dropped and counted), and an exited process is
//! kept [`KEEP_EXITED`] (or until its entry is needed) so its end can still be read.
//! Streaming the output to a client is [`crate::attach`]'s.

use crate::exec::DRAIN_AFTER_EXIT;
use crate::process::{self, SpawnError, Spec, Started};
use crate::stream::read_opt;
use crate::users::UserDb;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;
use wrenn_types::process::{valid_tag, ProcessInfo, Selector, Signal, StartProcess};

/// Most processes in the table, running or exited.
pub const MAX_PROCESSES: usize = 32;
/// Output kept per process (stdout and stderr together).
pub const RING_BYTES: usize = 1024 * 1024;
/// How long an exited process stays in the table.
pub const KEEP_EXITED: Duration = Duration::from_secs(600);
/// Most output handed to a reader at once.
const MAX_READ: usize = 256 * 1024;
const READ_CHUNK: usize = 32 * 1024;

/// Which pipe output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// Output kept in arrival order, at most `cap` bytes; every byte ever written has an offset,
/// so a reader keeps its place with one number and learns how much it missed.
#[derive(Debug)]
pub struct Ring {
    /// (offset of the first byte, pipe, bytes)
    chunks: VecDeque<(u64, Pipe, Vec<u8>)>,
    bytes: usize,
    cap: usize,
    /// Offset just past the last byte written.
    end: u64,
}

/// What a reader gets from [`Ring::read`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Bytes between the reader's place and the oldest byte still kept.
    pub dropped: u64,
    pub chunks: Vec<(Pipe, Vec<u8>)>,
    /// The reader's place after this read.
    pub next: u64,
    /// More is kept than was handed out (read again at once).
    pub more: bool,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            cap: cap.max(1),
            end: 0,
        }
    }

    pub fn push(&mut self, pipe: Pipe, data: &[u8]) {
        let skip = data.len().saturating_sub(self.cap);
        let kept = &data[skip..];
        let at = self.end + skip as u64;
        self.end += data.len() as u64;
        if kept.is_empty() {
            return;
        }
        while self.bytes + kept.len() > self.cap {
            match self.chunks.pop_front() {
                Some((_, _, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
        self.bytes += kept.len();
        self.chunks.push_back((at, pipe, kept.to_vec()));
    }

    /// The output after `cursor`, up to [`MAX_READ`] bytes (always at least one chunk).
    pub fn read(&self, cursor: u64) -> Read {
        let mut out = Read {
            next: cursor,
            ..Read::default()
        };
        let mut handed = 0usize;
        for (at, pipe, data) in &self.chunks {
            let chunk_end = at + data.len() as u64;
            if chunk_end <= out.next {
                continue;
            }
            if handed > 0 && handed + data.len() > MAX_READ {
                out.more = true;
                break;
            }
            if *at > out.next {
                out.dropped += at - out.next;
                out.next = *at;
            }
            let from = usize::try_from(out.next - at).unwrap_or(0);
            out.chunks.push((*pipe, data[from..].to_vec()));
            handed += data.len() - from;
            out.next = chunk_end;
        }
        if !out.more && out.next < self.end {
            // Written but no longer kept (or cut off a chunk larger than the ring).
            out.dropped += self.end - out.next;
            out.next = self.end;
        }
        out
    }
}

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug)]
struct State {
    ring: Ring,
    /// The leader has been reaped: its pid no longer names its group, so no more signals.
    reaped: bool,
    /// Set when the process has exited and its output has been read to the end.
    exit: Option<i32>,
    exited_at: Option<Instant>,
}

/// One background process.
#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    pub tag: String,
    cmd: String,
    args: Vec<String>,
    state: Mutex<State>,
    notify: Notify,
}

impl Proc {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn info(&self) -> ProcessInfo {
        let st = self.state();
        ProcessInfo {
            pid: self.pid,
            tag: self.tag.clone(),
            cmd: self.cmd.clone(),
            args: self.args.clone(),
            running: !st.reaped,
            exit_code: st.exit,
        }
    }

    /// A wake-up for the next output or the exit; take it before [`Self::read`] so nothing
    /// written in between is missed.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// The output after `cursor`, and the exit code once all of it has been read.
    pub fn read(&self, cursor: u64) -> (Read, Option<i32>) {
        let st = self.state();
        let read = st.ring.read(cursor);
        let exit = if read.more || read.next < st.ring.end {
            None
        } else {
            st.exit
        };
        (read, exit)
    }

    fn push(&self, pipe: Pipe, data: &[u8]) {
        self.state().ring.push(pipe, data);
        self.notify.notify_waiters();
    }

    /// Sends `signal` to the process's group while its leader is unreaped.
    fn signal(&self, signal: Signal) -> Result<(), ProcError> {
        let st = self.state();
        if st.reaped {
            return Err(ProcError::NotFound(format!(
                "process {} has exited",
                self.pid
            )));
        }
        let sig = match signal {
            Signal::Kill => libc::SIGKILL,
            Signal::Term => libc::SIGTERM,
        };
        let pgid = i32::try_from(self.pid).map_err(|_| ProcError::Invalid("bad pid".into()))?;
        // SAFETY: kill(2) on a process group; no memory is involved. The leader is unreaped
        // (checked under the lock the reaper takes), so the group id is still ours.
        if unsafe { libc::kill(-pgid, sig) } != 0 {
            tracing::debug!(pgid, err = %std::io::Error::last_os_error(), "signal process group");
        }
        tracing::info!(pid = self.pid, tag = %self.tag, signal = signal.as_str(), "process signalled");
        Ok(())
    }

    fn gone_since(&self, now: Instant) -> Option<Duration> {
        self.state().exited_at.map(|t| now.duration_since(t))
    }
}

/// The process table.
#[derive(Debug, Default)]
pub struct Table {
    procs: Mutex<Vec<Arc<Proc>>>,
}

impl Table {
    fn procs(&self) -> MutexGuard<'_, Vec<Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `req` in the background.
    pub fn start(&self, users: &UserDb, req: &StartProcess) -> Result<Arc<Proc>, ProcError> {
        if let Some(tag) = &req.tag {
            if !valid_tag(tag) {
                return Err(ProcError::Invalid(format!(
                    "tag must be 1 to {} characters of A-Z a-z 0-9 . _ - and not all digits",
                    wrenn_types::process::MAX_TAG_BYTES
                )));
            }
        }
        let mut procs = self.procs();
        let now = Instant::now();
        procs.retain(|p| p.gone_since(now).is_none_or(|d| d < KEEP_EXITED));
        if let Some(tag) = &req.tag {
            if let Some(p) = procs.iter().find(|p| &p.tag == tag) {
                if p.gone_since(now).is_none() {
                    return Err(ProcError::Conflict(format!(
                        "tag {tag} names a running process (pid {})",
                        p.pid
                    )));
                }
                procs.retain(|p| &p.tag != tag);
            }
        }
        if procs.len() >= MAX_PROCESSES {
            // Make room by forgetting the oldest exited process, if there is one.
            match procs.iter().position(|p| p.gone_since(now).is_some()) {
                Some(i) => {
                    procs.remove(i);
                }
                None => {
                    return Err(ProcError::Conflict(format!(
                        "{MAX_PROCESSES} background processes are running; kill one first"
                    )))
                }
            }
        }
        let spec = Spec {
            cmd: req.cmd.clone(),
            args: req.args.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            user: req.user.clone(),
        };
        let started = process::spawn(users, &spec)?;
        let pid = started.pid;
        // A reused pid replaces the exited process that had it.
        procs.retain(|p| p.pid != pid);
        let tag = match &req.tag {
            Some(t) => t.clone(),
            None => {
                let mut tag = format!("proc-{pid}");
                let mut n = 1;
                while procs.iter().any(|p| p.tag == tag) {
                    n += 1;
                    tag = format!("proc-{pid}-{n}");
                }
                tag
            }
        };
        let proc = Arc::new(Proc {
            pid,
            tag,
            cmd: req.cmd.clone(),
            args: req.args.clone(),
            state: Mutex::new(State {
                ring: Ring::new(RING_BYTES),
                reaped: false,
                exit: None,
                exited_at: None,
            }),
            notify: Notify::new(),
        });
        procs.push(proc.clone());
        tracing::info!(pid, tag = %proc.tag, cmd = %req.cmd, "background process started");
        tokio::spawn(pump(proc.clone(), started));
        Ok(proc)
    }

    /// Every process in the table, oldest first.
    pub fn list(&self) -> Vec<ProcessInfo> {
        self.procs().iter().map(|p| p.info()).collect()
    }

    pub fn find(&self, sel: &Selector) -> Result<Arc<Proc>, ProcError> {
        self.procs()
            .iter()
            .find(|p| match sel {
                Selector::Pid(pid) => p.pid == *pid,
                Selector::Tag(tag) => &p.tag == tag,
            })
            .cloned()
            .ok_or_else(|| ProcError::NotFound(format!("no background process {sel}")))
    }

    pub fn kill(&self, sel: &Selector, signal: Signal) -> Result<(), ProcError> {
        self.find(sel)?.signal(signal)
    }
}

/// Reads the process's output into its ring until it has exited and its pipes are drained
/// (or [`DRAIN_AFTER_EXIT`] has passed since it exited), then records its exit.
async fn pump(p: Arc<Proc>, mut started: Started) {
    let mut stdout = started.child.stdout.take();
    let mut stderr = started.child.stderr.take();
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let mut code: Option<i32> = None;
    let mut drain_until = Instant::now();
    loop {
        if code.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            r = read_opt(&mut stdout, &mut out_buf) => match r {
                Ok(n) if n > 0 => p.push(Pipe::Stdout, &out_buf[..n]),
                _ => stdout = None,
            },
            r = read_opt(&mut stderr, &mut err_buf) => match r {
                Ok(n) if n > 0 => p.push(Pipe::Stderr, &err_buf[..n]),
                _ => stderr = None,
            },
            status = started.child.wait(), if code.is_none() => {
                code = Some(status.map(process::exit_code).unwrap_or(-1));
                p.state().reaped = true;
                drain_until = Instant::now() + DRAIN_AFTER_EXIT;
            },
            () = tokio::time::sleep_until(drain_until), if code.is_some() => break,
        }
    }
    let code = code.unwrap_or(-1);
    {
        let mut st = p.state();
        st.exit = Some(code);
        st.exited_at = Some(Instant::now());
    }
    p.notify.notify_waiters();
    tracing::info!(pid = p.pid, tag = %p.tag, exit_code = code, "background process exited");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Read) -> String {
        r.chunks
            .iter()
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    #[test]
    fn ring_keeps_the_newest_bytes_and_counts_the_rest() {
        let mut ring = Ring::new(10);
        ring.push(Pipe::Stdout, b"aaaa");
        ring.push(Pipe::Stderr, b"bbbb");
        let r = ring.read(0);
        assert_eq!((r.dropped, text(&r).as_str(), r.next), (0, "aaaabbbb", 8));
        ring.push(Pipe::Stdout, b"cccc");
        // "aaaa" is gone: a reader from the start misses 4 bytes.
        let r = ring.read(0);
        assert_eq!((r.dropped, text(&r).as_str(), r.next), (4, "bbbbcccc", 12));
        assert_eq!(r.chunks[0].0, Pipe::Stderr);
        // A reader that had read "aaaa" misses nothing; one up to date gets nothing.
        assert_eq!(ring.read(4).dropped, 0);
        assert_eq!(
            ring.read(12),
            Read {
                next: 12,
                ..Read::default()
            }
        );
    }

    #[test]
    fn a_chunk_larger_than_the_ring_keeps_its_tail() {
        let mut ring = Ring::new(4);
        ring.push(Pipe::Stdout, b"0123456789");
        let r = ring.read(0);
        assert_eq!((r.dropped, text(&r).as_str(), r.next), (6, "6789", 10));
    }

    #[test]
    fn reads_are_handed_out_in_bounded_pieces() {
        let mut ring = Ring::new(RING_BYTES);
        for _ in 0..16 {
            ring.push(Pipe::Stdout, &[b'x'; READ_CHUNK]);
        }
        let first = ring.read(0);
        assert!(first.more);
        assert!(first.chunks.iter().map(|(_, d)| d.len()).sum::<usize>() <= MAX_READ);
        let second = ring.read(first.next);
        assert_eq!(second.dropped, 0);
        assert_eq!(second.next, 16 * READ_CHUNK as u64);
        assert!(!second.more);
    }
}
