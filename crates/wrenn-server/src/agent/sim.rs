//! [`SimAgent`]: a simulated host agent for control-plane tests, in the spirit of a
//! simulated sled agent. Sandboxes are records in memory with the same state machine as the
//! real agent (running ⇄ paused, snapshot removes the sandbox); files are real files in a
//! scratch directory (so large uploads are streamed to disk, not held in memory); exec
//! understands a handful of commands: `echo`, `true`, `false`, `pwd`, `env`, `cat FILE`,
//! `seq N`, `sleep SECS`, `python3 -c 'print(INTEGER EXPRESSION)'`, `sh -c 'exit N'` and
//! `sh -c` of one simple command of those (quoted words, no operators). Anything else exits
//! 127. It runs no VM.

use super::{AgentApiError, AgentResult, ByteStream, ExecSession, FileBody, HostAgent};
use async_trait::async_trait;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use wrenn_types::agent::{
    Accel, AgentErrorCode, CreateSandbox, HostInfo, SandboxInfo, SandboxStatus, SnapshotRequest,
    TemplateInfo, TemplateKind,
};
use wrenn_types::envd::{Encoding, ExecRequest, ExecResponse};
use wrenn_types::stream::{ClientMessage, ServerMessage};
use wrenn_types::time::Timestamp;

/// Memory the simulated host pretends to have.
const SIM_TOTAL_MEMORY_MB: u64 = 16 * 1024;

struct SimSandbox {
    info: SandboxInfo,
    /// Guest path → file in the scratch directory.
    files: HashMap<String, PathBuf>,
}

struct SimTemplate {
    info: TemplateInfo,
    files: HashMap<String, PathBuf>,
}

#[derive(Default)]
struct SimState {
    sandboxes: HashMap<String, SimSandbox>,
    templates: HashMap<String, SimTemplate>,
}

/// The simulated agent.
pub struct SimAgent {
    state: Mutex<SimState>,
    scratch: tempfile::TempDir,
    next_file: AtomicU64,
    host_index: u8,
    fail_creates: AtomicBool,
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
            fail_creates: AtomicBool::new(false),
        })
    }

    /// Makes every following create fail with an internal error (to test error paths).
    pub fn set_fail_creates(&self, fail: bool) {
        self.fail_creates.store(fail, Ordering::SeqCst);
    }

    /// Status of a sandbox as the simulated host sees it.
    pub fn sandbox_status(&self, id: &str) -> Option<SandboxStatus> {
        self.lock().sandboxes.get(id).map(|s| s.info.status)
    }

    /// Names of all templates (base and snapshot) on the simulated host.
    pub fn template_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().templates.keys().cloned().collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
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

fn now() -> String {
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

/// The simulated command interpreter: `(stdout, stderr, exit_code)`.
fn run_command(
    cmd: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: Option<&str>,
    files: &HashMap<String, PathBuf>,
) -> (String, String, i32) {
    match cmd {
        "echo" => (format!("{}\n", args.join(" ")), String::new(), 0),
        "true" => (String::new(), String::new(), 0),
        "false" => (String::new(), String::new(), 1),
        "pwd" => (
            format!("{}\n", cwd.unwrap_or("/home/user")),
            String::new(),
            0,
        ),
        "env" => {
            let out: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            (out, String::new(), 0)
        }
        "cat" => {
            let mut out = String::new();
            for a in args {
                match files.get(a).map(std::fs::read) {
                    Some(Ok(bytes)) => out.push_str(&String::from_utf8_lossy(&bytes)),
                    _ => return (out, format!("cat: {a}: No such file or directory\n"), 1),
                }
            }
            (out, String::new(), 0)
        }
        "seq" => match args.first().and_then(|n| n.parse::<u32>().ok()) {
            Some(n) => (
                (1..=n).map(|i| format!("{i}\n")).collect(),
                String::new(),
                0,
            ),
            None => (String::new(), "seq: missing operand\n".into(), 1),
        },
        "sh" if args.len() == 2 && args[0] == "-c" => {
            let script = args[1].trim();
            match script
                .strip_prefix("exit ")
                .map(|n| n.trim().parse::<i32>())
            {
                Some(Ok(code)) => (String::new(), String::new(), code),
                _ => match split_simple_command(script) {
                    Some(words) if words[0] != "sh" => {
                        run_command(&words[0], &words[1..], env, cwd, files)
                    }
                    _ => (
                        String::new(),
                        format!("sim: unsupported script {script:?}\n"),
                        2,
                    ),
                },
            }
        }
        "python3" if args.len() == 2 && args[0] == "-c" => {
            let value = args[1]
                .trim()
                .strip_prefix("print(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|e| IntExpr(e.as_bytes(), 0).eval());
            match value {
                Some(v) => (format!("{v}\n"), String::new(), 0),
                None => (
                    String::new(),
                    format!("sim: unsupported python {:?}\n", args[1]),
                    1,
                ),
            }
        }
        other => (
            String::new(),
            format!("sim: {other}: command not found\n"),
            127,
        ),
    }
}

/// Splits one simple command into words (single and double quotes, no escapes); `None` when
/// the script uses shell syntax the simulation does not interpret.
fn split_simple_command(script: &str) -> Option<Vec<String>> {
    let (mut words, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in script.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, in_word) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if std::mem::take(&mut in_word) {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, ';' | '&' | '|' | '<' | '>' | '$' | '`' | '(' | ')' | '\\' | '*' | '?') => {
                return None
            }
            (None, c) => (word, in_word) = (word + &c.to_string(), true),
        }
    }
    if in_word {
        words.push(word);
    }
    (quote.is_none() && !words.is_empty()).then_some(words)
}

