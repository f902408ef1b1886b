//! Bursts of creates with their wall time and the host's busy CPU time over the burst: N
//! creates at once through the public API and on the sandbox manager (no HTTP, no control
//! plane) without the warm pool, and N at once through the API with the pool filled ahead.
//! Every sandbox made is destroyed here and the pool is turned off again.

use crate::report::Op;
use crate::runs::{record, timed, Bench, MEMORY_MB};
use anyhow::{anyhow, Result};
use std::time::{Duration, Instant};
use wrenn_agent::sandbox::{Manager, PoolConfig};

/// Clones a shape's pool holds for the pooled burst: as many as the burst has creates.
const POOL_SIZE: usize = 30;
/// Longest wait for the pool to be refilled.
const REFILL_TIMEOUT: Duration = Duration::from_secs(600);

impl Bench<'_> {
    /// N creates at once through the public API, pool off; each one's latency, the wall time
    /// and the failures.
    pub async fn concurrent(&mut self) -> Result<()> {
        for n in self.plan.concurrency.clone() {
            let mut op = Op::new(
                &format!("create_concurrent_{n}"),
                &format!("create, {n} at once (each)"),
                "ms",
            );
            let (note, wall) = self.api_burst(&mut op, n).await?;
            op.note = Some(note);
            self.push_burst(op, n, wall, "");
        }
        Ok(())
    }

    /// The API's burst sizes on the agent directly, pool off.
    pub async fn agent_bursts(&mut self) -> Result<()> {
        let mgr = self.sys.agent.manager.clone();
        for n in self.plan.concurrency.clone() {
            let mut op = Op::new(
                &format!("agent_create_concurrent_{n}"),
                &format!("create, {n} at once (each)"),
                "ms",
            );
            let note = burst(&mgr, &mut op, n).await;
            op.note = Some(note);
            self.agent.ops.push(op);
        }
        Ok(())
    }

    /// The largest burst through the public API with the pool on and filled: a first burst of
    /// [`POOL_SIZE`] misses on the agent raises the shape's target to [`POOL_SIZE`]; once the
    /// refill has made that many clones (its time and the host memory they take are noted),
    /// the burst takes them first.
    pub async fn pooled_burst(&mut self) -> Result<()> {
        if !self.plan.pooled_burst {
            eprintln!("    skipped (full mode or --only)");
            return Ok(());
        }
        let mgr = self.sys.agent.manager.clone();
        let n = self.plan.concurrency.iter().copied().max().unwrap_or(30);
        mgr.set_pool_config(PoolConfig {
            max_per_shape: POOL_SIZE,
            memory_budget_mb: POOL_SIZE as u64 * (u64::from(MEMORY_MB) + 128),
            idle_shrink: Duration::from_secs(3600),
        })
        .await;
        let r = async {
            let mut misses = Op::new("agent_pool_misses", "misses", "ms");
            burst(&mgr, &mut misses, POOL_SIZE).await;
            let before = crate::host::mem_available_mb();
            let busy = crate::host::cpu_busy_s();
            let started = Instant::now();
            while (mgr.pool_counts().pooled as usize) < POOL_SIZE {
                if started.elapsed() > REFILL_TIMEOUT {
                    return Err(anyhow!(
                        "the pool held {} of {POOL_SIZE} clones after {} s",
                        mgr.pool_counts().pooled,
                        REFILL_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let refill = started.elapsed().as_secs_f64();
            let busy = crate::host::cpu_busy_s() - busy;
            let per_clone_mb =
                before.saturating_sub(crate::host::mem_available_mb()) as f64 / POOL_SIZE as f64;
            let mut op = Op::new(
                &format!("create_concurrent_{n}_pool"),
                &format!("create, {n} at once, {POOL_SIZE} pooled (each)"),
                "ms",
            );
            let (note, wall) = self.api_burst(&mut op, n).await?;
            op.note = Some(format!(
                "{note}; the pool's {POOL_SIZE} clones were made in {refill:.0} s \
                 ({:.2} s of host CPU and {per_clone_mb:.0} MB of host memory each)",
                busy / POOL_SIZE as f64
            ));
            self.push_burst(op, n, wall, &format!(", {POOL_SIZE} pooled"));
            Ok(())
        }
        .await;
        mgr.set_pool_config(PoolConfig::OFF).await;
        r
    }

    /// Adds an API burst's row `op` of `n` creates, and when all were made a row with its
    /// wall time (key `burst_wall_{n}`, with `_pool` when `pooled` names the pool).
    fn push_burst(&mut self, op: Op, n: usize, wall: Duration, pooled: &str) {
        let made = op.samples.len();
        self.api.ops.push(op);
        if made == n {
            let suffix = if pooled.is_empty() { "" } else { "_pool" };
            let mut w = Op::new(
                &format!("burst_wall_{n}{suffix}"),
                &format!("{n} creates at once{pooled}, wall time"),
                "ms",
            );
            w.add(wall.as_secs_f64() * 1000.0);
            self.api.ops.push(w);
        }
    }

    /// `n` creates at once through the public API, each recorded into `op`, then all
    /// destroyed; returns the note, as [`burst`]'s, and the wall time.
    async fn api_burst(&self, op: &mut Op, n: usize) -> Result<(String, Duration)> {
        let api = &self.sys.api;
        let started = Instant::now();
        let busy = crate::host::cpu_busy_s();
        let results =
            futures_util::future::join_all((0..n).map(|_| timed(api.create(MEMORY_MB)))).await;
        let wall = started.elapsed();
        let busy = crate::host::cpu_busy_s() - busy;
        let ids: Vec<String> = results
            .into_iter()
            .filter_map(|r| record(op, r).ok())
            .collect();
        for d in futures_util::future::join_all(ids.iter().map(|id| api.destroy(id))).await {
            d?;
        }
        Ok((burst_note(ids.len(), n, wall, busy), wall))
    }
}

/// `n` creates at once on `mgr`, each recorded into `op`, then all destroyed; returns the
/// note: how many were made, the wall time and the host's busy CPU time over the burst (all
/// processes: the agent, its network commands and the QEMUs; a burst cannot end sooner than
/// this over the CPUs).
async fn burst(mgr: &Manager, op: &mut Op, n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("bench-burst-{i}")).collect();
    let started = Instant::now();
    let busy = crate::host::cpu_busy_s();
    let results = futures_util::future::join_all(
        ids.iter()
            .map(|id| timed(mgr.create(id, "minimal", 1, MEMORY_MB))),
    )
    .await;
    let wall = started.elapsed();
    let busy = crate::host::cpu_busy_s() - busy;
    let mut made = 0;
    for (r, t) in results {
        if record(op, (r.map_err(anyhow::Error::from), t)).is_ok() {
            made += 1;
        }
    }
    futures_util::future::join_all(ids.iter().map(|id| mgr.destroy(id))).await;
    burst_note(made, n, wall, busy)
}

/// What a burst's note says: how many of `n` were made, its wall time and the host's busy CPU
/// time over it.
fn burst_note(made: usize, n: usize, wall: Duration, busy: f64) -> String {
    format!(
        "{made} of {n} created in {:.1} s wall time; host CPU busy {busy:.1} s ({:.0} ms a \
         create)",
        wall.as_secs_f64(),
        busy * 1000.0 / n.max(1) as f64
    )
}
