//! The control-plane settings of `wrenn server`, given as flags or environment variables, and
//! `wrenn accounts add`: a real `wrenn server` child process (SQLite in a scratch data
//! directory) whose host is the simulated agent, driven by the built `wrenn` binary.

mod support;

use support::{ServerProcess, User};

/// `wrenn accounts add` run by the administrator on the server's host.
fn add_account(srv: &ServerProcess, u: &User, args: &[&str]) -> support::Run {
    let mut full = vec!["accounts", "add", "--data-dir"];
    let dir = srv.data_dir.to_str().unwrap();
    full.push(dir);
    full.extend_from_slice(args);
    u.run(&full)
}

#[test]
fn closed_signup_and_accounts_added_by_the_administrator() {
    // The mode from the environment, as the service's settings file gives it.
    let srv = ServerProcess::start(&[], &[("WRENN_SIGNUP", "closed")]);
    let u = User::new(&srv.base);

    let out = u
        .run(&[
            "signup",
            "--email",
            "ann@example.com",
            "--password",
            "password123",
        ])
        .fails_with("signup_closed");
    assert!(out.stderr.contains("signup is closed"), "{}", out.stderr);

    // The administrator adds the account beside the running server; it logs in.
    let added = add_account(
        &srv,
        &u,
        &[
            "--json",
            "--email",
            "Ann@Example.com",
            "--password",
            "password123",
        ],
    )
    .ok()
    .json();
    assert_eq!(added["email"], "ann@example.com");
    let user_id = added["user_id"].as_str().unwrap();
    let team_id = added["team_id"].as_str().unwrap();
    assert!(
        user_id.starts_with("usr-") && team_id.starts_with("team-"),
        "{added}"
    );
    u.run(&[
        "login",
        "--email",
        "ann@example.com",
        "--password",
        "password123",
    ])
    .ok();
    assert_eq!(u.config()["user_id"], user_id);
    assert_eq!(u.config()["team_id"], team_id);
    u.run(&["keys", "create", "--name", "cli", "--save"]).ok();
    u.sandbox();

    // The password from the environment and the data dir from WRENN_DATA_DIR; the ids are
    // printed.
    let mut c = u.command(&["accounts", "add", "--email", "bob@example.com"]);
    c.env("WRENN_PASSWORD", "password456")
        .env("WRENN_DATA_DIR", &srv.data_dir);
    let out = support::finish(c.output().unwrap()).ok();
    assert!(out.stdout.contains("bob@example.com"), "{}", out.stdout);
    let bob = User::new(&srv.base);
    bob.run(&[
        "login",
        "--email",
        "bob@example.com",
        "--password",
        "password456",
    ])
    .ok();
    let ids = [
        bob.config()["user_id"].as_str().unwrap().to_string(),
        bob.config()["team_id"].as_str().unwrap().to_string(),
    ];
    for id in &ids {
        assert!(
            out.stdout.contains(id.as_str()),
            "{id} not in {}",
            out.stdout
        );
    }
    assert_ne!(ids[1], team_id, "each account has its own team");

    // An existing email, bad input, no password: one error line, exit code 1.
    let out = add_account(
        &srv,
        &u,
        &["--email", "ann@example.com", "--password", "password789"],
    )
    .fails_with("email_taken");
    assert!(out.stderr.contains("already registered"), "{}", out.stderr);
    add_account(
        &srv,
        &u,
        &["--email", "cy@example.com", "--password", "short"],
    )
    .fails_with("bad_request");
    add_account(
        &srv,
        &u,
        &["--email", "not-an-email", "--password", "password123"],
    )
    .fails_with("bad_request");
    let out = add_account(&srv, &u, &["--email", "dee@example.com"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: no password"),
        "{}",
        out.stderr
    );
    // None of them made an account.
    User::new(&srv.base)
        .run(&["login", "--email", "cy@example.com", "--password", "short"])
        .fails_with("invalid_credentials");
}

#[test]
fn quota_and_bound_flags_take_effect() {
    let srv = ServerProcess::start(&["--quota-running", "1", "--max-vcpus", "2"], &[]);
    let u = User::new(&srv.base);
    // Signup stays open by default.
    u.onboard("eve@example.com");

    u.run(&["sandbox", "create", "--vcpus", "4"])
        .fails_with("bad_request");
    let first = u.sandbox();
    u.run(&["sandbox", "create"]).fails_with("quota_exceeded");
    // A paused sandbox does not count: the next create fits.
    u.run(&["sandbox", "pause", &first]).ok();
    u.sandbox();
}

#[test]
fn a_bad_setting_stops_the_server_with_one_clear_error() {
    let out = std::process::Command::new(support::wrenn_bin())
        .args(["server", "--signup", "invite"])
        .env("WRENN_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invite") && stderr.contains("closed"),
        "{stderr}"
    );
}
