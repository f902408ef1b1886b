//! Test support: a real control plane on a loopback port whose host is the simulated agent
//! served over the real agent HTTP API (in this process, or a `wrenn server` child process
//! with its flags), and a runner of the built `wrenn` binary with a private HOME, pointed at
//! that server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use wrenn_server::agent::sim::SimAgent;
use wrenn_server::agent::sim_server;
use wrenn_server::{build, serve, ServerConfig};

const AGENT_TOKEN: &str = "cli-test-agent-token";
const JWT_SECRET: &[u8] = b"cli-tests-jwt-secret-0123456789abcdef";

/// The runtime that serves every test server of this test binary.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A control plane with one simulated host (base template `minimal`).
pub struct SimServer {
    pub base: String,
    pub sim: Arc<SimAgent>,
    _dir: tempfile::TempDir,
}

impl SimServer {
    pub fn start() -> SimServer {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = ServerConfig::new(dir.path().join("data"), JWT_SECRET);
            let server = build(cfg).await.expect("build server");
            let sim = Arc::new(SimAgent::new(&["minimal"], 0).unwrap());
            let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let agent_url = format!("http://{}", agent_listener.local_addr().unwrap());
            let agent_router = sim_server::router(sim.clone(), AGENT_TOKEN);
            tokio::spawn(async move { axum::serve(agent_listener, agent_router).await });
            server
                .register_host(&agent_url, AGENT_TOKEN)
                .await
                .expect("register host");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let router = server.router();
            tokio::spawn(async move { serve(listener, router).await });
            SimServer {
                base,
                sim,
                _dir: dir,
            }
        })
    }
}

/// A `wrenn server` child process (SQLite in a scratch data directory) whose one host is
/// the simulated agent, served over the agent HTTP API by this test process. Killed on drop.
pub struct ServerProcess {
    pub base: String,
    pub data_dir: PathBuf,
    pub sim: Arc<SimAgent>,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `wrenn server` with `args` added and `envs` set, and waits until it answers.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let (sim, agent_url) = rt().block_on(async {
            let sim = Arc::new(SimAgent::new(&["minimal"], 0).unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let router = sim_server::router(sim.clone(), AGENT_TOKEN);
            tokio::spawn(async move { axum::serve(listener, router).await });
            (sim, url)
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut c = Command::new(wrenn_bin());
        c.arg("server")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", &listen])
            .arg("--agent")
            .arg(format!("{agent_url}={AGENT_TOKEN}"))
            .args(args)
            .env("WRENN_JWT_SECRET", std::str::from_utf8(JWT_SECRET).unwrap())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for k in [
            "DATABASE_URL",
            "GITHUB_CLIENT_ID",
            "GITHUB_CLIENT_SECRET",
            "CP_PUBLIC_URL",
            "WRENN_FAILPOINTS",
            "WRENN_AGENTS",
        ] {
            c.env_remove(k);
        }
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c.spawn().expect("spawn wrenn server");
        let mut srv = ServerProcess {
            base: format!("http://{listen}"),
            data_dir,
            sim,
            child,
            dir,
        };
        srv.wait_ready();
        srv
    }

    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let url = format!("{}/openapi.yaml", self.base);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("wrenn server exited with {status}:\n{}", self.log());
            }
            let answered = rt().block_on(async {
                reqwest::Client::new()
                    .get(&url)
                    .timeout(std::time::Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            });
            if answered {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wrenn server not answering:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wrenn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wrenn"))
}

/// The `wrenn` binary run as a user whose HOME is a fresh temporary directory.
pub struct User {
    pub home: tempfile::TempDir,
    pub base: String,
}

/// What one run printed and how it ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: Vec<u8>,
}

impl Run {
    /// Parses stdout as JSON (for `--json` runs).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Asserts success and returns self.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Asserts a failure reported as exactly one `error: … (code)` line.
    pub fn fails_with(self, code: &str) -> Run {
        assert_ne!(self.code, 0, "expected failure, stdout: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr: {}", self.stderr);
        assert!(lines[0].starts_with("error: "), "stderr: {}", self.stderr);
        assert!(
            lines[0].ends_with(&format!("({code})")),
            "stderr: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
        self
    }
}

impl User {
    pub fn new(base: &str) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            base: base.to_string(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.home.path().join(".config/wrenn/config.json")
    }

    pub fn config(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.config_path()).unwrap()).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(wrenn_bin());
        c.args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("WRENN_API_KEY")
            .env_remove("WRENN_PASSWORD")
            .env("WRENN_BASE_URL", &self.base)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        finish(self.command(args).output().expect("run wrenn"))
    }

    /// Runs with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wrenn");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        finish(child.wait_with_output().unwrap())
    }

    /// Signs up and saves an API key; returns the email.
    pub fn onboard(&self, email: &str) {
        self.run(&["signup", "--email", email, "--password", "password123"])
            .ok();
        self.run(&["keys", "create", "--name", "cli", "--save"])
            .ok();
    }

    /// Creates a sandbox and returns its ID.
    pub fn sandbox(&self) -> String {
        let v = self.run(&["--json", "sandbox", "create"]).ok().json();
        v["id"].as_str().expect("id").to_string()
    }
}

pub fn finish(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        stdout_bytes: o.stdout,
    }
}

/// `len` pseudo-random bytes (xorshift; no two positions repeat in a short cycle).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}
