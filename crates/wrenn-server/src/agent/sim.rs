//! [`SimAgent`]: a simulated host agent for control-plane tests, in the spirit of a
//! simulated sled agent. Sandboxes are records in memory with the same state machine as the
//! real agent (running ⇄ paused, snapshot removes the sandbox); files are real files in a
//! scratch directory (so large uploads are streamed to disk, not held in memory); exec
//! understands a handful of commands: `echo`, `true`, `false`, `pwd`, `env`, `cat FILE`,
//! `seq N`, `sleep SECS`, `python3 -c 'print(INTEGER EXPRESSION)'`, `sh -c 'exit N'` and
//! `sh -c` of one simple command of those (quoted words, no operators). Anything else exits
//! 127 (the interpreter is `sim_exec`). Tests can make it slow, failing or forgetful
//! (`sim_faults`). It runs no VM.

use super::sim_exec::run_command;
use super::sim_faults::{Faults, SimOp};
use super::{AgentApiError, AgentResult, ByteStream, ExecSession, FileBody, HostAgent};
use async_trait::async_trait;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use wrenn_types::agent::{
    Accel, AgentErrorCode, CreateSandbox, HostInfo, SandboxInfo, SandboxStatus, SnapshotRequest,
    TemplateInfo, TemplateKind,
};
use wrenn_types::envd::{Encoding, ExecRequest, ExecResponse};
use wrenn_types::fs::{FileEntry, ListDirRequest, ListDirResponse};
use wrenn_types::observe::MetricPoint;
use wrenn_types::process::{ProcessInfo, Signal, StartProcess};
use wrenn_types::stream::{ClientMessage, ServerMessage};
use wrenn_types::time::Timestamp;

/// Memory the simulated host pretends to have.
const SIM_TOTAL_MEMORY_MB: u64 = 16 * 1024;
/// Free disk the simulated host reports, MiB.
const SIM_DISK_FREE_MB: u64 = 100 * 1024;
/// The capacity the simulated agent reports for every guest disk.
const SIM_DISK_SIZE_MB: u64 = 2048;

pub(super) struct SimSandbox {
    pub(super) info: SandboxInfo,
    /// Guest path → file in the scratch directory.
    pub(super) files: HashMap<String, PathBuf>,
}

pub(super) struct SimTemplate {
    pub(super) info: TemplateInfo,
    pub(super) files: HashMap<String, PathBuf>,
}

#[derive(Default)]
pub(super) struct SimState {
    pub(super) sandboxes: HashMap<String, SimSandbox>,
    pub(super) templates: HashMap<String, SimTemplate>,
    /// Directories made by `mkdir`, by sandbox (`sim_fs`).
    pub(super) dirs: HashMap<String, std::collections::BTreeSet<String>>,
    /// Background processes, by sandbox (`sim_procs`).
    pub(super) procs: HashMap<String, Vec<super::sim_procs::SimProc>>,
    /// The egress policy each create asked for, by sandbox.
    pub(super) networks: HashMap<String, wrenn_types::network::SandboxNetwork>,
    /// Ports a test exposed, by sandbox and guest port (`sim_ports`).
    pub(super) ports: HashMap<(String, u16), std::net::SocketAddr>,
}

/// The simulated agent.
pub struct SimAgent {
    state: Mutex<SimState>,
    scratch: tempfile::TempDir,
    next_file: AtomicU64,
    host_index: u8,
    pub(super) faults: Faults,
    pub(super) copies: super::sim_copy::Copies,
}

