//! A small QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! One reader task owns the socket's read half: it hands each command's answer to the caller
//! waiting for it (matched by `id`) and drops asynchronous events except the ones that say the
//! VM went away. When the socket closes (QEMU exited or was killed), [`Qmp::closed`] resolves,
//! which is how the VM layer notices a dead QEMU. This module knows QMP, not VMs.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

/// A QMP failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened or written, or closed while a command was pending.
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// QEMU said something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("QMP command {0} timed out")]
    Timeout(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected, capabilities-negotiated QMP session. Dropping it closes the connection
/// (QEMU serves one QMP client at a time, so a session left open would lock others out).
pub struct Qmp {
    path: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    closed: watch::Receiver<bool>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Resolves when `rx` says closed or its sender is gone.
async fn wait_closed(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Qmp {
    /// Connects to the socket, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Arc<Qmp>, QmpError> {
        let p = path.display().to_string();
        let io = |source| QmpError::Io {
            path: p.clone(),
            source,
        };
        let stream = UnixStream::connect(path).await.map_err(io)?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("greeting (is another client connected?)".into()))?
            .map_err(io)?
            .ok_or_else(|| QmpError::Protocol("socket closed before greeting".into()))?;
        if !greeting.contains("\"QMP\"") {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting: {greeting}"
            )));
        }
        let pending: Pending = Arc::default();
        let (closed_tx, closed_rx) = watch::channel(false);
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(id) = v.get("id").and_then(Value::as_u64) else {
                    continue; // an event
                };
                let Some(tx) = reader_pending.lock().expect("qmp pending lock").remove(&id) else {
                    continue;
                };
                let answer = if let Some(r) = v.get("return") {
                    Ok(r.clone())
                } else if let Some(e) = v.get("error") {
                    Err(QmpError::Command {
                        command: String::new(),
                        class: e["class"].as_str().unwrap_or("").to_string(),
                        desc: e["desc"].as_str().unwrap_or("").to_string(),
                    })
                } else {
                    Err(QmpError::Protocol(format!("unexpected answer: {line}")))
                };
                let _ = tx.send(answer);
            }
            // Socket gone: fail everything still waiting.
            for (_, tx) in reader_pending.lock().expect("qmp pending lock").drain() {
                let _ = tx.send(Err(QmpError::Protocol("QMP socket closed".into())));
            }
            let _ = closed_tx.send(true);
        })
        .abort_handle();
        let qmp = Arc::new(Qmp {
            path: p,
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            closed: closed_rx,
            reader,
        });
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// Connects, retrying while the socket does not exist yet or refuses, for up to `within`.
    pub async fn connect_retry(path: &Path, within: Duration) -> Result<Arc<Qmp>, QmpError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Qmp::connect(path).await {
                Ok(q) => return Ok(q),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, Duration::from_secs(30))
            .await
    }

    /// Runs one command, failing with [`QmpError::Timeout`] after `timeout`.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("qmp pending lock")
            .insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if let Err(source) = w.write_all(line.as_bytes()).await {
                self.pending.lock().expect("qmp pending lock").remove(&id);
                return Err(QmpError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(QmpError::Command { class, desc, .. }))) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(QmpError::Protocol("QMP reader ended".into())),
            Err(_) => {
                self.pending.lock().expect("qmp pending lock").remove(&id);
                Err(QmpError::Timeout(command.to_string()))
            }
        }
    }

    /// Hands QEMU an open file under `name` (QMP `getfd`, the descriptor sent with the
    /// command as `SCM_RIGHTS`), for a migration URI `fd:<name>`. QEMU keeps its own copy.
    pub async fn send_fd(
        &self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), QmpError> {
        use std::os::fd::AsRawFd;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = format!(
            "{}\n",
            json!({ "execute": "getfd", "arguments": { "fdname": name }, "id": id })
        );
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("qmp pending lock")
            .insert(id, tx);
        let io_err = |source| QmpError::Io {
            path: self.path.clone(),
            source,
        };
        {
            let w = self.writer.lock().await;
            let stream: &UnixStream = w.as_ref();
            let raw = fd.as_raw_fd();
            let sent = loop {
                stream.writable().await.map_err(io_err)?;
                match stream.try_io(tokio::io::Interest::WRITABLE, || {
                    send_with_fd(stream.as_raw_fd(), line.as_bytes(), raw)
                }) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => break r,
                }
            };
            match sent {
                Ok(n) if n == line.len() => {}
                Ok(_) => {
                    return Err(QmpError::Protocol("getfd command cut short".into()));
                }
                Err(e) => {
                    self.pending.lock().expect("qmp pending lock").remove(&id);
                    return Err(io_err(e));
                }
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(QmpError::Command { class, desc, .. }))) => Err(QmpError::Command {
                command: "getfd".into(),
                class,
                desc,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(QmpError::Protocol("QMP reader ended".into())),
            Err(_) => {
                self.pending.lock().expect("qmp pending lock").remove(&id);
                Err(QmpError::Timeout("getfd".into()))
            }
        }
    }

    /// True once the socket has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when the socket closes (QEMU exited).
    pub async fn closed(&self) {
        wait_closed(self.closed.clone()).await
    }

    /// A future that resolves when the socket closes or this session is dropped; it does not
    /// keep the session open.
    pub fn closed_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        wait_closed(self.closed.clone())
    }
}

/// One `sendmsg` of `data` carrying `fd` as `SCM_RIGHTS`.
fn send_with_fd(sock: i32, data: &[u8], fd: i32) -> std::io::Result<usize> {
    // SAFETY: `msghdr` and the control buffer are plain C structs on the stack, laid out with
    // the CMSG_* helpers for exactly one descriptor; the iovec points at `data`, alive for the
    // call.
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let mut control = [0u64; 8];
        assert!(space <= std::mem::size_of_val(&control));
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QMP server that answers each command with `{"return": {"cmd": <name>}}`,
    /// except `boom`, which errors, and sends an event before every answer.
    async fn fake_server(path: &Path) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                if cmd == "quit" {
                    return;
                }
                w.write_all(b"{\"event\": \"STOP\"}\n").await.unwrap();
                let ans = if cmd == "boom" {
                    json!({"error": {"class": "GenericError", "desc": "it broke"}, "id": v["id"]})
                } else {
                    json!({"return": {"cmd": cmd}, "id": v["id"]})
                };
                w.write_all(format!("{ans}\n").as_bytes()).await.unwrap();
            }
        });
    }

    #[tokio::test]
    async fn commands_events_errors_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        fake_server(&path).await;
        let q = Qmp::connect(&path).await.unwrap();
        let r = q.execute("query-status", Value::Null).await.unwrap();
        assert_eq!(r["cmd"], "query-status");
        let e = q.execute("boom", Value::Null).await.unwrap_err();
        assert!(e.to_string().contains("it broke"), "{e}");
        assert!(!q.is_closed());
        let _ = q
            .execute_timeout("quit", Value::Null, Duration::from_millis(200))
            .await;
        tokio::time::timeout(Duration::from_secs(2), q.closed())
            .await
            .unwrap();
        assert!(q.is_closed());
    }
}
