//! The `wrenn` client commands, run as a user would run the built binary, against a real
//! control plane over loopback HTTP whose host is the simulated agent.

mod support;

use std::os::unix::fs::PermissionsExt;
use support::{random_bytes, write_file, SimServer, User};

#[test]
fn signup_login_and_keys_are_saved_in_a_private_config() {
    let srv = SimServer::start();
    let u = User::new(&srv.base);

    let out = u
        .run(&[
            "signup",
            "--email",
            "ann@example.com",
            "--password",
            "password123",
        ])
        .ok();
    assert!(out.stdout.contains("ann@example.com"), "{}", out.stdout);
    let mode = std::fs::metadata(u.config_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cfg = u.config();
    assert_eq!(cfg["base_url"], srv.base.as_str());
    assert_eq!(cfg["email"], "ann@example.com");
    assert!(cfg["token"].as_str().is_some_and(|t| t.len() > 20));
    assert!(cfg.get("api_key").is_none());
    assert!(
        !u.config_path()
            .parent()
            .unwrap()
            .read_dir()
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "temporary config file left behind"
    );

    // The same email again: the API's conflict, one line.
    u.run(&[
        "signup",
        "--email",
        "ann@example.com",
        "--password",
        "password123",
    ])
    .fails_with("email_taken");

    // A key without --save is shown but not stored; with --save it becomes the default.
    let k1 = u
        .run(&["--json", "keys", "create", "--name", "ci"])
        .ok()
        .json();
    assert!(k1["key"].as_str().unwrap().starts_with("wrn_"));
    assert!(u.config().get("api_key").is_none());
    let out = u
        .run(&["keys", "create", "--name", "laptop", "--save"])
        .ok();
    let saved = u.config()["api_key"].as_str().unwrap().to_string();
    assert!(out.stdout.contains(&saved), "{}", out.stdout);

    let list = u.run(&["keys", "list"]).ok();
    assert!(list.stdout.starts_with("ID "), "{}", list.stdout);
    assert!(list.stdout.contains("laptop") && list.stdout.contains("ci"));
    let keys = u.run(&["keys", "list", "--json"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 2);

    let id = k1["id"].as_str().unwrap();
    u.run(&["keys", "delete", id]).ok();
    let keys = u.run(&["--json", "keys", "list"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["name"], "laptop");

    // The saved key works for sandbox commands; a deleted one is refused.
    u.run(&["sandbox", "list"]).ok();
    u.run(&["--api-key", k1["key"].as_str().unwrap(), "sandbox", "list"])
        .fails_with("unauthorized");

    // Login from another machine (HOME): password from the environment.
    let other = User::new(&srv.base);
    let mut c = other.command(&["login", "--email", "ann@example.com"]);
    c.env("WRENN_PASSWORD", "password123");
    let out = c.output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Logged in as ann@example.com"));
    assert_eq!(other.config()["team_id"], u.config()["team_id"]);
    let mut c = other.command(&["login", "--email", "ann@example.com"]);
    c.env("WRENN_PASSWORD", "wrong-password");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));

    // XDG_CONFIG_HOME wins over HOME.
    let xdg = tempfile::tempdir().unwrap();
    let mut c = other.command(&["login", "--email", "ann@example.com"]);
    c.env("WRENN_PASSWORD", "password123")
        .env("XDG_CONFIG_HOME", xdg.path());
    assert!(c.output().unwrap().status.success());
    let cfg = xdg.path().join("wrenn/config.json");
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // No password anywhere and no terminal: a clear error, not a hang.
    let third = User::new(&srv.base);
    let out = third.run(&["login", "--email", "ann@example.com"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no password"), "{}", out.stderr);
}

#[test]
fn sandbox_lifecycle_and_exec() {
    let srv = SimServer::start();
    let u = User::new(&srv.base);
    u.onboard("bob@example.com");

    let created = u
        .run(&[
            "--json",
            "sandbox",
            "create",
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--timeout",
            "600",
        ])
        .ok()
        .json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "running");
    assert_eq!(created["vcpus"], 2);
    assert_eq!(created["memory_mb"], 256);
    assert_eq!(created["timeout_sec"], 600);

    let list = u.run(&["sandbox", "list"]).ok();
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {}", list.stdout));
    assert!(row.contains("running") && row.contains("minimal"), "{row}");
    let listed = u.run(&["--json", "sandbox", "list"]).ok().json();
    assert_eq!(listed[0]["id"], id.as_str());

    let get = u.run(&["sandbox", "get", &id]).ok();
    assert!(
        get.stdout.contains("status       running"),
        "{}",
        get.stdout
    );
    assert!(get.stdout.contains("256 MiB"), "{}", get.stdout);

    // Output and exit codes as the command produced them.
    let out = u
        .run(&["sandbox", "exec", &id, "--", "echo", "hello", "world"])
        .ok();
    assert_eq!(out.stdout, "hello world\n");
    assert_eq!(out.stderr, "");
    let out = u
        .run(&["sandbox", "exec", &id, "--", "python3", "-c", "print(6*7)"])
        .ok();
    assert_eq!(out.stdout, "42\n");
    let out = u.run(&["sandbox", "exec", &id, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code, 7);
    assert_eq!(out.stderr, "");
    let out = u.run(&["sandbox", "exec", &id, "--", "false"]);
    assert_eq!(out.code, 1);
    let out = u.run(&["sandbox", "exec", &id, "--", "cat", "/nope"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("No such file"), "{}", out.stderr);
    let out = u
        .run(&[
            "sandbox", "exec", &id, "--env", "A=1", "--env", "B=two", "--", "env",
        ])
        .ok();
    assert!(out.stdout.contains("A=1\n") && out.stdout.contains("B=two\n"));
    let out = u
        .run(&["sandbox", "exec", &id, "--cwd", "/tmp", "--", "pwd"])
        .ok();
    assert_eq!(out.stdout, "/tmp\n");
    let out = u.run(&["sandbox", "exec", &id, "--timeout", "1", "--", "sleep", "5"]);
    assert_eq!(out.code, 124, "killed by the timeout: {}", out.stderr);
    let v = u
        .run(&["--json", "sandbox", "exec", &id, "--", "seq", "3"])
        .ok()
        .json();
    assert_eq!(v["stdout"], "1\n2\n3\n");
    assert_eq!(v["exit_code"], 0);

    // Pause: exec is refused with the API's conflict; resume brings it back.
    let p = u.run(&["--json", "sandbox", "pause", &id]).ok().json();
    assert_eq!(p["status"], "paused");
    u.run(&["sandbox", "exec", &id, "--", "true"])
        .fails_with("sandbox_not_running");
    let r = u.run(&["sandbox", "resume", &id]).ok();
    assert!(r.stdout.contains("running"), "{}", r.stdout);
    u.run(&["sandbox", "exec", &id, "--", "true"]).ok();

    u.run(&["sandbox", "rm", &id]).ok();
    u.run(&["sandbox", "get", &id])
        .fails_with("sandbox_not_found");
    let listed = u.run(&["--json", "sandbox", "list"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 0);
}

#[test]
fn files_round_trip_streamed() {
    let srv = SimServer::start();
    let u = User::new(&srv.base);
    u.onboard("cid@example.com");
    let id = u.sandbox();

    let data = random_bytes(5 * 1024 * 1024 + 123, 7);
    let local = u.home.path().join("blob.bin");
    write_file(&local, &data);
    let out = u
        .run(&[
            "files",
            "put",
            &id,
            local.to_str().unwrap(),
            "/home/user/blob.bin",
        ])
        .ok();
    assert!(out.stdout.contains("5.0 MiB"), "{}", out.stdout);
    // No progress output when stderr is not a terminal.
    assert_eq!(out.stderr, "");

    let back = u.home.path().join("back.bin");
    u.run(&[
        "files",
        "get",
        &id,
        "/home/user/blob.bin",
        back.to_str().unwrap(),
    ])
    .ok();
    assert!(std::fs::read(&back).unwrap() == data, "download differs");

    // Into a directory (keeps the remote name); to stdout with `-`.
    let dir = u.home.path().join("dl");
    std::fs::create_dir(&dir).unwrap();
    u.run(&[
        "files",
        "get",
        &id,
        "/home/user/blob.bin",
        dir.to_str().unwrap(),
    ])
    .ok();
    assert!(std::fs::read(dir.join("blob.bin")).unwrap() == data);
    let text = u.home.path().join("note.txt");
    write_file(&text, b"note\n");
    // A remote directory ending in `/` keeps the local name.
    u.run(&["files", "put", &id, text.to_str().unwrap(), "/tmp/"])
        .ok();
    let out = u.run(&["files", "get", &id, "/tmp/note.txt", "-"]).ok();
    assert_eq!(out.stdout_bytes, b"note\n");
    let out = u
        .run(&["sandbox", "exec", &id, "--", "cat", "/tmp/note.txt"])
        .ok();
    assert_eq!(out.stdout, "note\n");

    // Errors: a missing remote file leaves no partial local file; a missing local file.
    let missing = u.home.path().join("missing.bin");
    u.run(&["files", "get", &id, "/nope", missing.to_str().unwrap()])
        .fails_with("file_not_found");
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(u.home.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".wrenn-download")
        })
        .collect();
    assert!(leftovers.is_empty());
    let out = u.run(&["files", "put", &id, "/does/not/exist", "/tmp/x"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.starts_with("error: /does/not/exist"),
        "{}",
        out.stderr
    );
    let out = u.run(&["files", "put", &id, text.to_str().unwrap(), "relative/path"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("absolute"), "{}", out.stderr);
}

#[test]
fn snapshots_create_list_start_from_and_remove() {
    let srv = SimServer::start();
    let u = User::new(&srv.base);
    u.onboard("dee@example.com");
    let id = u.sandbox();
    let f = u.home.path().join("state.txt");
    write_file(&f, b"kept in the snapshot\n");
    u.run(&[
        "files",
        "put",
        &id,
        f.to_str().unwrap(),
        "/home/user/state.txt",
    ])
    .ok();

    let t = u
        .run(&["--json", "snapshot", "create", &id, "--name", "warm"])
        .ok()
        .json();
    assert_eq!(t["name"], "warm");
    assert_eq!(t["type"], "snapshot");
    // The sandbox is consumed by the snapshot.
    u.run(&["sandbox", "get", &id])
        .fails_with("sandbox_not_found");

    let list = u.run(&["snapshot", "list"]).ok();
    assert!(list.stdout.starts_with("NAME "), "{}", list.stdout);
    assert!(list
        .stdout
        .lines()
        .any(|l| l.starts_with("warm ") && l.contains("snapshot")));
    assert!(list
        .stdout
        .lines()
        .any(|l| l.starts_with("minimal ") && l.contains("base")));
    let only = u
        .run(&["--json", "snapshot", "list", "--type", "snapshot"])
        .ok()
        .json();
    let names: Vec<&str> = only
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["warm"]);

    // A new sandbox from the snapshot has the file.
    let clone = u
        .run(&["--json", "sandbox", "create", "--template", "warm"])
        .ok()
        .json();
    let cid = clone["id"].as_str().unwrap();
    assert_eq!(clone["template"], "warm");
    let out = u
        .run(&["sandbox", "exec", cid, "--", "cat", "/home/user/state.txt"])
        .ok();
    assert_eq!(out.stdout, "kept in the snapshot\n");

    // The name is taken until --overwrite.
    u.run(&["snapshot", "create", cid, "--name", "warm"])
        .fails_with("snapshot_exists");
    u.run(&["snapshot", "create", cid, "--name", "warm", "--overwrite"])
        .ok();

    u.run(&["snapshot", "rm", "warm"]).ok();
    let only = u
        .run(&["--json", "snapshot", "list", "--type", "snapshot"])
        .ok()
        .json();
    assert_eq!(only.as_array().unwrap().len(), 0);
    u.run(&["snapshot", "rm", "warm"])
        .fails_with("template_not_found");
}

#[test]
fn shell_is_a_terminal_over_the_pty_websocket() {
    // The simulated terminal echoes keystrokes and ends on a typed `exit N`; a real guest's
    // terminal (raw mode, resize, Ctrl-C) is tested by pty_e2e.
    let srv = SimServer::start();
    let u = User::new(&srv.base);
    u.onboard("eve@example.com");
    let id = u.sandbox();
    let out = u.run_with_input(&["sandbox", "shell", &id], "exit 3\n");
    assert_eq!(out.code, 3, "the terminal's exit code: {}", out.stderr);
    assert!(out.stdout.contains("exit 3"), "{:?}", out.stdout);

    // A paused sandbox: refused before any terminal, in one line.
    u.run(&["sandbox", "pause", &id]).ok();
    let out = u.run_with_input(&["sandbox", "shell", &id], "exit 0\n");
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("error:"), "{}", out.stderr);
}

#[test]
fn errors_are_one_line_without_panics() {
    let srv = SimServer::start();
    let u = User::new(&srv.base);

    // No credentials yet.
    let out = u.run(&["sandbox", "list"]);
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: no API key"),
        "{}",
        out.stderr
    );
    let out = u.run(&["keys", "list"]);
    assert!(
        out.stderr.starts_with("error: not logged in"),
        "{}",
        out.stderr
    );

    u.onboard("fay@example.com");
    u.run(&["sandbox", "get", "sb-does-not-exist"])
        .fails_with("sandbox_not_found");
    u.run(&["--json", "sandbox", "rm", "sb-does-not-exist"])
        .fails_with("sandbox_not_found");
    u.run(&["sandbox", "create", "--template", "nope"])
        .fails_with("template_not_found");

    // Nothing listening: a connection error, one line.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = u.run(&[
        "--base-url",
        &format!("http://{dead}"),
        "--api-key",
        "wrn_x",
        "sandbox",
        "list",
    ]);
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: cannot reach"),
        "{}",
        out.stderr
    );

    // Saved credentials are not sent to another server: the key stays unknown there.
    let out = u.run(&["--base-url", &format!("http://{dead}"), "sandbox", "list"]);
    assert!(
        out.stderr.starts_with("error: no API key"),
        "{}",
        out.stderr
    );

    // Usage errors come from the argument parser (exit 2).
    let out = u.run(&["sandbox", "exec", "x"]);
    assert_eq!(out.code, 2);
    let out = u.run(&["sandbox", "exec", "x", "--env", "bad", "--", "true"]);
    assert!(
        out.stderr.starts_with("error: --env takes K=V"),
        "{}",
        out.stderr
    );
}
