//! `wrenn doctor`, and the same host checks run before `wrenn up` and `wrenn agent` start: the
//! checks themselves are the agent's ([`wrenn_agent::doctor`]); this prints them.

use anyhow::{anyhow, Result};
use std::path::PathBuf;
use wrenn_agent::doctor::{self, Options, Report, Status};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Data directory the agent will use.
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// Accelerator the agent will be asked for: auto, kvm or tcg.
    #[arg(long, env = "WRENN_ACCEL", default_value = "auto")]
    pub accel: String,
    /// QEMU binary the agent will run.
    #[arg(long, env = "WRENN_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Static wrenn-envd for building missing images.
    #[arg(long, env = "WRENN_ENVD_BIN")]
    pub envd_bin: Option<PathBuf>,
}

/// Prints one line per check and a summary; false when a check failed.
pub async fn run_doctor(args: DoctorArgs) -> Result<bool> {
    let opts = Options {
        data_dir: args.data_dir,
        accel: args.accel.parse().map_err(|e: String| anyhow!(e))?,
        qemu_bin: args.qemu,
        envd_bin: args.envd_bin,
    };
    let report = run(opts).await?;
    for check in &report.checks {
        println!("{check}");
    }
    println!("{}", report.summary());
    Ok(report.passed())
}

/// The checks before a start: warnings and failures are printed; a failure refuses the start
/// with the failing lines as the error.
pub async fn check_before_start(opts: Options) -> Result<()> {
    let report = run(opts).await?;
    for check in report.with_status(Status::Warning) {
        eprintln!("{check}");
    }
    if report.passed() {
        eprintln!("==> host checks: {}", report.summary());
        return Ok(());
    }
    let failed: Vec<String> = report
        .with_status(Status::Fail)
        .map(ToString::to_string)
        .collect();
    Err(anyhow!(
        "refusing to start: {} host check(s) failed (`wrenn doctor` shows every check):\n{}",
        failed.len(),
        failed.join("\n")
    ))
}

async fn run(opts: Options) -> Result<Report> {
    Ok(tokio::task::spawn_blocking(move || doctor::run(&opts)).await?)
}
