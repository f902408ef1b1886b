//! The simulated agent's background processes: a table per sandbox kept in its state. A
//! command (`sh -c` scripts are split at `;`) runs through `sim_exec`'s interpreter at once;
//! a `sleep N` in it keeps the process running for N seconds (or until it is killed), so
//! listing, killing by pid or tag, and attaching to a running process can be tested without
//! VMs. Processes survive a pause and resume, as in a real guest.

use super::sim::SimAgent;
use super::sim_exec::run_command;
use super::{AgentApiError, AgentResult, ExecSession};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use wrenn_types::agent::{AgentErrorCode, SandboxStatus};
use wrenn_types::process::{valid_tag, ProcessInfo, Selector, StartProcess};
use wrenn_types::stream::{ClientMessage, ServerMessage};

/// Most processes per simulated sandbox (as envd's table).
const MAX_PROCESSES: usize = 32;
/// The first pid handed out.
const FIRST_PID: u32 = 1000;

/// One simulated background process.
#[derive(Debug, Clone)]
pub(super) struct SimProc {
    pid: u32,
    tag: String,
    cmd: String,
    args: Vec<String>,
    stdout: String,
    stderr: String,
    code: i32,
    /// When it ends by itself.
    ends_at: Instant,
    /// Set by a kill (shared with the attached sessions' copies).
    killed: Arc<AtomicBool>,
}

impl SimProc {
    fn running(&self) -> bool {
        !self.killed.load(Ordering::SeqCst) && Instant::now() < self.ends_at
    }

    fn exit(&self) -> Option<i32> {
        if self.killed.load(Ordering::SeqCst) {
            Some(-1)
        } else if Instant::now() >= self.ends_at {
            Some(self.code)
        } else {
            None
        }
    }

    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            pid: self.pid,
            tag: self.tag.clone(),
            cmd: self.cmd.clone(),
            args: self.args.clone(),
            running: self.running(),
            exit_code: self.exit(),
        }
    }

    fn is(&self, sel: &Selector) -> bool {
        match sel {
            Selector::Pid(p) => self.pid == *p,
            Selector::Tag(t) => &self.tag == t,
        }
    }
}

fn err(code: AgentErrorCode, message: String) -> AgentApiError {
    AgentApiError::new(code, message)
}

fn parse_selector(s: &str) -> AgentResult<Selector> {
    Selector::parse(s).ok_or_else(|| err(AgentErrorCode::BadRequest, "bad selector".into()))
}

/// Runs a command the way the interpreter can: `(stdout, stderr, code, runs_for)`.
fn simulate(
    cmd: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> (String, String, i32, Duration) {
    let files = Default::default();
    let script = match (cmd.rsplit('/').next(), args) {
        (Some("sh" | "bash"), [c, script]) if c == "-c" => script.clone(),
        _ => {
            let mut words = vec![cmd.to_string()];
            words.extend(args.iter().cloned());
            words.join(" ")
        }
    };
    let (mut out, mut errs, mut code, mut runs) = (String::new(), String::new(), 0, Duration::ZERO);
    for part in script.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(secs) = part.strip_prefix("sleep ") {
            let secs: f64 = secs.trim().parse().unwrap_or(0.0);
            runs += Duration::from_secs_f64(secs.clamp(0.0, 3600.0));
            code = 0;
            continue;
        }
        let (o, e, c) = run_command("sh", &["-c".into(), part.into()], env, cwd, &files);
        out.push_str(&o);
        errs.push_str(&e);
        code = c;
    }
    (out, errs, code, runs)
}

impl SimAgent {
    /// Checks the sandbox exists and runs.
    fn procs_running(&self, id: &str) -> AgentResult<()> {
        let st = self.lock();
        let sb = st
            .sandboxes
            .get(id)
            .ok_or_else(|| err(AgentErrorCode::NotFound, format!("sandbox {id} not found")))?;
        if sb.info.status != SandboxStatus::Running {
            return Err(err(
                AgentErrorCode::Conflict,
                format!("sandbox {id} is {}", sb.info.status.as_str()),
            ));
        }
        Ok(())
    }

