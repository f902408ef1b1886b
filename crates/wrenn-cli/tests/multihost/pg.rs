//! A private PostgreSQL server for the multi-host test: Debian's binaries, a scratch data
//! directory, a free loopback port, run as the `postgres` user when the test runs as root.
//! The servers under test use its `postgres` database. Missing binaries fail the test with
//! instructions (it is never skipped). Stopped (fast shutdown) when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the server binaries; `WRENN_PG_BIN` overrides.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions and cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let ids = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    });
    Some(ids.expect("running as root but there is no `postgres` user to run PostgreSQL as"))
}

fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown PostgreSQL dir");
    }
}

impl PgServer {
    /// initdb + start; returns once the server accepts connections.
    pub fn start() -> PgServer {
        let bin =
            PathBuf::from(std::env::var("WRENN_PG_BIN").unwrap_or_else(|_| DEFAULT_BIN.into()));
        assert!(
            bin.join("initdb").exists() && bin.join("postgres").exists(),
            "PostgreSQL server binaries not found in {} (set WRENN_PG_BIN or run \
             `apt-get install postgresql-15`, as scripts/deps.sh --with-test-deps does)",
            bin.display()
        );
        let ids = postgres_ids();
        let dir = tempfile::Builder::new()
            .prefix("wrenn-mh-pg-")
            .tempdir()
            .unwrap();
        chown(dir.path(), ids);
        let data = dir.path().join("data");
        let out = as_user(&mut Command::new(bin.join("initdb")), ids)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log_path = dir.path().join("postgres.log");
        let log = std::fs::File::create(&log_path).unwrap();
        chown(&log_path, ids);
        let child = as_user(&mut Command::new(bin.join("postgres")), ids)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = PgServer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
