//! Interactive terminals (`/pty`): each one a pseudo-terminal whose slave side is the stdio and
//! controlling terminal of a command in its own session, kept in [`Terminals`] by tag so a
//! client can leave and connect again. Its output goes into a bounded ring ([`RING_BYTES`]) that
//! a connecting client is replayed from; keystrokes go through a bounded channel to a writer
//! thread, so a program that stops reading holds the client back instead of growing a buffer.
//!
//! The WebSocket session is [`crate::pty_session`]'s; this module owns the terminals.

use crate::process::{self, SpawnError, Spec};
use crate::users::UserDb;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

/// Output kept per terminal for clients that connect later.
pub const RING_BYTES: usize = 64 * 1024;
/// Terminals one guest keeps (running or finished but not yet seen to end).
pub const MAX_TERMINALS: usize = 16;
/// Largest piece of output handed to a client at once.
pub const READ_CHUNK: usize = 32 * 1024;
/// Keystroke messages queued for the writer thread.
const INPUT_QUEUE: usize = 16;

/// Why a terminal could not be started or found.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{0}")]
    Invalid(String),
    #[error("no terminal with tag {0}")]
    NotFound(String),
    #[error("too many terminals (at most {MAX_TERMINALS}); kill one first")]
    TooMany,
    #[error("cannot open a pseudo-terminal: {0}")]
    Open(String),
}

/// What a new terminal runs, as the client's `start` asks.
pub struct StartSpec {
    pub cmd: String,
    pub args: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
}

struct Output {
    ring: VecDeque<u8>,
    /// Bytes ever written; the ring holds the last `ring.len()` of them.
    end: u64,
    /// The leader has been reaped: its pid no longer names its group.
    reaped: bool,
    exit: Option<i32>,
}

/// One terminal.
pub struct Term {
    pub tag: String,
    pub pid: u32,
    master: OwnedFd,
    input: mpsc::Sender<Bytes>,
    out: Mutex<Output>,
    changed: Notify,
}

/// Output read from a cursor: the bytes and the cursor after them.
pub struct Chunk {
    pub data: Vec<u8>,
    pub next: u64,
    pub more: bool,
}

impl Term {
    fn out(&self) -> MutexGuard<'_, Output> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A future that completes at the next output or exit (enable before reading).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The cursor of the oldest output kept.
    pub fn oldest(&self) -> u64 {
        let o = self.out();
        o.end - o.ring.len() as u64
    }

    /// Output from `cursor` (or the oldest kept, if later), at most [`READ_CHUNK`] bytes, and
    /// the exit code once the process has ended and all its output was read.
    pub fn read(&self, cursor: u64) -> (Chunk, Option<i32>) {
        let o = self.out();
        let start = o.end - o.ring.len() as u64;
        let from = cursor.max(start);
        let skip = (from - start) as usize;
        let take = (o.ring.len() - skip).min(READ_CHUNK);
        let data: Vec<u8> = o.ring.iter().skip(skip).take(take).copied().collect();
        let next = from + take as u64;
        let more = next < o.end;
        let exit = if more { None } else { o.exit };
        (Chunk { data, next, more }, exit)
    }

    /// Queues keystrokes; waits while the writer is behind. `false` once the terminal is gone.
    pub async fn write(&self, data: Bytes) -> bool {
        self.input.send(data).await.is_ok()
    }

    /// Sets the window size (the foreground job gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), PtyError> {
        check_size(cols, rows)?;
        let ws = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer; the fd is ours.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(PtyError::Open(std::io::Error::last_os_error().to_string()));
        }
        Ok(())
    }

    /// SIGKILL to the terminal's process group, while its leader runs.
    pub fn kill(&self) {
        let o = self.out();
        if !o.reaped {
            // SAFETY: kill(2) on the group the unreaped leader (checked under the lock the
            // reaper takes) leads; no memory is involved.
            unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
        }
    }

    /// Whether the process has ended.
    pub fn exited(&self) -> bool {
        self.out().exit.is_some()
    }

    fn push(&self, data: &[u8]) {
        let mut o = self.out();
        o.end += data.len() as u64;
        let data = &data[data.len().saturating_sub(RING_BYTES)..];
        let over = (o.ring.len() + data.len()).saturating_sub(RING_BYTES);
        o.ring.drain(..over);
        o.ring.extend(data);
        drop(o);
        self.changed.notify_waiters();
    }

    fn finish(&self, code: i32) {
        self.out().exit = Some(code);
        self.changed.notify_waiters();
    }
}

