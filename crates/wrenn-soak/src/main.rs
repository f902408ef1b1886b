//! `wrenn-soak`: a soak run of a real `wrenn up` (a child process on a scratch data dir,
//! prefix `so`, slots from 9930). Several clients (`client.rs`) run random creates, clones,
//! execs, file writes, pauses, resumes, snapshots and destroys with random client timeouts for
//! N minutes, while `wrenn up` is killed with SIGKILL and started again a few times; then the
//! system's invariants are checked (`wrenn_soak::invariants`). It prints operations done, errors
//! by kind, restarts, sandboxes lost and orphans found, and exits non-zero when a sandbox was
//! lost or something is left that no record owns (or the database and the agent disagree).
//!
//! `--short` is the CI mode: about 2 minutes, 2 clients, 1 restart.

mod client;

use anyhow::{bail, Context, Result};
use clap::Parser;
use client::{Client, Tally};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wrenn_soak::invariants::{self, Target};
use wrenn_soak::up::Up;

const PREFIX: &str = "so";
/// In the upper half of the fault suite's range (9900-9949; that suite holds about ten slots
/// from 9900, and the two never run at once): 9950-9999 is also exec_limits_e2e's.
const FIRST_SLOT: u32 = 9930;

#[derive(Parser, Debug)]
#[command(about = "Soak run of wrenn up: random operations, SIGKILL restarts, then the invariants")]
struct Args {
    /// How long the clients run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Concurrent clients (each with its own account).
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// SIGKILL restarts of wrenn up during the run.
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Most sandboxes alive at once over all clients.
    #[arg(long, default_value_t = 3)]
    max_alive: usize,
    /// The CI mode: 2 minutes, 2 clients, 1 restart.
    #[arg(long)]
    short: bool,
    /// The `wrenn` binary (default: beside this one).
    #[arg(long)]
    wrenn_bin: Option<PathBuf>,
    /// Keep the data dir afterwards (for a look at what went wrong).
    #[arg(long)]
    keep: bool,
    /// Run wrenn up with warm pools of this many clones a shape (`--pool-size`; off when
    /// not given, as wrenn up's default).
    #[arg(long)]
    pool_size: Option<u32>,
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.short {
        args.minutes = 2.0;
        args.clients = 2;
        args.restarts = 1;
    }
    match soak(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("wrenn-soak: {e:#}");
            std::process::exit(2);
        }
    }
}