impl SimAgent {
    /// A simulated host with the given base templates. `host_index` makes its `host_ip`s
    /// differ from other simulated hosts'.
    pub fn new(base_templates: &[&str], host_index: u8) -> std::io::Result<Self> {
        let mut state = SimState::default();
        for name in base_templates {
            state.templates.insert(
                name.to_string(),
                SimTemplate {
                    info: TemplateInfo {
                        name: name.to_string(),
                        kind: TemplateKind::Base,
                        vcpus: None,
                        memory_mb: None,
                        size_bytes: 512 * 1024 * 1024,
                        created_at: now(),
                    },
                    files: HashMap::new(),
                },
            );
        }
        Ok(Self {
            state: Mutex::new(state),
            scratch: tempfile::Builder::new().prefix("wrenn-sim-").tempdir()?,
            next_file: AtomicU64::new(0),
            host_index,
            faults: Faults::default(),
            copies: super::sim_copy::Copies::new()?,
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_file(&self) -> PathBuf {
        let n = self.next_file.fetch_add(1, Ordering::SeqCst);
        self.scratch.path().join(format!("f{n}"))
    }

    /// Copies files to fresh scratch files (snapshot and create-from-snapshot).
    fn copy_files(
        &self,
        files: &HashMap<String, PathBuf>,
    ) -> AgentResult<HashMap<String, PathBuf>> {
        let mut out = HashMap::new();
        for (guest, real) in files {
            let dst = self.new_file();
            std::fs::copy(real, &dst).map_err(internal)?;
            out.insert(guest.clone(), dst);
        }
        Ok(out)
    }

    /// Checks the sandbox exists and is running; returns a copy of its file map.
    fn running_files(&self, id: &str) -> AgentResult<HashMap<String, PathBuf>> {
        let mut st = self.lock();
        Ok(in_status(&mut st, id, SandboxStatus::Running)?
            .files
            .clone())
    }

    /// Turns a sandbox into the template `name` holding `files` (the sandbox is gone).
    fn make_template(
        &self,
        id: &str,
        name: &str,
        files: HashMap<String, PathBuf>,
    ) -> AgentResult<TemplateInfo> {
        let mut st = self.lock();
        let sb = st.sandboxes.remove(id).ok_or_else(|| not_found(id))?;
        for f in sb.files.values() {
            let _ = std::fs::remove_file(f);
        }
        let size: u64 = files
            .values()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let info = TemplateInfo {
            name: name.to_string(),
            kind: TemplateKind::Snapshot,
            vcpus: Some(sb.info.vcpus),
            memory_mb: Some(sb.info.memory_mb),
            size_bytes: u64::from(sb.info.memory_mb) * 1024 * 1024 + size,
            created_at: now(),
        };
        st.templates.insert(
            name.to_string(),
            SimTemplate {
                info: info.clone(),
                files,
            },
        );
        Ok(info)
    }

    /// Applies `change` to a sandbox in status `from`; the sandbox as it is afterwards.
    fn transition(
        &self,
        id: &str,
        from: SandboxStatus,
        change: impl FnOnce(&mut SandboxInfo),
    ) -> AgentResult<SandboxInfo> {
        let mut st = self.lock();
        let sb = in_status(&mut st, id, from)?;
        change(&mut sb.info);
        Ok(sb.info.clone())
    }
}

/// The sandbox `id`, if it is in `status`.
fn in_status<'a>(
    st: &'a mut SimState,
    id: &str,
    status: SandboxStatus,
) -> AgentResult<&'a mut SimSandbox> {
    let sb = st.sandboxes.get_mut(id).ok_or_else(|| not_found(id))?;
    if sb.info.status != status {
        return Err(conflict(id, sb.info.status));
    }
    Ok(sb)
}

pub(super) fn now() -> String {
    Timestamp::now().to_string()
}

fn internal(e: impl std::fmt::Display) -> AgentApiError {
    AgentApiError::new(AgentErrorCode::Internal, e.to_string())
}

fn not_found(id: &str) -> AgentApiError {
    AgentApiError::new(AgentErrorCode::NotFound, format!("sandbox {id} not found"))
}

fn conflict(id: &str, status: SandboxStatus) -> AgentApiError {
    AgentApiError::new(
        AgentErrorCode::Conflict,
        format!("sandbox {id} is {}", status.as_str()),
    )
}

#[async_trait]
impl HostAgent for SimAgent {
    async fn host_info(&self) -> AgentResult<HostInfo> {
        self.faults.answering()?;
        let st = self.lock();
        let running: Vec<&SimSandbox> = st
            .sandboxes
            .values()
            .filter(|s| s.info.status == SandboxStatus::Running)
            .collect();
        let used: u64 = running.iter().map(|s| u64::from(s.info.memory_mb)).sum();
        let mut templates: Vec<String> = st.templates.keys().cloned().collect();
        templates.sort();
        Ok(HostInfo {
            accel: Accel::Tcg,
            cpus: 2,
            total_memory_mb: SIM_TOTAL_MEMORY_MB,
            free_memory_mb: SIM_TOTAL_MEMORY_MB.saturating_sub(used),
            running: running.len() as u32,
            paused: st
                .sandboxes
                .values()
                .filter(|s| s.info.status == SandboxStatus::Paused)
                .count() as u32,
            templates,
            pooled: 0,
            committed_memory_mb: used,
            commit_limit_mb: SIM_TOTAL_MEMORY_MB,
            disk_free_mb: SIM_DISK_FREE_MB,
        })
    }

