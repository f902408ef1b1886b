//! The measurements: each phase drives a started [`System`] (the public API with an API key,
//! or the agent's sandbox manager directly for the agent section) and records samples into
//! [`Op`]s. Every sandbox a phase creates is destroyed by that phase, also when a step fails;
//! whatever a failure leaves behind is removed by [`System::shutdown`].

use crate::report::{Density, Op, Section};
use crate::system::System;
use anyhow::{anyhow, Result};
use bytes::Bytes;
use std::future::Future;
use std::time::{Duration, Instant};

/// How many samples of each kind a run takes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub warm_creates: usize,
    pub execs: usize,
    /// Sandboxes per memory size for pause/resume (each gives one first pause and resume).
    pub pause_sandboxes: usize,
    /// Later pause/resume rounds per sandbox.
    pub pause_rounds: usize,
    pub file_rounds: usize,
    pub file_bytes: usize,
    pub concurrency: Vec<usize>,
    pub density_cap: usize,
    pub agent_samples: usize,
    /// Samples of each row of the peers section (gVisor, the raw limit, Wrenn pool on/off).
    pub peer_samples: usize,
    /// Only the phases whose name contains one of these (all when empty).
    pub only: Vec<String>,
    /// Whether the pooled burst runs (filling the pool takes a minute or more under TCG).
    pub pooled_burst: bool,
}

impl Plan {
    pub fn quick() -> Plan {
        Plan {
            warm_creates: 5,
            execs: 10,
            pause_sandboxes: 1,
            pause_rounds: 2,
            file_rounds: 1,
            file_bytes: 100_000_000,
            concurrency: vec![10, 30],
            density_cap: 5,
            agent_samples: 3,
            peer_samples: 3,
            only: Vec::new(),
            pooled_burst: false,
        }
    }

    pub fn full() -> Plan {
        Plan {
            warm_creates: 20,
            execs: 50,
            pause_sandboxes: 4,
            pause_rounds: 3,
            file_rounds: 3,
            file_bytes: 100_000_000,
            concurrency: vec![10, 30],
            density_cap: 30,
            agent_samples: 8,
            peer_samples: 10,
            only: Vec::new(),
            pooled_burst: true,
        }
    }

    /// Whether the phase `name` runs.
    pub fn selected(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

/// Memory of the sandboxes most phases use (the API's default).
pub(crate) const MEMORY_MB: u32 = 512;
/// The memory sizes pause and resume are compared at.
const PAUSE_SIZES: [u32; 2] = [256, 2048];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `f` and returns its result with how long it took, in milliseconds.
pub(crate) async fn timed<T>(f: impl Future<Output = T>) -> (T, f64) {
    let t = Instant::now();
    let r = f.await;
    (r, ms(t.elapsed()))
}

/// Records a timed result into `op`; passes the result on.
pub(crate) fn record<T>(op: &mut Op, (r, t): (Result<T>, f64)) -> Result<T> {
    match &r {
        Ok(_) => op.add(t),
        Err(e) => op.fail(format!("{e:#}")),
    }
    r
}

/// The benchmark's state: the system under test, the plan and the results so far.
pub struct Bench<'a> {
    pub sys: &'a System,
    pub plan: Plan,
    pub api: Section,
    pub agent: Section,
    pub peers: Section,
    pub density: Density,
}

impl<'a> Bench<'a> {
    pub fn new(sys: &'a System, plan: Plan) -> Self {
        Bench {
            sys,
            plan,
            api: Section {
                name: "api".into(),
                how: "public HTTP API on loopback with an API key (control plane -> agent -> VM)"
                    .into(),
                ops: Vec::new(),
            },
            agent: Section {
                name: "agent".into(),
                how: "sandbox manager called directly, no HTTP (the host agent's own cost)".into(),
                ops: Vec::new(),
            },
            peers: Section {
                name: "peers".into(),
                how: "gVisor and raw QEMU beside Wrenn's create-to-first-result (public API), \
                      same host, same run"
                    .into(),
                ops: Vec::new(),
            },
            density: Density::default(),
        }
    }

    fn api_op(&mut self, key: &str, name: &str, unit: &str) -> usize {
        self.api.ops.push(Op::new(key, name, unit));
        self.api.ops.len() - 1
    }