    pub(super) fn sim_start_process(
        &self,
        id: &str,
        req: &StartProcess,
    ) -> AgentResult<ProcessInfo> {
        self.procs_running(id)?;
        if req.tag.as_deref().is_some_and(|t| !valid_tag(t)) {
            return Err(err(AgentErrorCode::BadRequest, "invalid tag".into()));
        }
        let (stdout, stderr, code, runs) =
            simulate(&req.cmd, &req.args, &req.env, req.cwd.as_deref());
        let mut st = self.lock();
        let procs = st.procs.entry(id.to_string()).or_default();
        if let Some(tag) = &req.tag {
            if procs.iter().any(|p| &p.tag == tag && p.running()) {
                return Err(err(
                    AgentErrorCode::Conflict,
                    format!("tag {tag} names a running process"),
                ));
            }
            procs.retain(|p| &p.tag != tag);
        }
        if procs.len() >= MAX_PROCESSES {
            match procs.iter().position(|p| !p.running()) {
                Some(i) => {
                    procs.remove(i);
                }
                None => {
                    return Err(err(
                        AgentErrorCode::Conflict,
                        format!("{MAX_PROCESSES} background processes are running"),
                    ))
                }
            }
        }
        let pid = procs.iter().map(|p| p.pid + 1).max().unwrap_or(FIRST_PID);
        let proc = SimProc {
            pid,
            tag: req.tag.clone().unwrap_or_else(|| format!("proc-{pid}")),
            cmd: req.cmd.clone(),
            args: req.args.clone(),
            stdout,
            stderr,
            code,
            ends_at: Instant::now() + runs,
            killed: Arc::new(AtomicBool::new(false)),
        };
        let info = proc.info();
        procs.push(proc);
        Ok(info)
    }

    pub(super) fn sim_list_processes(&self, id: &str) -> AgentResult<Vec<ProcessInfo>> {
        self.procs_running(id)?;
        let st = self.lock();
        let procs = st.procs.get(id).map(Vec::as_slice).unwrap_or_default();
        Ok(procs.iter().map(SimProc::info).collect())
    }

    pub(super) fn sim_kill_process(&self, id: &str, selector: &str) -> AgentResult<()> {
        self.procs_running(id)?;
        let sel = parse_selector(selector)?;
        let mut st = self.lock();
        let proc = st
            .procs
            .get_mut(id)
            .and_then(|ps| ps.iter_mut().find(|p| p.is(&sel) && p.running()))
            .ok_or_else(|| {
                err(
                    AgentErrorCode::ProcessNotFound,
                    format!("no running background process {sel}"),
                )
            })?;
        proc.killed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn find_proc(&self, id: &str, sel: &Selector) -> Option<SimProc> {
        let st = self.lock();
        st.procs.get(id)?.iter().find(|p| p.is(sel)).cloned()
    }

    pub(super) fn sim_attach_process(&self, id: &str, selector: &str) -> AgentResult<ExecSession> {
        self.procs_running(id)?;
        let sel = parse_selector(selector)?;
        let proc = self.find_proc(id, &sel).ok_or_else(|| {
            err(
                AgentErrorCode::ProcessNotFound,
                format!("no background process {sel}"),
            )
        })?;
        let (to_agent, mut rx) = mpsc::channel::<ClientMessage>(16);
        let (tx, from_agent) = mpsc::channel::<ServerMessage>(16);
        tokio::spawn(async move {
            let _ = tx.send(ServerMessage::Start { pid: proc.pid }).await;
            if !proc.stdout.is_empty() {
                let _ = tx
                    .send(ServerMessage::Stdout {
                        data: proc.stdout.clone(),
                    })
                    .await;
            }
            if !proc.stderr.is_empty() {
                let _ = tx
                    .send(ServerMessage::Stderr {
                        data: proc.stderr.clone(),
                    })
                    .await;
            }
            loop {
                if let Some(code) = proc.exit() {
                    let _ = tx.send(ServerMessage::Exit { exit_code: code }).await;
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    m = rx.recv() => if m.is_none() { return },
                }
            }
        });
        Ok(ExecSession {
            to_agent,
            from_agent,
        })
    }
}