    async fn list_sandboxes(&self) -> AgentResult<Vec<SandboxInfo>> {
        self.faults.answering()?;
        Ok(self
            .lock()
            .sandboxes
            .values()
            .map(|s| s.info.clone())
            .collect())
    }

    async fn create(&self, req: &CreateSandbox) -> AgentResult<SandboxInfo> {
        self.faults.fail_if_set(SimOp::Create)?;
        let template_files = {
            let st = self.lock();
            if st.sandboxes.contains_key(&req.id) {
                return Err(AgentApiError::new(
                    AgentErrorCode::Conflict,
                    format!("sandbox {} exists", req.id),
                ));
            }
            let t = st.templates.get(&req.template).ok_or_else(|| {
                AgentApiError::new(
                    AgentErrorCode::TemplateNotFound,
                    format!("template {} not found", req.template),
                )
            })?;
            t.files.clone()
        };
        let files = self.copy_files(&template_files)?;
        let n = self.lock().sandboxes.len() as u32;
        let info = SandboxInfo {
            id: req.id.clone(),
            status: SandboxStatus::Running,
            template: req.template.clone(),
            vcpus: req.vcpus,
            memory_mb: req.memory_mb,
            guest_ip: "172.16.0.2".into(),
            host_ip: format!("10.{}.{}.{}", 200 + self.host_index, n / 250, n % 250 + 1),
            started_at: Some(now()),
            error: None,
            disk_size_mb: None,
        };
        {
            let mut st = self.lock();
            st.sandboxes.insert(
                req.id.clone(),
                SimSandbox {
                    info: info.clone(),
                    files,
                },
            );
            if let Some(network) = &req.network {
                st.networks.insert(req.id.clone(), network.clone());
            }
        }
        self.faults.answer(SimOp::Create).await;
        Ok(info)
    }

    async fn get_sandbox(&self, id: &str) -> AgentResult<SandboxInfo> {
        let st = self.lock();
        let sb = st.sandboxes.get(id).ok_or_else(|| not_found(id))?;
        // As the agent: the disk's capacity on a single sandbox's GET only.
        Ok(SandboxInfo {
            disk_size_mb: Some(SIM_DISK_SIZE_MB),
            ..sb.info.clone()
        })
    }

    async fn destroy(&self, id: &str) -> AgentResult<()> {
        self.faults.fail_if_set(SimOp::Destroy)?;
        let sb = self
            .lock()
            .sandboxes
            .remove(id)
            .ok_or_else(|| not_found(id))?;
        for f in sb.files.values() {
            let _ = std::fs::remove_file(f);
        }
        self.faults.answer(SimOp::Destroy).await;
        Ok(())
    }

    async fn pause(&self, id: &str) -> AgentResult<SandboxInfo> {
        self.faults.fail_if_set(SimOp::Pause)?;
        let info = self.transition(id, SandboxStatus::Running, |info| {
            info.status = SandboxStatus::Paused;
            info.host_ip = String::new();
        })?;
        self.faults.answer(SimOp::Pause).await;
        Ok(info)
    }