    /// Every phase in order; a failing phase is reported and the next one runs.
    pub async fn run_all(&mut self) {
        let phases: [(&str, PhaseFn); 11] = [
            ("cold boots", |b| Box::pin(b.cold_boots())),
            ("warm creates", |b| Box::pin(b.warm_creates())),
            ("exec round trips", |b| Box::pin(b.exec_round_trips())),
            ("agent-level lifecycle", |b| Box::pin(b.agent_level())),
            ("jail overhead", |b| Box::pin(b.jail_overhead())),
            ("pause and resume", |b| Box::pin(b.pause_resume())),
            ("file throughput", |b| Box::pin(b.files())),
            ("concurrent creates", |b| Box::pin(b.concurrent())),
            ("agent bursts", |b| Box::pin(b.agent_bursts())),
            ("bursts from the warm pool", |b| Box::pin(b.pooled_burst())),
            ("gVisor, the raw limit and the warm pool", |b| {
                Box::pin(b.peers())
            }),
        ];
        for (name, phase) in phases {
            // The cold boots make the warm snapshot every later phase clones.
            if name != "cold boots" && !self.plan.selected(name) {
                continue;
            }
            eprintln!("==> {name}");
            if let Err(e) = phase(self).await {
                eprintln!("    {name} failed: {e:#}");
                let op = self.api_op(&format!("phase_{}", name.replace(' ', "_")), name, "ms");
                self.api.ops[op].fail(format!("{e:#}"));
            }
        }
        if !self.plan.selected("density") {
            return;
        }
        eprintln!("==> density and idle memory");
        if let Err(e) = self.density().await {
            eprintln!("    density failed: {e:#}");
            self.density.stopped_by = Some(format!("{e:#}"));
        }
    }

    /// The first create for a new (vcpus, memory) boots the template cold, waits for envd and
    /// saves the warm snapshot, then clones it: one sample per memory size the run needs.
    async fn cold_boots(&mut self) -> Result<()> {
        let op = self.api_op(
            "create_cold",
            "create, cold boot (first of a vcpus x memory)",
            "ms",
        );
        for mem in [MEMORY_MB, PAUSE_SIZES[0], PAUSE_SIZES[1]] {
            let r = timed(self.sys.api.create(mem)).await;
            if let Ok(id) = record(&mut self.api.ops[op], r) {
                self.sys.api.destroy(&id).await?;
            }
        }
        self.api.ops[op].note = Some(format!(
            "memory sizes {MEMORY_MB}, {} and {} MB; includes the clone of the new warm snapshot",
            PAUSE_SIZES[0], PAUSE_SIZES[1]
        ));
        Ok(())
    }

    async fn warm_creates(&mut self) -> Result<()> {
        let c = self.api_op("create_warm", "create, warm (201 with envd ready)", "ms");
        let d = self.api_op("destroy", "destroy", "ms");
        for _ in 0..self.plan.warm_creates {
            let r = timed(self.sys.api.create(MEMORY_MB)).await;
            if let Ok(id) = record(&mut self.api.ops[c], r) {
                let r = timed(self.sys.api.destroy(&id)).await;
                record(&mut self.api.ops[d], r)?;
            }
        }
        Ok(())
    }

    async fn exec_round_trips(&mut self) -> Result<()> {
        let op = self.api_op("exec", "exec `true` round trip", "ms");
        let id = self.sys.api.create(MEMORY_MB).await?;
        // One untimed exec first: the first one after a restore translates cold guest code.
        let first = timed(self.sys.api.exec(&id, "true", &[])).await;
        for _ in 0..self.plan.execs {
            let r = timed(self.sys.api.exec(&id, "true", &[])).await;
            let _ = record(&mut self.api.ops[op], r);
        }
        self.api.ops[op].note = Some(format!(
            "one sandbox, sequential; the first exec after create ({:.0} ms) is not included",
            first.1
        ));
        self.sys.api.destroy(&id).await
    }

