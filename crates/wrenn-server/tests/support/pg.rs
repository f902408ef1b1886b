//! Test helper: a private PostgreSQL server from Debian's packages, started in a temporary
//! directory on a free loopback port and stopped when dropped. Runs as the `postgres` user
//! when the tests run as root (PostgreSQL refuses to run as root). If the binaries are
//! missing the helper panics with instructions: the PostgreSQL suite is never skipped.
//! (The CLI's multi-host test includes this file too; `pg_db.rs` adds what needs sqlx.)

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

fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(std::env::var("WRENN_PG_BIN").unwrap_or_else(|_| DEFAULT_BIN.into()));
    if !dir.join("initdb").exists() || !dir.join("postgres").exists() {
        panic!(
            "PostgreSQL server binaries not found in {} (set WRENN_PG_BIN or run \
             `apt-get install postgresql-15`); the PostgreSQL store suite cannot run",
            dir.display()
        );
    }
    dir
}

/// uid and gid of the `postgres` account, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("running as root but there is no `postgres` user to run PostgreSQL as");
}

fn as_server_user(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chown(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown test dir");
    }
}

impl PgServer {
    /// initdb + start; blocks until the server accepts connections.
    pub fn start() -> PgServer {
        let bin = bin_dir();
        // SAFETY: getuid has no preconditions and cannot fail.
        let root = unsafe { libc::getuid() } == 0;
        let ids = root.then(postgres_ids);
        let dir = tempfile::Builder::new()
            .prefix("wrenn-pg-")
            .tempdir()
            .unwrap();
        chown(dir.path(), ids);
        let data = dir.path().join("data");
        let out = as_server_user(&mut Command::new(bin.join("initdb")), ids)
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
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        chown(&dir.path().join("postgres.log"), ids);
        let child = as_server_user(&mut Command::new(bin.join("postgres")), ids)
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
        let server = PgServer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start; log: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
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
        // SIGINT is PostgreSQL's "fast shutdown".
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
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