    async fn resume(&self, id: &str) -> AgentResult<SandboxInfo> {
        self.faults.fail_if_set(SimOp::Resume)?;
        let host_ip = format!("10.{}.9.{}", 200 + self.host_index, id.len());
        let info = self.transition(id, SandboxStatus::Paused, |info| {
            info.status = SandboxStatus::Running;
            info.host_ip = host_ip;
            info.started_at = Some(now());
        })?;
        self.faults.answer(SimOp::Resume).await;
        Ok(info)
    }

    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> AgentResult<TemplateInfo> {
        self.faults.fail_if_set(SimOp::Snapshot)?;
        // Running or paused, as the real agent takes them.
        let files = {
            let st = self.lock();
            let sb = st.sandboxes.get(id).ok_or_else(|| not_found(id))?;
            if !matches!(
                sb.info.status,
                SandboxStatus::Running | SandboxStatus::Paused
            ) {
                return Err(conflict(id, sb.info.status));
            }
            sb.files.clone()
        };
        if !req.overwrite && self.lock().templates.contains_key(&req.name) {
            return Err(AgentApiError::new(
                AgentErrorCode::AlreadyExists,
                format!("template {} exists", req.name),
            ));
        }
        let copied = self.copy_files(&files)?;
        let info = self.make_template(id, &req.name, copied)?;
        self.faults.answer(SimOp::Snapshot).await;
        Ok(info)
    }