fn wrenn_bin(args: &Args) -> Result<PathBuf> {
    if let Some(b) = &args.wrenn_bin {
        return Ok(b.clone());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("wrenn");
    if !bin.exists() {
        bail!("no wrenn binary beside {} (pass --wrenn-bin)", me.display());
    }
    Ok(bin)
}

async fn soak(args: Args) -> Result<bool> {
    let mut up = Up::prepare(&wrenn_bin(&args)?, "soak/run-so", PREFIX, FIRST_SLOT)?;
    // Small guests: their RAM files (paused sandboxes, snapshots) are what fills the disk.
    up.extra_args = vec![
        "--prewarm".into(),
        format!("minimal:1:{}", client::MEMORY_MB),
    ];
    if let Some(n) = args.pool_size {
        up.extra_args
            .extend(["--pool-size".to_string(), n.to_string()]);
    }
    let t0 = Instant::now();
    let took = up.start("").await?;
    println!("wrenn up ready after {took:.1?}");
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let name = format!("c{i}");
        let key = up.account(&name).await?;
        clients.push(Client::new(
            &name,
            key,
            up.base(),
            tally.clone(),
            args.max_alive,
        ));
    }
    let keys: Vec<String> = clients.iter().map(|c| c.key.clone()).collect();

    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                c.run(stop).await;
                c
            })
        })
        .collect();

    // Restarts spread over the run: SIGKILL whatever is under way, start again.
    let started = Instant::now();
    let mut restarts = 0;
    for n in 1..=args.restarts {
        let at = run_for.mul_f64(n as f64 / (args.restarts + 1) as f64);
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        up.signal(nix::sys::signal::Signal::SIGKILL).await?;
        let took = up.start("").await.context("restart after SIGKILL")?;
        restarts += 1;
        println!(
            "[{:>6.1?}] SIGKILL restart {restarts}: ready again after {took:.1?}",
            started.elapsed()
        );
    }
    tokio::time::sleep(run_for.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.context("client task")?);
    }
    let ran = started.elapsed();

    // The verdict: the clients' models settled against the API, then every invariant.
    let mut expected = HashMap::new();
    for c in &mut clients {
        expected.extend(c.expected().await);
    }
    let target = Target::new(&up.base(), &up.agent_url(), &up.data_dir, PREFIX, keys)?;
    let f = invariants::check(&target, &expected, Duration::from_secs(150)).await;
    let lost: Vec<String> = tally
        .lost
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .chain(f.lost.iter().cloned())
        .collect();

    println!(
        "\n== soak: {ran:.0?} of {} clients, {restarts} SIGKILL restarts",
        args.clients
    );
    let done = tally.done.lock().unwrap().clone();
    println!("operations done: {}", done.values().sum::<u64>());
    for (op, n) in &done {
        println!("  {op:<16} {n}");
    }
    let errors = tally.errors.lock().unwrap().clone();
    println!("errors by kind: {}", errors.values().sum::<u64>());
    for (kind, n) in &errors {
        println!("  {kind:<40} {n}");
    }
    println!(
        "sandboxes at the end: {} listed, {} usable, {} in error (files kept)",
        f.listed,
        f.usable.len(),
        f.errored.len()
    );
    println!("sandboxes lost: {}", lost.len());
    for l in &lost {
        println!("  {l}");
    }
    println!("orphans found: {}", f.orphans.len());
    for o in &f.orphans {
        println!("  {o}");
    }
    println!("disagreements: {}", f.disagreements.len());
    for d in &f.disagreements {
        println!("  {d}");
    }
    let ok = lost.is_empty() && f.ok();

    // Teardown: everything destroyed, a clean stop leaves no process and no namespace.
    let clean = teardown(&mut up, &target).await;
    if let Err(e) = &clean {
        println!("teardown: {e:#}");
    }
    println!("total {:.0?}", t0.elapsed());
    // The daemon's log outlives the data dir, for a look at the errors counted.
    let log = up.data_dir.with_extension("log");
    let _ = std::fs::copy(up.data_dir.join("wrenn-up.log"), &log);
    println!("wrenn up's log: {}", log.display());
    if !args.keep && ok && clean.is_ok() {
        let _ = std::fs::remove_dir_all(&up.data_dir);
    }
    Ok(ok && clean.is_ok())
}

async fn teardown(up: &mut Up, t: &Target) -> Result<()> {
    for key in &t.keys {
        let list: serde_json::Value = t
            .http
            .get(format!("{}/v1/sandboxes", t.base))
            .header("X-API-Key", key)
            .send()
            .await?
            .json()
            .await?;
        for sb in list.as_array().into_iter().flatten() {
            let id = sb["id"].as_str().unwrap_or_default();
            let r = t
                .http
                .delete(format!("{}/v1/sandboxes/{id}", t.base))
                .header("X-API-Key", key)
                .send()
                .await?;
            if r.status() != 204 {
                bail!("destroy {id}: {}", r.status());
            }
        }
        let snaps: serde_json::Value = t
            .http
            .get(format!("{}/v1/snapshots", t.base))
            .header("X-API-Key", key)
            .send()
            .await?
            .json()
            .await?;
        for s in snaps
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"] == "snapshot")
        {
            let name = s["name"].as_str().unwrap_or_default();
            let r = t
                .http
                .delete(format!("{}/v1/snapshots/{name}", t.base))
                .header("X-API-Key", key)
                .send()
                .await?;
            if r.status() != 204 {
                bail!("delete snapshot {name}: {}", r.status());
            }
        }
    }
    let f = invariants::converge(t, Duration::from_secs(90)).await;
    if !f.ok() {
        bail!("after destroying everything: {f}");
    }
    up.signal(nix::sys::signal::Signal::SIGTERM).await?;
    let left = wrenn_soak::up::processes_of(&up.data_dir);
    if !left.is_empty() {
        bail!("processes left after the stop: {left:?}");
    }
    let ns = invariants::namespaces_of(PREFIX);
    let links = invariants::links_of(PREFIX);
    if !ns.is_empty() || !links.is_empty() {
        bail!("network namespaces {ns:?} and links {links:?} left after the stop");
    }
    Ok(())
}