/// Integer arithmetic as Python prints it: `+ - * // %` and parentheses, checked.
struct IntExpr<'a>(&'a [u8], usize);

impl IntExpr<'_> {
    fn eval(mut self) -> Option<i64> {
        let v = self.sum()?;
        self.skip_ws();
        (self.1 == self.0.len()).then_some(v)
    }
    fn skip_ws(&mut self) {
        while self.0.get(self.1).is_some_and(|c| c.is_ascii_whitespace()) {
            self.1 += 1;
        }
    }
    fn eat(&mut self, op: &str) -> bool {
        self.skip_ws();
        let hit = self.0[self.1..].starts_with(op.as_bytes());
        if hit {
            self.1 += op.len();
        }
        hit
    }
    fn sum(&mut self) -> Option<i64> {
        let mut v = self.product()?;
        loop {
            if self.eat("+") {
                v = v.checked_add(self.product()?)?;
            } else if self.eat("-") {
                v = v.checked_sub(self.product()?)?;
            } else {
                return Some(v);
            }
        }
    }
    fn product(&mut self) -> Option<i64> {
        let mut v = self.atom()?;
        loop {
            if self.eat("*") {
                v = v.checked_mul(self.atom()?)?;
            } else if self.eat("//") {
                let d = self.atom()?;
                let (q, r) = (v.checked_div(d)?, v.checked_rem(d)?);
                v = if r != 0 && (r < 0) != (d < 0) {
                    q - 1
                } else {
                    q
                };
            } else if self.eat("%") {
                let d = self.atom()?;
                let r = v.checked_rem(d)?;
                v = if r != 0 && (r < 0) != (d < 0) {
                    r + d
                } else {
                    r
                };
            } else {
                return Some(v);
            }
        }
    }
    fn atom(&mut self) -> Option<i64> {
        if self.eat("(") {
            let v = self.sum()?;
            return self.eat(")").then_some(v);
        }
        if self.eat("-") {
            return self.atom()?.checked_neg();
        }
        let start = self.1;
        while self.0.get(self.1).is_some_and(|c| c.is_ascii_digit()) {
            self.1 += 1;
        }
        std::str::from_utf8(&self.0[start..self.1])
            .ok()?
            .parse()
            .ok()
    }
}

