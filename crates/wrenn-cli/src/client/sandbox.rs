//! `wrenn sandbox …`: create, list, get, exec, pause, resume, rm (and `shell`, in
//! [`super::shell`]). Exec replays the command's stdout and stderr on ours (decoding base64
//! output) and exits with its exit code.

use super::api::{segment, Auth, Failure};
use super::output::{fields, table, when, Spinner};
use super::{out, shell, Ctx};
use base64::Engine;
use clap::Subcommand;
use reqwest::Method;
use std::collections::BTreeMap;
use std::io::Write;
use wrenn_types::api::{CreateSandboxRequest, ExecRequest, ExecResponse, Sandbox};

/// What `exec` exits with when the command was killed (signal or timeout), like timeout(1).
pub const KILLED_EXIT_CODE: i32 = 124;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and wait until it runs.
    Create {
        /// Template or snapshot to start from (server default: minimal).
        #[arg(long)]
        template: Option<String>,
        /// Virtual CPUs.
        #[arg(long)]
        vcpus: Option<i64>,
        /// Memory in MiB.
        #[arg(long = "memory", value_name = "MB")]
        memory_mb: Option<i64>,
        /// Auto-pause after this many idle seconds (0: never).
        #[arg(long = "timeout", value_name = "SEC")]
        timeout_sec: Option<i64>,
    },
    /// List the team's sandboxes.
    List,
    /// Show one sandbox.
    Get {
        /// Sandbox ID.
        id: String,
    },
    /// Run a command and wait for it; prints its stdout and stderr and exits with its code.
    ///
    /// Example: wrenn sandbox exec ID -- python3 -c 'print(6*7)'. The command runs without a
    /// shell (use `sh -c '…'` for pipes). A command killed by a signal or by --timeout exits
    /// with 124.
    Exec {
        /// Sandbox ID.
        id: String,
        /// Environment variable for the command (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        /// Seconds before the command is killed (server default: 30).
        #[arg(long = "timeout", value_name = "SEC")]
        timeout_sec: Option<i64>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// An interactive terminal in a running sandbox.
    #[command(long_about = shell::LONG_ABOUT)]
    Shell {
        /// Sandbox ID.
        id: String,
    },
    /// Pause a running sandbox: its state is saved to disk and its VM released.
    Pause {
        /// Sandbox ID.
        id: String,
    },
    /// Resume a paused sandbox where it left off.
    Resume {
        /// Sandbox ID.
        id: String,
    },
    /// Destroy a sandbox.
    #[command(visible_alias = "delete")]
    Rm {
        /// Sandbox ID.
        id: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: SandboxCommand) -> Result<i32, Failure> {
    match cmd {
        SandboxCommand::Create {
            template,
            vcpus,
            memory_mb,
            timeout_sec,
        } => {
            let body = CreateSandboxRequest {
                template,
                vcpus,
                memory_mb,
                timeout_sec,
                network: None,
            };
            let rb = ctx
                .api
                .request(Method::POST, "/v1/sandboxes", Auth::Key)?
                .json(&body);
            let spin = Spinner::start("creating sandbox");
            let result = ctx.api.json::<Sandbox>(rb).await;
            drop(spin);
            show_one(ctx, result?);
        }
        SandboxCommand::List => {
            let rb = ctx.api.request(Method::GET, "/v1/sandboxes", Auth::Key)?;
            let (list, raw) = ctx.api.json::<Vec<Sandbox>>(rb).await?;
            if ctx.json {
                ctx.print_json(&raw);
            } else {
                let rows: Vec<Vec<String>> = list
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.id,
                            s.status,
                            s.template,
                            s.vcpus.to_string(),
                            s.memory_mb.to_string(),
                            when(Some(&s.created_at)),
                        ]
                    })
                    .collect();
                out(&table(
                    &["ID", "STATUS", "TEMPLATE", "VCPUS", "MEMORY", "CREATED"],
                    &rows,
                ));
            }
        }
        SandboxCommand::Get { id } => {
            let rb = ctx.api.request(Method::GET, &path(&id, ""), Auth::Key)?;
            show_one(ctx, ctx.api.json::<Sandbox>(rb).await?);
        }
        SandboxCommand::Exec {
            id,
            env,
            cwd,
            timeout_sec,
            command,
        } => return exec(ctx, &id, env, cwd, timeout_sec, command).await,
        SandboxCommand::Shell { id } => return shell::run(ctx, &id).await,
        SandboxCommand::Pause { id } => {
            let rb = ctx
                .api
                .request(Method::POST, &path(&id, "/pause"), Auth::Key)?;
            let spin = Spinner::start("pausing sandbox");
            let result = ctx.api.json::<Sandbox>(rb).await;
            drop(spin);
            show_one(ctx, result?);
        }
        SandboxCommand::Resume { id } => {
            let rb = ctx
                .api
                .request(Method::POST, &path(&id, "/resume"), Auth::Key)?;
            let spin = Spinner::start("resuming sandbox");
            let result = ctx.api.json::<Sandbox>(rb).await;
            drop(spin);
            show_one(ctx, result?);
        }
        SandboxCommand::Rm { id } => {
            let rb = ctx.api.request(Method::DELETE, &path(&id, ""), Auth::Key)?;
            ctx.api.send(rb).await?;
            if !ctx.json {
                out(&format!("Removed sandbox {id}.\n"));
            }
        }
    }
    Ok(0)
}

