//! Runs external programs (`ip`, `iptables`, `qemu-img`, `debootstrap`, …) with arguments
//! passed as a vector, never through a shell. A failure carries the program, its arguments,
//! its exit status and its stderr, so the caller's error says exactly what went wrong.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

/// An external command that failed to start or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started at all (missing binary, permissions).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited with a failure status.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Renders a command line for error messages.
pub fn describe<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs `program args…`, returning its stdout on success.
pub fn run<I, S>(program: &str, args: I) -> Result<Vec<u8>, CmdError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args.clone());
    output(c, describe(program, args)).map(|o| o.stdout)
}

/// Runs a prepared [`Command`] (for callers that set env, cwd or stdin), returning its output
/// on success. `label` names the command in errors.
pub fn output(mut command: Command, label: String) -> Result<Output, CmdError> {
    command.stdin(Stdio::null());
    let out = command.output().map_err(|source| CmdError::Spawn {
        command: label.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CmdError::Failed {
            command: label,
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 4000),
        })
    }
}

/// The last `max` bytes of `s` (on a char boundary), trimmed.
fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr_and_command() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn success_returns_stdout() {
        assert_eq!(run("echo", ["hi"]).unwrap(), b"hi\n");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        assert!(matches!(
            run("/nonexistent/prog", ["x"]),
            Err(CmdError::Spawn { .. })
        ));
    }
}
