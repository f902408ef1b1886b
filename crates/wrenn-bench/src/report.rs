//! The benchmark's results: what was measured (per section and operation), the conditions it
//! was measured under, and their rendering as a text table and as JSON. It does not measure
//! anything itself and draws no chart (see `chart`).

use crate::stats::{summarize, Summary};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One measured operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Stable key, e.g. `create_warm`.
    pub key: String,
    /// What the table shows.
    pub name: String,
    /// Unit of the samples: `ms`, `MB/s` or `MB`.
    pub unit: String,
    pub samples: Vec<f64>,
    /// Attempts that failed (not in `samples`).
    pub failures: usize,
    /// Distinct failure messages (at most a few).
    pub errors: Vec<String>,
    /// Anything else worth knowing about this row.
    pub note: Option<String>,
    pub summary: Option<Summary>,
}

impl Op {
    pub fn new(key: &str, name: &str, unit: &str) -> Self {
        Op {
            key: key.into(),
            name: name.into(),
            unit: unit.into(),
            samples: Vec::new(),
            failures: 0,
            errors: Vec::new(),
            note: None,
            summary: None,
        }
    }

    pub fn add(&mut self, v: f64) {
        self.samples.push(v);
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures += 1;
        let why = why.into();
        if self.errors.len() < 5 && !self.errors.contains(&why) {
            self.errors.push(why);
        }
    }

    fn finish(&mut self) {
        self.summary = summarize(&self.samples);
    }
}

/// A group of operations measured the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    /// How this section measures.
    pub how: String,
    pub ops: Vec<Op>,
}

/// The densest idle population reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Density {
    pub memory_mb: u32,
    pub cap: usize,
    /// Sandboxes running at once.
    pub held: usize,
    /// Of those, how many answered an exec.
    pub answered: usize,
    /// Why creating one more failed, if it did before the cap.
    pub stopped_by: Option<String>,
    pub mem_available_before_mb: u64,
    pub mem_available_after_mb: u64,
}

/// One speed target checked against the run (see `targets`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetRow {
    pub what: String,
    /// The goal, e.g. `<= 60 ms`.
    pub goal: String,
    /// The figure measured, if its rows ran.
    pub measured: Option<f64>,
    pub unit: String,
    /// Whether the goal is met, if measured.
    pub met: Option<bool>,
    /// What stands beside it (a peer's median and the ratio to it), if anything.
    pub beside: String,
}

/// Conditions of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Host {
    pub cpus: usize,
    pub mem_total_mb: u64,
    pub mem_available_start_mb: u64,
    pub mem_available_end_mb: u64,
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub started_at: String,
    pub mode: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub duration_s: f64,
    pub host: Host,
    pub sections: Vec<Section>,
    pub density: Density,
    /// Median resume at 2048 MB over median resume at 256 MB (`first`, `later`); the design
    /// target is at most 1.3.
    pub resume_ratio_2048_vs_256: Option<(f64, f64)>,
    /// The speed targets, checked (empty in reports written before they were).
    #[serde(default)]
    pub targets: Vec<TargetRow>,
    pub notes: Vec<String>,
}

impl Report {
    /// Computes every operation's summary, the resume ratio and the targets.
    pub fn finish(&mut self) {
        for s in &mut self.sections {
            for op in &mut s.ops {
                op.finish();
            }
        }
        let ratio = |a: &str, b: &str| Some(self.median(a)? / self.median(b)?);
        self.resume_ratio_2048_vs_256 = match (
            ratio("resume_first_2048", "resume_first_256"),
            ratio("resume_later_2048", "resume_later_256"),
        ) {
            (Some(f), Some(l)) => Some((f, l)),
            _ => None,
        };
        self.targets = crate::targets::check(self);
    }