fn check_size(cols: u16, rows: u16) -> Result<(), PtyError> {
    let max = wrenn_types::pty::MAX_PTY_SIDE;
    if cols == 0 || rows == 0 || cols > max || rows > max {
        return Err(PtyError::Invalid(format!(
            "cols and rows must be between 1 and {max}"
        )));
    }
    Ok(())
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The terminals of this guest, by tag.
#[derive(Default)]
pub struct Terminals {
    by_tag: Mutex<HashMap<String, Arc<Term>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Terminals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminals")
            .field("count", &self.table().len())
            .finish()
    }
}

impl Terminals {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Arc<Term>>> {
        self.by_tag.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The terminal named `tag`.
    pub fn find(&self, tag: &str) -> Result<Arc<Term>, PtyError> {
        self.table()
            .get(tag)
            .cloned()
            .ok_or_else(|| PtyError::NotFound(tag.to_string()))
    }

    /// Forgets a finished terminal (its end was seen by a client).
    pub fn forget(&self, term: &Term) {
        let mut t = self.table();
        if t.get(&term.tag).is_some_and(|x| x.exited()) {
            t.remove(&term.tag);
        }
    }

    /// Starts a terminal. Finished terminals are forgotten first if the table is full.
    pub fn start(&self, users: &UserDb, req: StartSpec) -> Result<Arc<Term>, PtyError> {
        check_size(req.cols, req.rows)?;
        {
            let mut t = self.table();
            if t.len() >= MAX_TERMINALS {
                t.retain(|_, term| !term.exited());
            }
            if t.len() >= MAX_TERMINALS {
                return Err(PtyError::TooMany);
            }
        }
        let pty = nix::pty::openpty(Some(&winsize(req.cols, req.rows)), None)
            .map_err(|e| PtyError::Open(e.to_string()))?;
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| PtyError::Open(e.to_string()))?;
        }
        let mut env = req.envs;
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
        let spec = Spec {
            cmd: req.cmd,
            args: req.args,
            env,
            cwd: req.cwd,
            user: req.user,
        };
        let reader = std::fs::File::from(
            pty.master
                .try_clone()
                .map_err(|e| PtyError::Open(e.to_string()))?,
        );
        let writer = std::fs::File::from(
            pty.master
                .try_clone()
                .map_err(|e| PtyError::Open(e.to_string()))?,
        );
        let started = process::spawn_on_tty(users, &spec, pty.slave)?;
        let pid = started.pid;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (input, input_rx) = mpsc::channel(INPUT_QUEUE);
        let term = Arc::new(Term {
            tag: format!("pty-{pid}-{n}"),
            pid,
            master: pty.master,
            input,
            out: Mutex::new(Output {
                ring: VecDeque::new(),
                end: 0,
                reaped: false,
                exit: None,
            }),
            changed: Notify::new(),
        });
        self.table().insert(term.tag.clone(), term.clone());
        run(term.clone(), started, reader, writer, input_rx);
        tracing::info!(pid, tag = %term.tag, "terminal started");
        Ok(term)
    }
}

/// The threads and task of one terminal: output into the ring, keystrokes out of the queue,
/// and the exit once the process is reaped and its output read.
fn run(
    term: Arc<Term>,
    mut started: process::Started,
    mut reader: std::fs::File,
    mut writer: std::fs::File,
    mut input: mpsc::Receiver<Bytes>,
) {
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    let t = term.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => t.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: every slave copy is closed.
                Err(_) => break,
            }
        }
        let _ = eof_tx.send(());
    });
    std::thread::spawn(move || {
        while let Some(data) = input.blocking_recv() {
            if writer.write_all(&data).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let status = started.child.wait().await;
        term.out().reaped = true;
        // Output still in flight from the last writes; a background job that keeps the
        // terminal open does not hold the exit back for long.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), eof_rx).await;
        let code = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1)
            }
            Err(_) => -1,
        };
        tracing::info!(pid = term.pid, tag = %term.tag, exit_code = code, "terminal ended");
        term.finish(code);
    });
}