/// `/v1/sandboxes/{id}{rest}`.
pub fn path(id: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{}{rest}", segment(id))
}

fn show_one(ctx: &Ctx, (sb, raw): (Sandbox, serde_json::Value)) {
    if ctx.json {
        ctx.print_json(&raw);
        return;
    }
    let timeout = if sb.timeout_sec > 0 {
        format!("{}s idle", sb.timeout_sec)
    } else {
        "never".into()
    };
    out(&fields(&[
        ("id", sb.id),
        ("status", sb.status),
        ("template", sb.template),
        ("vcpus", sb.vcpus.to_string()),
        ("memory", format!("{} MiB", sb.memory_mb)),
        ("auto-pause", timeout),
        ("created", when(Some(&sb.created_at))),
        ("started", when(sb.started_at.as_deref())),
        ("last active", when(sb.last_active_at.as_deref())),
    ]));
}

/// Parses `K=V` pairs.
fn parse_env(pairs: Vec<String>) -> Result<BTreeMap<String, String>, Failure> {
    let mut env = BTreeMap::new();
    for p in pairs {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                env.insert(k.to_string(), v.to_string());
            }
            _ => return Err(Failure::local(format!("--env takes K=V, got {p:?}"))),
        }
    }
    Ok(env)
}

async fn exec(
    ctx: &Ctx,
    id: &str,
    env: Vec<String>,
    cwd: Option<String>,
    timeout_sec: Option<i64>,
    command: Vec<String>,
) -> Result<i32, Failure> {
    let mut words = command.into_iter();
    let cmd = words
        .next()
        .ok_or_else(|| Failure::local("no command given"))?;
    let body = ExecRequest {
        cmd,
        args: words.collect(),
        timeout_sec,
        env: parse_env(env)?,
        cwd,
    };
    let rb = ctx
        .api
        .request(Method::POST, &path(id, "/exec"), Auth::Key)?
        .json(&body);
    let (resp, raw) = ctx.api.json::<ExecResponse>(rb).await?;
    if ctx.json {
        ctx.print_json(&raw);
    } else {
        let (stdout, stderr) = decode_output(&resp)?;
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&stdout);
        let _ = o.flush();
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&stderr);
        let _ = e.flush();
    }
    Ok(exit_code(resp.exit_code))
}

/// Maps the API's exit code to ours: -1 (killed) becomes [`KILLED_EXIT_CODE`].
pub fn exit_code(code: i32) -> i32 {
    if (0..=255).contains(&code) {
        code
    } else {
        KILLED_EXIT_CODE
    }
}

/// The command's stdout and stderr as bytes, decoding base64 output.
fn decode_output(r: &ExecResponse) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    if r.encoding == "base64" {
        let b64 = base64::engine::general_purpose::STANDARD;
        let dec = |s: &str| {
            b64.decode(s)
                .map_err(|e| Failure::local(format!("server sent invalid base64 output: {e}")))
        };
        Ok((dec(&r.stdout)?, dec(&r.stderr)?))
    } else {
        Ok((r.stdout.clone().into_bytes(), r.stderr.clone().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs() {
        let env = parse_env(vec!["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
        assert!(parse_env(vec!["novalue".into()]).is_err());
        assert!(parse_env(vec!["=v".into()]).is_err());
    }

    #[test]
    fn base64_output_is_decoded() {
        let r = ExecResponse {
            sandbox_id: "s".into(),
            cmd: "c".into(),
            stdout: "/wA=".into(),
            stderr: "aGk=".into(),
            exit_code: 0,
            duration_ms: 1,
            encoding: "base64".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: 2,
            stderr_bytes: 2,
        };
        assert_eq!(
            decode_output(&r).unwrap(),
            (vec![0xff, 0x00], b"hi".to_vec())
        );
        assert_eq!(exit_code(-1), KILLED_EXIT_CODE);
        assert_eq!(exit_code(3), 3);
    }
}