    /// The median of the operation `key`, once summarised, if it has samples.
    pub fn median(&self, key: &str) -> Option<f64> {
        self.sections
            .iter()
            .flat_map(|s| &s.ops)
            .find(|o| o.key == key)
            .and_then(|o| o.summary.as_ref())
            .map(|s| s.median)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let h = &self.host;
        let _ = writeln!(
            out,
            "wrenn-bench ({} mode) started {}; guests under {}; {} CPUs, {} MB RAM; took {:.0} s",
            self.mode,
            self.started_at,
            self.accel.to_uppercase(),
            h.cpus,
            h.mem_total_mb,
            self.duration_s
        );
        let _ = writeln!(
            out,
            "load average at start {:.2} {:.2} {:.2}, at end {:.2} {:.2} {:.2}; \
             MemAvailable at start {} MB, at end {} MB",
            h.load_start[0],
            h.load_start[1],
            h.load_start[2],
            h.load_end[0],
            h.load_end[1],
            h.load_end[2],
            h.mem_available_start_mb,
            h.mem_available_end_mb
        );
        let width = self
            .sections
            .iter()
            .flat_map(|s| &s.ops)
            .map(|o| o.name.len())
            .max()
            .unwrap_or(10)
            .max(10);
        for s in &self.sections {
            let _ = writeln!(out, "\n[{}] {}", s.name, s.how);
            let _ = writeln!(
                out,
                "{:<width$} {:>5} {:>3} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "operation", "unit", "n", "fail", "median", "p95", "min", "max", "IQR", "stdev"
            );
            for op in &s.ops {
                match &op.summary {
                    Some(m) => {
                        let _ = writeln!(
                            out,
                            "{:<width$} {:>5} {:>3} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                            op.name,
                            op.unit,
                            m.n,
                            op.failures,
                            num(m.median),
                            num(m.p95),
                            num(m.min),
                            num(m.max),
                            num(m.iqr),
                            num(m.stdev)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{:<width$} {:>5} {:>3} {:>4}   (no successful sample)",
                            op.name, op.unit, 0, op.failures
                        );
                    }
                }
                if let Some(n) = &op.note {
                    let _ = writeln!(out, "{:<width$}   {n}", "");
                }
                for e in &op.errors {
                    let _ = writeln!(out, "{:<width$}   failure: {e}", "");
                }
            }
        }
        let d = &self.density;
        let _ = writeln!(
            out,
            "\nidle {} MB sandboxes held at once: {} (cap {}), {} answered exec; \
             MemAvailable {} MB before, {} MB with them running{}",
            d.memory_mb,
            d.held,
            d.cap,
            d.answered,
            d.mem_available_before_mb,
            d.mem_available_after_mb,
            d.stopped_by
                .as_ref()
                .map(|s| format!("; stopped by: {s}"))
                .unwrap_or_default()
        );
        if let Some((first, later)) = self.resume_ratio_2048_vs_256 {
            let _ = writeln!(
                out,
                "resume 2048 MB / 256 MB (medians): first {first:.2}x, later {later:.2}x \
                 (target: at most 1.3x)"
            );
        }
        self.targets_table(&mut out);
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// The targets, each with its goal, the figure measured, met or not, and its peer.
    fn targets_table(&self, out: &mut String) {
        if self.targets.is_empty() {
            return;
        }
        let width = self
            .targets
            .iter()
            .map(|t| t.what.len())
            .max()
            .unwrap_or(10);
        let _ = writeln!(
            out,
            "\n[targets] medians against the speed targets ({}, this host)",
            self.accel.to_uppercase()
        );
        let _ = writeln!(
            out,
            "{:<width$} {:>12} {:>10} {:>5}   beside",
            "target", "goal", "measured", "met"
        );
        for t in &self.targets {
            let measured = t
                .measured
                .map(|m| match t.unit.as_str() {
                    "" => format!("{m:.0}"),
                    unit => format!("{} {unit}", num(m)),
                })
                .unwrap_or_else(|| "-".into());
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let _ = writeln!(
                out,
                "{:<width$} {:>12} {:>10} {:>5}   {}",
                t.what,
                t.goal,
                measured.trim(),
                met,
                t.beside
            );
        }
    }
}

/// A number with precision that suits its size.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
impl Op {
    /// An `ms` operation named by its key, with `samples`.
    pub fn sampled(key: &str, samples: &[f64]) -> Op {
        let mut o = Op::new(key, key, "ms");
        for s in samples {
            o.add(*s);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, samples: &[f64]) -> Op {
        Op::sampled(key, samples)
    }

    #[test]
    fn finish_summarises_and_computes_the_resume_ratio() {
        let mut r = Report {
            sections: vec![Section {
                name: "api".into(),
                how: "test".into(),
                ops: vec![
                    op("resume_first_256", &[100.0, 100.0]),
                    op("resume_first_2048", &[150.0]),
                    op("resume_later_256", &[40.0, 60.0]),
                    op("resume_later_2048", &[60.0]),
                ],
            }],
            ..Default::default()
        };
        r.finish();
        let (first, later) = r.resume_ratio_2048_vs_256.unwrap();
        assert!((first - 1.5).abs() < 1e-9);
        assert!((later - 1.2).abs() < 1e-9);
        assert_eq!(r.sections[0].ops[1].summary.as_ref().unwrap().n, 1);
    }

    #[test]
    fn table_shows_rows_failures_and_empty_operations() {
        let mut failed = op("exec", &[]);
        failed.fail("502 agent_error: boom");
        failed.fail("502 agent_error: boom");
        let mut r = Report {
            accel: "tcg".into(),
            sections: vec![Section {
                name: "api".into(),
                how: "through HTTP".into(),
                ops: vec![op("create_warm", &[1234.5, 1000.0]), failed],
            }],
            ..Default::default()
        };
        r.finish();
        let t = r.table();
        assert!(t.contains("guests under TCG"), "{t}");
        let row = t.lines().find(|l| l.starts_with("create_warm")).unwrap();
        assert!(row.contains(" 1117 "), "{row}");
        assert!(t.contains("(no successful sample)"), "{t}");
        assert_eq!(
            t.matches("failure: 502 agent_error: boom").count(),
            1,
            "{t}"
        );
    }
}
