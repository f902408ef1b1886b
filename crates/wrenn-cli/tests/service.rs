//! The systemd units shipped in `dist/systemd/` and `wrenn up --install-service`: what the units
//! promise (sandboxes survive a service restart, restart on failure, data dir, settings file),
//! what the install writes, and `systemd-analyze verify` where it is installed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd")
}

fn unit(name: &str) -> String {
    std::fs::read_to_string(dist().join(name)).unwrap()
}

/// The `Key=value` lines of a unit (comments left out).
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.contains('=') && !l.starts_with('#'))
        .collect()
}

#[test]
fn units_of_the_agent_roles_leave_sandboxes_running_across_a_restart() {
    for (name, exec) in [
        ("wrenn.service", "ExecStart=/usr/local/bin/wrenn up"),
        (
            "wrenn-agent.service",
            "ExecStart=/usr/local/bin/wrenn agent",
        ),
    ] {
        let text = unit(name);
        let s = settings(&text);
        // QEMU daemonizes but stays in the unit's cgroup: only `process` spares it.
        for want in [
            exec,
            "KillMode=process",
            "OOMPolicy=continue",
            "Restart=on-failure",
            "Environment=WRENN_DATA_DIR=/var/lib/wrenn",
            "TasksMax=infinity",
            "WantedBy=multi-user.target",
        ] {
            assert!(s.contains(&want), "{name} lacks {want}:\n{text}");
        }
        assert!(
            s.iter().any(|l| l.starts_with("EnvironmentFile=")),
            "{name}: {text}"
        );
    }
    let server = unit("wrenn-server.service");
    let s = settings(&server);
    for want in [
        "ExecStart=/usr/local/bin/wrenn server",
        "DynamicUser=yes",
        "StateDirectory=wrenn-server",
        "Environment=WRENN_DATA_DIR=/var/lib/wrenn-server",
        "EnvironmentFile=/etc/wrenn/server.env",
        "Restart=on-failure",
    ] {
        assert!(
            s.contains(&want),
            "wrenn-server.service lacks {want}:\n{server}"
        );
    }
    // The example settings name the variables the commands read.
    let env = unit("agent.env");
    for var in [
        "WRENN_AGENT_TOKEN=",
        "WRENN_DNS_RESOLVERS=",
        "WRENN_RULES_CHECK_INTERVAL_MS=",
    ] {
        assert!(env.contains(var), "agent.env lacks {var}");
    }
    let env = unit("server.env");
    for var in [
        "WRENN_JWT_SECRET=",
        "WRENN_AGENTS=",
        "WRENN_SIGNUP=",
        "WRENN_QUOTA_RUNNING=",
        "WRENN_MAX_VCPUS=",
        "WRENN_TRUSTED_PROXIES=",
        "WRENN_MAX_CONNECTIONS=",
        "WRENN_REQUEST_TIMEOUT_MS=",
    ] {
        assert!(env.contains(var), "server.env lacks {var}");
    }
}

#[test]
fn install_service_writes_the_unit_and_keeps_existing_settings() {
    let root = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .args(["up", "--install-service", "--install-root"])
            .arg(root.path())
            .args(["--listen", "0.0.0.0:9090", "--data-dir", "/srv/wrenn"])
            .env_remove("WRENN_ENVD_BIN")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let stdout = run();
    assert!(stdout.contains("wrenn.service"), "{stdout}");

    let unit_path = root.path().join("etc/systemd/system/wrenn.service");
    let text = std::fs::read_to_string(&unit_path).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_wrenn")).unwrap();
    assert!(
        settings(&text).contains(&format!("ExecStart={} up", exe.display()).as_str()),
        "{text}"
    );
    assert!(text.contains("KillMode=process"), "{text}");
    let env_path = root.path().join("etc/wrenn/wrenn.env");
    let env = std::fs::read_to_string(&env_path).unwrap();
    for want in [
        "WRENN_DATA_DIR=/srv/wrenn",
        "WRENN_LISTEN=0.0.0.0:9090",
        "WRENN_AGENT_LISTEN=127.0.0.1:8081",
        "WRENN_ACCEL=auto",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in:\n{env}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env_path), 0o600, "the settings may hold secrets");
    assert_eq!(mode(env_path.parent().unwrap()), 0o700);
    assert_eq!(mode(&unit_path), 0o644);

    // Settings edited by hand survive a second install.
    std::fs::write(&env_path, "WRENN_LISTEN=127.0.0.1:7000\n").unwrap();
    let stdout = run();
    assert!(stdout.contains("kept"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&env_path).unwrap(),
        "WRENN_LISTEN=127.0.0.1:7000\n"
    );
}

#[test]
fn install_service_writes_the_settings_given_and_only_those() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .args(["up", "--install-service", "--install-root"])
        .arg(root.path())
        .args(["--signup", "closed", "--quota-running", "3"])
        .args(["--trusted-proxy", "10.0.0.1", "--trusted-proxy", "10.0.0.2"])
        .args([
            "--dns-resolver",
            "9.9.9.9",
            "--rules-check-interval-ms",
            "2000",
        ])
        .env_remove("WRENN_ENVD_BIN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(root.path().join("etc/wrenn/wrenn.env")).unwrap();
    for want in [
        "WRENN_SIGNUP=closed",
        "WRENN_QUOTA_RUNNING=3",
        "WRENN_TRUSTED_PROXIES=10.0.0.1,10.0.0.2",
        "WRENN_DNS_RESOLVERS=9.9.9.9",
        "WRENN_RULES_CHECK_INTERVAL_MS=2000",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in:\n{env}");
    }
    // Settings not given stay the control plane's and the agent's defaults.
    for unset in [
        "WRENN_QUOTA_VCPUS=",
        "WRENN_MAX_CONNECTIONS=",
        "WRENN_MAX_VCPUS=",
    ] {
        assert!(!env.contains(unset), "{unset} in:\n{env}");
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_wrenn")).unwrap();
    for name in [
        "wrenn.service",
        "wrenn-agent.service",
        "wrenn-server.service",
    ] {
        // The binary where this build has it (verify checks that ExecStart exists).
        let text = unit(name).replace("/usr/local/bin/wrenn", &exe.display().to_string());
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let about_it: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert!(
            out.status.success() && about_it.is_empty(),
            "systemd-analyze verify {name}: {}\n{stderr}",
            out.status
        );
    }
}
