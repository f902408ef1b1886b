//! Measures network slot operations on this host (needs root): creating a slot on demand,
//! removing one, handing one out from the ready pool, and resetting one for reuse. Prints the
//! median, minimum and maximum of 20 runs each. Run with
//! `cargo run --release -p wrenn-agent --example net_slots_bench`.

use std::time::{Duration, Instant};

use wrenn_agent::net::{leftovers, NetConfig, SlotPool};

const RUNS: usize = 20;

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<28} median {:7.2} ms   min {:7.2} ms   max {:7.2} ms   (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

fn main() -> anyhow::Result<()> {
    let prefix = format!("wb{}", std::process::id() % 1000);
    let cfg = NetConfig {
        prefix: prefix.clone(),
        first_slot: 16000,
        max_slots: RUNS as u32 * 2,
        pool_size: 0,
        ..NetConfig::default()
    };

    // On-demand creation and removal (empty pool: release removes the slot).
    let pool = SlotPool::new(cfg.clone())?;
    let (mut create, mut remove) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let slot = pool.acquire_blocking()?;
        create.push(t.elapsed());
        let t = Instant::now();
        pool.release_blocking(slot)?;
        remove.push(t.elapsed());
    }
    pool.shutdown()?;
    drop(pool);
    report("create slot (on demand)", create);
    report("remove slot", remove);

    // Pool of ready slots: hand-out and reset-for-reuse.
    let pool = SlotPool::new(NetConfig {
        pool_size: RUNS,
        ..cfg
    })?;
    let t = Instant::now();
    while pool.ready() < RUNS {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "pool of {RUNS} filled in background in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut slots = Vec::new();
    let mut take = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        slots.push(pool.acquire_blocking()?);
        take.push(t.elapsed());
    }
    report("acquire from ready pool", take);
    let mut give = Vec::new();
    for slot in slots {
        let t = Instant::now();
        pool.release_blocking(slot)?;
        give.push(t.elapsed());
    }
    let label = if pool.reuses_slots() {
        "release (reset for reuse)"
    } else {
        "release (remove)"
    };
    report(label, give);
    pool.shutdown()?;
    let left = leftovers(&prefix)?;
    anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