#[async_trait]
impl HostAgent for SimAgent {
    async fn host_info(&self) -> AgentResult<HostInfo> {
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
        })
    }

    async fn list_sandboxes(&self) -> AgentResult<Vec<SandboxInfo>> {
        Ok(self
            .lock()
            .sandboxes
            .values()
            .map(|s| s.info.clone())
            .collect())
    }

    async fn create(&self, req: &CreateSandbox) -> AgentResult<SandboxInfo> {
        if self.fail_creates.load(Ordering::SeqCst) {
            return Err(internal("simulated VM boot failure"));
        }
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
        };
        self.lock().sandboxes.insert(
            req.id.clone(),
            SimSandbox {
                info: info.clone(),
                files,
            },
        );
        Ok(info)
    }

    async fn get_sandbox(&self, id: &str) -> AgentResult<SandboxInfo> {
        let st = self.lock();
        let sb = st.sandboxes.get(id).ok_or_else(|| not_found(id))?;
        Ok(sb.info.clone())
    }

    async fn destroy(&self, id: &str) -> AgentResult<()> {
        let sb = self
            .lock()
            .sandboxes
            .remove(id)
            .ok_or_else(|| not_found(id))?;
        for f in sb.files.values() {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    async fn pause(&self, id: &str) -> AgentResult<SandboxInfo> {
        self.transition(id, SandboxStatus::Running, |info| {
            info.status = SandboxStatus::Paused;
            info.host_ip = String::new();
        })
    }

    async fn resume(&self, id: &str) -> AgentResult<SandboxInfo> {
        let host_ip = format!("10.{}.9.{}", 200 + self.host_index, id.len());
        self.transition(id, SandboxStatus::Paused, |info| {
            info.status = SandboxStatus::Running;
            info.host_ip = host_ip;
            info.started_at = Some(now());
        })
    }

    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> AgentResult<TemplateInfo> {
        let files = self.running_files(id)?;
        if !req.overwrite && self.lock().templates.contains_key(&req.name) {
            return Err(AgentApiError::new(
                AgentErrorCode::AlreadyExists,
                format!("template {} exists", req.name),
            ));
        }
        let copied = self.copy_files(&files)?;
        let mut st = self.lock();
        let sb = st.sandboxes.remove(id).ok_or_else(|| not_found(id))?;
        for f in sb.files.values() {
            let _ = std::fs::remove_file(f);
        }
        let size: u64 = copied
            .values()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let info = TemplateInfo {
            name: req.name.clone(),
            kind: TemplateKind::Snapshot,
            vcpus: Some(sb.info.vcpus),
            memory_mb: Some(sb.info.memory_mb),
            size_bytes: u64::from(sb.info.memory_mb) * 1024 * 1024 + size,
            created_at: now(),
        };
        st.templates.insert(
            req.name.clone(),
            SimTemplate {
                info: info.clone(),
                files: copied,
            },
        );
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
            let timed_out = limit.is_some_and(|l| secs > l);
            return Ok(ExecResponse {
                stdout: String::new(),
                stderr: String::new(),
                exit_code: if timed_out { -1 } else { 0 },
                duration_ms: started.elapsed().as_millis() as u64,
                encoding: Encoding::Utf8,
                timed_out,
                truncated: false,
            });
        }
        let (stdout, stderr, exit_code) =
            run_command(&req.cmd, &req.args, &req.env, req.cwd.as_deref(), &files);
        Ok(ExecResponse {
            stdout,
            stderr,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
            encoding: Encoding::Utf8,
            timed_out: false,
            truncated: false,
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

    async fn list_templates(&self) -> AgentResult<Vec<TemplateInfo>> {
        let mut v: Vec<TemplateInfo> = self
            .lock()
            .templates
            .values()
            .map(|t| t.info.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str, args: &[&str]) -> (String, String, i32) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run_command(cmd, &args, &Default::default(), None, &HashMap::new())
    }

    #[test]
    fn python_prints_integer_expressions_like_python() {
        assert_eq!(run("python3", &["-c", "print(6*7)"]).0, "42\n");
        assert_eq!(run("python3", &["-c", "print((1 + 2) * -3)"]).0, "-9\n");
        assert_eq!(run("python3", &["-c", "print(-7 // 2, )"]).2, 1);
        assert_eq!(run("python3", &["-c", "print(-7 // 2)"]).0, "-4\n");
        assert_eq!(run("python3", &["-c", "print(-7 % 3)"]).0, "2\n");
        assert_eq!(run("python3", &["-c", "print(1 // 0)"]).2, 1);
        assert_eq!(run("python3", &["-c", "import os"]).2, 1);
    }

    #[test]
    fn sh_runs_one_simple_command() {
        assert_eq!(run("sh", &["-c", "echo 'a  b' c"]).0, "a  b c\n");
        assert_eq!(run("sh", &["-c", "python3 -c 'print(2+3)'"]).0, "5\n");
        assert_eq!(run("sh", &["-c", "exit 3"]).2, 3);
        assert_eq!(run("sh", &["-c", "echo a; echo b"]).2, 2);
        assert_eq!(run("sh", &["-c", "echo 'open"]).2, 2);
    }
}
