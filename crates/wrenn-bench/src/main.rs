//! `wrenn-bench`: starts a fresh Wrenn system on this host (agent and control plane in this
//! process, as `wrenn up` runs them, in a scratch data directory), measures the sandbox
//! lifecycle, exec, file transfer, concurrency and density through the public API and the
//! agent's manager, prints a table, and writes `bench.json` and `bench.png` to `--out`.
//! Needs root and built guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`).

mod bursts;
mod chart;
mod client;
mod host;
mod peers;
mod report;
mod runs;
mod stats;
mod system;
mod targets;

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "wrenn-bench",
    about = "Benchmark a fresh Wrenn system on this host"
)]
struct Args {
    /// Few samples (a few minutes; for CI).
    #[arg(long)]
    quick: bool,
    /// Directory for bench.json and bench.png.
    #[arg(long, default_value = "target/wrenn-bench")]
    out: PathBuf,
    /// Most idle sandboxes to hold at once (default 30, 5 with --quick).
    #[arg(long)]
    cap: Option<usize>,
    /// Samples of each peers row (gVisor, raw QEMU, Wrenn with and without the warm pool;
    /// default 10, 3 with --quick).
    #[arg(long)]
    peer_samples: Option<usize>,
    /// Only the phases whose name contains one of these words (comma-separated, e.g.
    /// `bursts,concurrent`); the cold boots that make the warm snapshot always run. The
    /// pooled burst, left out of --quick, runs when named.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "WRENN_ACCEL", default_value = "auto")]
    accel: String,
    /// The agent's memory overcommit (as `wrenn agent --memory-overcommit`): at the default
    /// 1.0 this host admits about 40 idle 512 MB sandboxes; a density run of 100 needs 2.5.
    #[arg(long, default_value_t = 1.0)]
    memory_overcommit: f64,
    /// Measure nothing: print the table of an earlier bench.json and redraw its chart into
    /// `--out`.
    #[arg(long, value_name = "BENCH_JSON")]
    redraw: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    if let Some(json) = &args.redraw {
        let text = std::fs::read(json).with_context(|| format!("read {}", json.display()))?;
        let mut report: report::Report = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a wrenn-bench report", json.display()))?;
        if report.targets.is_empty() {
            report.targets = targets::check(&report);
        }
        print!("{}", report.table());
        let png = args.out.join("bench.png");
        chart::draw(&report, &png)?;
        println!("\nwrote {}", png.display());
        return Ok(());
    }
    let mut plan = if args.quick {
        runs::Plan::quick()
    } else {
        runs::Plan::full()
    };
    if let Some(cap) = args.cap {
        plan.density_cap = cap;
    }
    if let Some(n) = args.peer_samples {
        plan.peer_samples = n;
    }
    plan.only = args.only.clone();
    plan.pooled_burst |= !plan.only.is_empty();
    let started = Instant::now();
    let mut report = report::Report {
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        mode: if args.quick { "quick" } else { "full" }.into(),
        ..Default::default()
    };
    report.host.cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    report.host.mem_total_mb = host::mem_total_mb();
    report.host.load_start = host::load_average();
    report.host.mem_available_start_mb = host::mem_available_mb();

    eprintln!("==> starting a fresh system (agent + control plane, SQLite)");
    let sys = system::System::start(&args.accel, args.memory_overcommit).await?;
    report.accel = format!("{:?}", sys.agent.manager.accel()).to_lowercase();
    eprintln!(
        "    data dir {}, guests under {}",
        sys.dir.display(),
        report.accel.to_uppercase()
    );

    let reflinks = wrenn_agent::sandbox::disk::reflink_supported(&sys.dir);
    let mut bench = runs::Bench::new(&sys, plan);
    let interrupted = tokio::select! {
        _ = bench.run_all() => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let runs::Bench {
        api,
        agent,
        peers,
        density,
        ..
    } = bench;
    report.sections = vec![api, agent, peers];
    report.density = density;
    eprintln!("==> cleaning up");
    sys.shutdown().await;
    if interrupted {
        anyhow::bail!("interrupted; the system was cleaned up and nothing was written");
    }

    report.host.load_end = host::load_average();
    report.host.mem_available_end_mb = host::mem_available_mb();
    report.duration_s = started.elapsed().as_secs_f64();
    report.notes.push(if reflinks {
        "the data directory's filesystem reflinks: a clone's RAM is a file of its own from its \
         create, so every pause and resume, the first too, saves and restores device state only"
            .into()
    } else {
        "the data directory's filesystem cannot reflink: the first pause of a clone saves its \
         RAM into the state file and its first resume loads it into a RAM file of its own; \
         later ones save and restore device state only (on XFS or btrfs the first ones do too)"
            .into()
    });
    if args.memory_overcommit != 1.0 {
        report.notes.push(format!(
            "the agent ran with --memory-overcommit {}",
            args.memory_overcommit
        ));
    }
    if report.accel == "tcg" {
        report.notes.push(
            "guests run under TCG emulation (no vmx/svm): guest CPU work is ~20x slower than \
             with KVM"
                .into(),
        );
    }
    report.finish();

    print!("{}", report.table());
    let json = args.out.join("bench.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", json.display()))?;
    let png = args.out.join("bench.png");
    chart::draw(&report, &png)?;
    println!("\nwrote {} and {}", json.display(), png.display());
    Ok(())
}
