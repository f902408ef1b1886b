//! Starts one command the way both exec routes need it: its own session (so the whole process
//! group can be killed), the requested user's uid, gid and supplementary groups, a clean
//! default environment plus the caller's variables, stdin from /dev/null and piped output (or,
//! for a terminal, the slave side of a pseudo-terminal as stdio and controlling terminal).
//!
//! This module owns process creation and group signalling only; reading the output belongs to
//! [`crate::exec`] and [`crate::stream`].

use crate::users::{User, UserDb, UserError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// `PATH` of every command unless the caller sets its own.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Limits on what a caller may send, so a request cannot make the daemon build huge argv.
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 1024;
const MAX_STRING_BYTES: usize = 128 * 1024;

/// What to run and as whom; the part common to `/exec` and `/exec/stream`.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The request itself is malformed (empty command, NUL bytes, too many arguments).
    #[error("{0}")]
    Invalid(String),
    /// The requested user does not exist in the guest.
    #[error(transparent)]
    User(#[from] UserError),
    /// The working directory does not exist or is not a directory.
    #[error("working directory {path}: {reason}")]
    Cwd { path: String, reason: String },
    /// The kernel refused to start the program (missing binary, permissions, bad cwd).
    #[error("cannot run `{cmd}`: {source}")]
    Exec {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// A started command. Owns the child until it is reaped; while it is unreaped its pid is also
/// the id of its process group, so signalling the group cannot hit an unrelated process.
/// Dropped while the command still runs (its caller went away), it kills the group.
pub struct Started {
    pub child: Child,
    pub pid: u32,
}

impl Started {
    /// Sends SIGKILL to the whole process group. Call only before the leader has been reaped
    /// (after that the group id could in principle be reused).
    pub fn kill_group(&self) {
        let Ok(pgid) = i32::try_from(self.pid) else {
            return;
        };
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
        if rc != 0 {
            tracing::debug!(pgid, err = %std::io::Error::last_os_error(), "kill process group");
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // `try_wait` reaps an exited leader (then the group is left alone: background
        // processes of a finished command may keep running) and reports a running one.
        if let Ok(None) = self.child.try_wait() {
            tracing::info!(pid = self.pid, "caller gone; killing the process group");
            self.kill_group();
        }
    }
}

fn check_str(what: &str, s: &str) -> Result<(), SpawnError> {
    if s.contains('\0') {
        return Err(SpawnError::Invalid(format!("{what} contains a NUL byte")));
    }
    if s.len() > MAX_STRING_BYTES {
        return Err(SpawnError::Invalid(format!(
            "{what} is longer than {MAX_STRING_BYTES} bytes"
        )));
    }
    Ok(())
}

fn validate(spec: &Spec) -> Result<(), SpawnError> {
    if spec.cmd.is_empty() {
        return Err(SpawnError::Invalid("cmd is empty".into()));
    }
    check_str("cmd", &spec.cmd)?;
    if spec.args.len() > MAX_ARGS {
        return Err(SpawnError::Invalid(format!(
            "more than {MAX_ARGS} arguments"
        )));
    }
    for a in &spec.args {
        check_str("an argument", a)?;
    }
    if spec.env.len() > MAX_ENV {
        return Err(SpawnError::Invalid(format!(
            "more than {MAX_ENV} environment variables"
        )));
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return Err(SpawnError::Invalid(format!(
                "invalid environment variable name `{k}`"
            )));
        }
        check_str("an environment variable", k)?;
        check_str("an environment variable", v)?;
    }
    if let Some(cwd) = &spec.cwd {
        check_str("cwd", cwd)?;
    }
    if let Some(user) = &spec.user {
        check_str("user", user)?;
    }
    Ok(())
}

/// Who the command runs as: the named user, or the daemon's own identity.
struct Identity {
    /// `Some` when the process must switch ids; `None` keeps the daemon's.
    switch: Option<User>,
    name: String,
    home: PathBuf,
}

fn identity(db: &UserDb, user: Option<&str>) -> Result<Identity, SpawnError> {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let own_uid = unsafe { libc::getuid() };
    match user {
        Some(name) => {
            let u = db.by_name(name)?;
            Ok(Identity {
                name: u.name.clone(),
                home: u.home.clone(),
                switch: (u.uid != own_uid || own_uid == 0).then_some(u),
            })
        }
        None => {
            // The daemon's own user; a uid missing from passwd still runs, with HOME=/.
            let (name, home) = match db.by_uid(own_uid) {
                Ok(u) => (u.name, u.home),
                Err(_) => (own_uid.to_string(), PathBuf::from("/")),
            };
            Ok(Identity {
                switch: None,
                name,
                home,
            })
        }
    }
}

/// Starts `spec` with piped stdout and stderr.
pub fn spawn(db: &UserDb, spec: &Spec) -> Result<Started, SpawnError> {
    spawn_with(db, spec, None)
}

/// Starts `spec` on the terminal whose slave side is `tty`: its stdin, stdout and stderr, and
/// (after `setsid`) its controlling terminal, so job control and Ctrl-C work.
pub fn spawn_on_tty(
    db: &UserDb,
    spec: &Spec,
    tty: std::os::fd::OwnedFd,
) -> Result<Started, SpawnError> {
    spawn_with(db, spec, Some(tty))
}

fn spawn_with(
    db: &UserDb,
    spec: &Spec,
    tty: Option<std::os::fd::OwnedFd>,
) -> Result<Started, SpawnError> {
    validate(spec)?;
    let who = identity(db, spec.user.as_deref())?;

    let cwd = match &spec.cwd {
        Some(cwd) => {
            let p = PathBuf::from(cwd);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => p,
                Ok(_) => {
                    return Err(SpawnError::Cwd {
                        path: cwd.clone(),
                        reason: "not a directory".into(),
                    })
                }
                Err(e) => {
                    return Err(SpawnError::Cwd {
                        path: cwd.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        // A home that does not exist (nobody's /nonexistent) falls back to the root.
        None if who.home.is_dir() => who.home.clone(),
        None => PathBuf::from("/"),
    };

    let mut command = Command::new(&spec.cmd);
    command
        .args(&spec.args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &who.home)
        .env("USER", &who.name)
        .env("LOGNAME", &who.name)
        .env("LANG", "C.UTF-8")
        .envs(&spec.env)
        .current_dir(&cwd);
    let on_tty = tty.is_some();
    match tty {
        Some(fd) => {
            let clone = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone().map_err(|source| SpawnError::Exec {
                    cmd: spec.cmd.clone(),
                    source,
                })
            };
            command
                .stdin(Stdio::from(clone(&fd)?))
                .stdout(Stdio::from(clone(&fd)?))
                .stderr(Stdio::from(fd));
        }
        None => {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }

    let ids = who.switch.map(|u| (u.uid, u.gid, u.groups));
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (setsid, setgroups, setgid, setuid) on data prepared before the fork; it does
    // not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The new session's controlling terminal: stdin, the terminal's slave side.
            if on_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // envd may have been started with SIGINT and SIGQUIT ignored (a background job of
            // a shell without job control), and ignored signals survive exec: a terminal's
            // programs get the default actions, so Ctrl-C and Ctrl-\ work.
            if on_tty {
                for sig in [
                    libc::SIGINT,
                    libc::SIGQUIT,
                    libc::SIGTSTP,
                    libc::SIGTTIN,
                    libc::SIGTTOU,
                ] {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if let Some((uid, gid, groups)) = &ids {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let child = command.spawn().map_err(|source| SpawnError::Exec {
        cmd: spec.cmd.clone(),
        source,
    })?;
    // The command holds the parent's copies of a terminal's slave side until dropped; the
    // master reads end-of-file only once every copy outside the child is closed.
    drop(command);
    let pid = child.id().ok_or_else(|| SpawnError::Exec {
        cmd: spec.cmd.clone(),
        source: std::io::Error::other("child exited before its pid was read"),
    })?;
    Ok(Started { child, pid })
}

/// The exit code the API reports: the process's own, or `-1` when a signal ended it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(-1)
}