    /// Create, first exec, pause and resume (first and later) and destroy, on the manager.
    async fn agent_level(&mut self) -> Result<()> {
        let keys = [
            ("agent_create", "create from warm snapshot (envd ready)"),
            ("agent_first_exec", "first exec `true` after create"),
            ("agent_pause_first", "pause, first (of a clone)"),
            ("agent_resume_first", "resume, first (envd ready)"),
            ("agent_pause_later", "pause, later"),
            ("agent_resume_later", "resume, later (envd ready)"),
            ("agent_destroy", "destroy"),
        ];
        for (k, n) in keys {
            self.agent.ops.push(Op::new(k, n, "ms"));
        }
        let mgr = self.sys.agent.manager.clone();
        for i in 0..self.plan.agent_samples {
            let id = format!("bench-agent-{i}");
            let r = timed(mgr.create(&id, "minimal", 1, MEMORY_MB)).await;
            let r = (r.0.map_err(anyhow::Error::from), r.1);
            if record(&mut self.agent.ops[0], r).is_err() {
                continue;
            }
            let res: Result<()> = async {
                let r = timed(async {
                    // The activity mark keeps a pause from cutting the exec off.
                    let (envd, _activity) = mgr.envd(&id).await?;
                    Ok::<_, anyhow::Error>(envd.exec(&true_exec()).await?)
                })
                .await;
                record(&mut self.agent.ops[1], r)?;
                for (p, q) in [(2, 3), (4, 5)] {
                    let r = timed(mgr.pause(&id)).await;
                    record(&mut self.agent.ops[p], (r.0.map_err(Into::into), r.1))?;
                    let r = timed(mgr.resume(&id)).await;
                    record(&mut self.agent.ops[q], (r.0.map_err(Into::into), r.1))?;
                }
                Ok(())
            }
            .await;
            let r = timed(mgr.destroy(&id)).await;
            let _ = record(&mut self.agent.ops[6], (r.0.map_err(Into::into), r.1));
            res?;
        }
        Ok(())
    }

