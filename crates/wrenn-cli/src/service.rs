//! `wrenn up --install-service`: the systemd unit shipped in `dist/systemd/wrenn.service`
//! (compiled in) written with this binary's path, and its settings file `/etc/wrenn/wrenn.env`
//! holding the options `wrenn up` was given. The units for `wrenn server` and `wrenn agent`
//! alone are installed by hand from `dist/systemd/` (README.md).

use crate::daemon::UpArgs;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The unit of `wrenn up`, as shipped.
pub const UP_UNIT: &str = include_str!("../../../dist/systemd/wrenn.service");
/// Where the shipped unit expects the binary (`scripts/up` installs it there).
const SHIPPED_BIN: &str = "/usr/local/bin/wrenn";

/// The unit with `ExecStart` pointing at `bin`.
pub fn up_unit(bin: &Path) -> Result<String> {
    let bin = bin.to_str().context("the binary's path is not UTF-8")?;
    if bin.chars().any(char::is_whitespace) {
        bail!("the binary's path {bin:?} has spaces; install wrenn elsewhere (scripts/up uses {SHIPPED_BIN})");
    }
    let shipped = format!("ExecStart={SHIPPED_BIN} up");
    if !UP_UNIT.contains(&shipped) {
        bail!("dist/systemd/wrenn.service has no line {shipped:?}");
    }
    Ok(UP_UNIT.replace(&shipped, &format!("ExecStart={bin} up")))
}

/// The settings file: the options of this `wrenn up`, as the environment variables it reads.
pub fn up_env(args: &UpArgs) -> String {
    let mut s = String::from(
        "# Settings of `wrenn up` (wrenn.service), written by `wrenn up --install-service`.\n\
         # Every option of `wrenn up --help` has a variable; secrets (WRENN_JWT_SECRET, OAuth\n\
         # client secrets, DATABASE_URL) may go here too, which is why the file is mode 0600.\n",
    );
    let mut var = |k: &str, v: &str| s.push_str(&format!("{k}={v}\n"));
    var("WRENN_DATA_DIR", &args.data_dir.display().to_string());
    var("WRENN_LISTEN", &args.listen);
    var("WRENN_AGENT_LISTEN", &args.agent_listen);
    var("WRENN_ACCEL", &args.accel);
    var("WRENN_NET_PREFIX", &args.net_prefix);
    var("WRENN_FIRST_SLOT", &args.first_slot.to_string());
    var(
        "WRENN_REAPER_INTERVAL_MS",
        &args.reaper_interval_ms.to_string(),
    );
    if let Some(envd) = &args.envd_bin {
        var("WRENN_ENVD_BIN", &envd.display().to_string());
    }
    for (k, v) in args
        .settings
        .env_vars()
        .into_iter()
        .chain(args.net.env_vars())
    {
        var(k, &v);
    }
    let prewarm: Vec<String> = args.prewarm.prewarm.iter().map(|w| w.arg()).collect();
    var("WRENN_PREWARM", &prewarm.join(","));
    if args.prewarm.no_prewarm {
        var("WRENN_NO_PREWARM", "true");
    }
    s
}

/// Writes the unit and (unless one exists) the settings file under `args.install_root`, and
/// reloads systemd when it runs this machine.
pub fn install_up(args: &UpArgs) -> Result<()> {
    let root = &args.install_root;
    let exe = std::env::current_exe().context("finding this binary")?;
    let unit_path = root.join("etc/systemd/system/wrenn.service");
    write_file(&unit_path, &up_unit(&exe)?, 0o644, 0o755)?;
    let env_path = root.join("etc/wrenn/wrenn.env");
    let env_note = if env_path.exists() {
        format!("kept {} as it was", env_path.display())
    } else {
        write_file(&env_path, &up_env(args), 0o600, 0o700)?;
        format!("wrote {}", env_path.display())
    };
    println!(
        "Wrote {} (runs {} up); {env_note}.",
        unit_path.display(),
        exe.display()
    );
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        let status = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .context("systemctl daemon-reload")?;
        if !status.success() {
            bail!("systemctl daemon-reload failed ({status})");
        }
        println!("Start it now and at every boot (stop a `wrenn up` running in a terminal first: both would use {}):", args.data_dir.display());
        println!("  sudo systemctl enable --now wrenn");
        println!("Logs: journalctl -u wrenn -f");
    } else {
        println!("systemd does not run this machine; the unit is ready for one that does.");
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32, dir_mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