    async fn exec(&self, id: &str, req: &ExecRequest) -> AgentResult<ExecResponse> {
        let files = self.running_files(id)?;
        let started = Instant::now();
        if req.cmd == "sleep" {
            let secs: f64 = req.args.first().and_then(|a| a.parse().ok()).unwrap_or(0.0);
            let limit = req.timeout_sec.filter(|t| *t > 0).map(|t| t as f64);
            let wait = limit.map_or(secs, |l| secs.min(l));
            tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.0, 3600.0))).await;
            // A sandbox paused or destroyed under a running command cuts it off.
            self.running_files(id)?;
            let timed_out = limit.is_some_and(|l| secs > l);
            return Ok(ExecResponse {
                stdout: String::new(),
                stderr: String::new(),
                exit_code: if timed_out { -1 } else { 0 },
                duration_ms: started.elapsed().as_millis() as u64,
                encoding: Encoding::Utf8,
                timed_out,
                truncated: false,
                stdout_truncated: false,
                stderr_truncated: false,
                stdout_bytes: 0,
                stderr_bytes: 0,
            });
        }
        let (stdout, stderr, exit_code) =
            run_command(&req.cmd, &req.args, &req.env, req.cwd.as_deref(), &files);
        let cap = req.max_output_bytes.unwrap_or(usize::MAX);
        let (stdout, stdout_truncated, stdout_bytes) = super::sim_exec::cap_output(stdout, cap);
        let (stderr, stderr_truncated, stderr_bytes) = super::sim_exec::cap_output(stderr, cap);
        Ok(ExecResponse {
            stdout,
            stderr,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
            encoding: Encoding::Utf8,
            timed_out: false,
            truncated: stdout_truncated || stderr_truncated,
            stdout_truncated,
            stderr_truncated,
            stdout_bytes,
            stderr_bytes,
        })
    }

    async fn exec_stream(&self, id: &str) -> AgentResult<ExecSession> {
        let files = self.running_files(id)?;
        let (to_agent, mut rx) = mpsc::channel::<ClientMessage>(16);
        let (tx, from_agent) = mpsc::channel::<ServerMessage>(16);
        tokio::spawn(async move {
            let Some(ClientMessage::Start {
                cmd,
                args,
                env,
                cwd,
                ..
            }) = rx.recv().await
            else {
                let _ = tx
                    .send(ServerMessage::Error {
                        data: "first message must be start".into(),
                    })
                    .await;
                return;
            };
            let _ = tx.send(ServerMessage::Start { pid: 4242 }).await;
            if cmd == "sleep" {
                let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0.0);
                let sleep = tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
                let code = tokio::select! {
                    _ = sleep => 0,
                    m = rx.recv() => match m {
                        Some(ClientMessage::Stop) => -1,
                        _ => return,
                    },
                };
                let _ = tx.send(ServerMessage::Exit { exit_code: code }).await;
                return;
            }
            let (stdout, stderr, code) = run_command(&cmd, &args, &env, cwd.as_deref(), &files);
            // One event per line, as a real process's output would arrive.
            for line in stdout.split_inclusive('\n') {
                let _ = tx.send(ServerMessage::Stdout { data: line.into() }).await;
            }
            if !stderr.is_empty() {
                let _ = tx.send(ServerMessage::Stderr { data: stderr }).await;
            }
            let _ = tx.send(ServerMessage::Exit { exit_code: code }).await;
        });
        Ok(ExecSession {
            to_agent,
            from_agent,
        })
    }

    async fn write_file(&self, id: &str, path: &str, mut body: ByteStream) -> AgentResult<()> {
        if !path.starts_with('/') {
            return Err(AgentApiError::new(
                AgentErrorCode::BadRequest,
                "path must be absolute",
            ));
        }
        self.running_files(id)?;
        let dst = self.new_file();
        let mut f = tokio::fs::File::create(&dst).await.map_err(internal)?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| AgentApiError::Transport(e.to_string()))?;
            f.write_all(&chunk).await.map_err(internal)?;
        }
        f.flush().await.map_err(internal)?;
        let mut st = self.lock();
        let sb = st.sandboxes.get_mut(id).ok_or_else(|| not_found(id))?;
        if let Some(old) = sb.files.insert(path.to_string(), dst) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    async fn read_file_body(&self, id: &str, path: &str) -> AgentResult<FileBody> {
        let files = self.running_files(id)?;
        let real = files.get(path).ok_or_else(|| {
            AgentApiError::new(AgentErrorCode::FileNotFound, format!("{path} not found"))
        })?;
        let f = tokio::fs::File::open(real).await.map_err(internal)?;
        let len = f.metadata().await.map_err(internal)?.len();
        Ok(FileBody {
            len: Some(len),
            stream: Box::pin(tokio_util::io::ReaderStream::new(f)),
        })
    }

    async fn start_process(&self, id: &str, req: &StartProcess) -> AgentResult<ProcessInfo> {
        self.sim_start_process(id, req)
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<ProcessInfo>> {
        self.sim_list_processes(id)
    }

    async fn kill_process(&self, id: &str, selector: &str, _: Signal) -> AgentResult<()> {
        self.sim_kill_process(id, selector)
    }

    async fn attach_process(&self, id: &str, selector: &str) -> AgentResult<ExecSession> {
        self.sim_attach_process(id, selector)
    }

    async fn open_pty(&self, id: &str) -> AgentResult<wrenn_agent_api::PtySession> {
        self.sim_open_pty(id)
    }

    async fn open_port(&self, id: &str, port: u16) -> AgentResult<wrenn_agent_api::PortStream> {
        self.sim_open_port(id, port).await
    }

    async fn list_dir(&self, id: &str, req: &ListDirRequest) -> AgentResult<ListDirResponse> {
        self.sim_list_dir(id, req)
    }

    async fn make_dir(&self, id: &str, path: &str) -> AgentResult<FileEntry> {
        self.sim_make_dir(id, path)
    }

    async fn remove_path(&self, id: &str, path: &str) -> AgentResult<()> {
        self.sim_remove_path(id, path)
    }

    async fn list_templates(&self) -> AgentResult<Vec<TemplateInfo>> {
        self.faults.answering()?;
        let mut v: Vec<TemplateInfo> = self
            .lock()
            .templates
            .values()
            .map(|t| t.info.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn template_copy(&self) -> Option<&dyn wrenn_agent_api::TemplateCopy> {
        Some(self)
    }

    async fn delete_template(&self, name: &str) -> AgentResult<()> {
        let t = self.lock().templates.remove(name).ok_or_else(|| {
            AgentApiError::new(
                AgentErrorCode::TemplateNotFound,
                format!("template {name} not found"),
            )
        })?;
        for f in t.files.values() {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    async fn sandbox_metrics(&self, id: &str, range_secs: u32) -> AgentResult<Vec<MetricPoint>> {
        let st = self.lock();
        let sb = st.sandboxes.get(id).ok_or_else(|| not_found(id))?;
        let now = chrono::Utc::now().timestamp();
        Ok(super::sim_metrics::points(&sb.info, range_secs, now))
    }
}
