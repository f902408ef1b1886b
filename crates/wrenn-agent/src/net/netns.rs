//! Entering a network namespace: for a child process (before it executes) or for a short-lived
//! thread of this process. Owns nothing but the namespace file descriptors it opens; it never
//! creates or deletes namespaces (that is [`super::slot`]'s job).

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

/// Makes `command` join the network namespace at `path` between fork and exec.
///
/// The namespace file is opened here, in the parent, so the child only makes one system call.
/// The file stays open (close-on-exec) for as long as `command` lives.
pub(crate) fn pre_exec_setns(command: &mut Command, path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: the closure runs in the forked child before exec. It only calls setns(2) on a
    // descriptor that was opened before the fork and converts the errno into an io::Error; it
    // takes no locks and allocates nothing, so it is async-signal-safe.
    unsafe {
        command.pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
    }
    Ok(())
}

/// Runs `f` on a new thread that has joined the network namespace at `path`. Sockets it opens
/// and `/proc/sys/net` files it writes belong to that namespace. The calling thread's own
/// namespace never changes.
pub(crate) fn run_in<T, F>(path: &Path, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(path)?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> io::Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