    /// Create and (later) resume on the manager with the VM jail and without it, alternating
    /// sample by sample so drift in the host's load falls on both; the note gives the
    /// difference of the medians.
    async fn jail_overhead(&mut self) -> Result<()> {
        if !wrenn_agent::vmm::jail::config().enabled {
            return Err(anyhow!(
                "the jail is off (WRENN_JAIL=off): nothing to compare"
            ));
        }
        let first = self.agent.ops.len();
        for (k, n) in [
            ("jail_create_on", "create, jailed QEMU"),
            ("jail_create_off", "create, QEMU without the jail"),
            ("jail_resume_on", "resume (later), jailed QEMU"),
            ("jail_resume_off", "resume (later), QEMU without the jail"),
        ] {
            self.agent.ops.push(Op::new(k, n, "ms"));
        }
        let mgr = self.sys.agent.manager.clone();
        let mut failed = None;
        for i in 0..self.plan.agent_samples {
            for (jailed, create, resume) in
                [(true, first, first + 2), (false, first + 1, first + 3)]
            {
                wrenn_agent::vmm::jail::bypass_for_measurement(!jailed);
                let id = format!("bench-jail-{i}-{}", if jailed { "on" } else { "off" });
                let res: Result<()> = async {
                    let r = timed(mgr.create(&id, "minimal", 1, MEMORY_MB)).await;
                    record(&mut self.agent.ops[create], (r.0.map_err(Into::into), r.1))?;
                    // The first pause and resume move the clone's RAM; time a later one.
                    for round in 0..2 {
                        mgr.pause(&id).await?;
                        let r = timed(mgr.resume(&id)).await;
                        let r = (r.0.map_err(anyhow::Error::from), r.1);
                        if round == 1 {
                            record(&mut self.agent.ops[resume], r)?;
                        } else {
                            r.0?;
                        }
                    }
                    Ok(())
                }
                .await;
                let _ = mgr.destroy(&id).await;
                if let Err(e) = res {
                    failed.get_or_insert(e);
                }
            }
        }
        wrenn_agent::vmm::jail::bypass_for_measurement(false);
        for (on, off) in [(first, first + 1), (first + 2, first + 3)] {
            let med = |i: usize| {
                let mut v = self.agent.ops[i].samples.clone();
                v.sort_by(f64::total_cmp);
                (!v.is_empty()).then(|| crate::stats::percentile(&v, 50.0))
            };
            if let (Some(a), Some(b)) = (med(on), med(off)) {
                self.agent.ops[on].note = Some(format!("median {:+.1} ms against no jail", a - b));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Pause and resume at 256 MB and 2 GB; the first of each sandbox separately.
    async fn pause_resume(&mut self) -> Result<()> {
        for mem in PAUSE_SIZES {
            let pf = self.api_op(
                &format!("pause_first_{mem}"),
                &format!("pause {mem} MB, first"),
                "ms",
            );
            let rf = self.api_op(
                &format!("resume_first_{mem}"),
                &format!("resume {mem} MB, first"),
                "ms",
            );
            let pl = self.api_op(
                &format!("pause_later_{mem}"),
                &format!("pause {mem} MB, later"),
                "ms",
            );
            let rl = self.api_op(
                &format!("resume_later_{mem}"),
                &format!("resume {mem} MB, later"),
                "ms",
            );
            let mf = self.api_op(
                &format!("resumed_pss_first_{mem}"),
                &format!("QEMU PSS after first resume, {mem} MB"),
                "MB",
            );
            let ml = self.api_op(
                &format!("resumed_pss_later_{mem}"),
                &format!("QEMU PSS after later resume, {mem} MB"),
                "MB",
            );
            for _ in 0..self.plan.pause_sandboxes {
                let id = self.sys.api.create(mem).await?;
                let res: Result<()> = async {
                    // Give the guest something of its own in RAM, as a used sandbox has.
                    self.sys
                        .api
                        .exec(
                            &id,
                            "sh",
                            &["-c", "head -c 16000000 /dev/urandom > /tmp/ram"],
                        )
                        .await?;
                    for round in 0..=self.plan.pause_rounds {
                        let (p, r, m) = if round == 0 {
                            (pf, rf, mf)
                        } else {
                            (pl, rl, ml)
                        };
                        let t = timed(self.sys.api.lifecycle(&id, "pause")).await;
                        record(&mut self.api.ops[p], t)?;
                        let t = timed(self.sys.api.lifecycle(&id, "resume")).await;
                        record(&mut self.api.ops[r], t)?;
                        self.sys.api.exec(&id, "true", &[]).await?;
                        match self.sys.qemu_pid(&id).and_then(crate::host::pss_mb) {
                            Some(v) => self.api.ops[m].add(v),
                            None => self.api.ops[m].fail(format!("no PSS for the QEMU of {id}")),
                        }
                    }
                    Ok(())
                }
                .await;
                self.sys.api.destroy(&id).await?;
                res?;
            }
        }
        Ok(())
    }

    /// 100 MB up through `files/stream/write` and back through `files/stream/read`.
    async fn files(&mut self) -> Result<()> {
        let mb = self.plan.file_bytes as f64 / 1e6;
        let up = self.api_op(
            "upload",
            &format!("upload {mb:.0} MB (files/stream/write)"),
            "MB/s",
        );
        let down = self.api_op(
            "download",
            &format!("download {mb:.0} MB (files/stream/read)"),
            "MB/s",
        );
        let mut data = vec![0u8; self.plan.file_bytes];
        rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
        let data = Bytes::from(data);
        let id = self.sys.api.create(MEMORY_MB).await?;
        let path = "/home/user/bench.bin";
        let res: Result<()> = async {
            for _ in 0..self.plan.file_rounds {
                let (r, t) = timed(self.sys.api.upload(&id, path, data.clone())).await;
                record(&mut self.api.ops[up], (r, mb / (t / 1000.0)))?;
                let (r, t) = timed(self.sys.api.download_and_compare(&id, path, &data)).await;
                record(&mut self.api.ops[down], (r, mb / (t / 1000.0)))?;
                self.sys.api.exec(&id, "rm", &["-f", path]).await?;
            }
            Ok(())
        }
        .await;
        self.sys.api.destroy(&id).await?;
        res
    }

    /// Idle 512 MB sandboxes created one by one until one fails or the cap; each must answer
    /// an exec. Also the PSS of each QEMU once they all run.
    async fn density(&mut self) -> Result<()> {
        let pss = self.api_op("idle_pss", "idle 512 MB sandbox, QEMU PSS", "MB");
        self.density.memory_mb = MEMORY_MB;
        self.density.cap = self.plan.density_cap;
        self.density.mem_available_before_mb = crate::host::mem_available_mb();
        let mut ids = Vec::new();
        while ids.len() < self.plan.density_cap {
            match self.sys.api.create(MEMORY_MB).await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.density.stopped_by = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        self.density.held = ids.len();
        // Let them settle into idleness before looking at their memory.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for id in &ids {
            if self.sys.api.exec(id, "true", &[]).await.is_ok() {
                self.density.answered += 1;
            }
        }
        for id in &ids {
            match self.sys.qemu_pid(id).and_then(crate::host::pss_mb) {
                Some(v) => self.api.ops[pss].add(v),
                None => self.api.ops[pss].fail(format!("no PSS for the QEMU of {id}")),
            }
        }
        self.api.ops[pss].note = Some(format!(
            "{} sandboxes running at once, after an exec each",
            ids.len()
        ));
        self.density.mem_available_after_mb = crate::host::mem_available_mb();
        let mut failed = None;
        for id in &ids {
            if let Err(e) = self.sys.api.destroy(id).await {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => Err(anyhow!("destroying: {e:#}")),
            None => Ok(()),
        }
    }
}

type PhaseFn =
    for<'b, 'c> fn(&'b mut Bench<'c>) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + 'b>>;

fn true_exec() -> wrenn_types::envd::ExecRequest {
    wrenn_types::envd::ExecRequest {
        timeout_sec: Some(30),
        ..wrenn_types::envd::ExecRequest::new("true")
    }
}
