//! The speed targets Wrenn is held to, checked against a finished report: for each, the
//! figure measured (the median of its row, or the worst median of its rows), the goal, whether
//! it is met, and what stands beside it (gVisor's row, the raw QEMU restore, the pool off).
//! A target whose rows did not run in this report (`--only`, quick mode) shows no figure.

use crate::report::{Report, TargetRow};

/// One target: what it is, its rows' keys, the goal the figure must stay at or below and its
/// unit, and the row shown beside it (its name and key).
struct Target {
    what: &'static str,
    keys: &'static [&'static str],
    goal: f64,
    unit: &'static str,
    beside: Option<(&'static str, &'static str)>,
}

const fn at_most(
    what: &'static str,
    keys: &'static [&'static str],
    goal: f64,
    unit: &'static str,
    beside: Option<(&'static str, &'static str)>,
) -> Target {
    Target {
        what,
        keys,
        goal,
        unit,
        beside,
    }
}

const RAW: Option<(&str, &str)> = Some(("raw QEMU restore", "raw_restore"));

const TARGETS: &[Target] = &[
    at_most(
        "create -> 201 with envd ready, from the pool",
        &["wrenn_create_pool"],
        30.0,
        "ms",
        None,
    ),
    at_most(
        "create -> 201 with envd ready, pool miss",
        &["wrenn_create_no_pool"],
        150.0,
        "ms",
        RAW,
    ),
    at_most(
        "create + first `echo` result, from the pool",
        &["wrenn_echo_pool"],
        80.0,
        "ms",
        Some(("gVisor", "gvisor_echo")),
    ),
    at_most(
        "create + first Python result, from the pool",
        &["wrenn_python3_pool"],
        400.0,
        "ms",
        Some(("gVisor", "gvisor_python")),
    ),
    at_most(
        "pause 256 MB, first",
        &["pause_first_256"],
        60.0,
        "ms",
        None,
    ),
    at_most(
        "pause 256 MB, later",
        &["pause_later_256"],
        60.0,
        "ms",
        None,
    ),
    at_most(
        "pause 2048 MB, first",
        &["pause_first_2048"],
        60.0,
        "ms",
        None,
    ),
    at_most(
        "pause 2048 MB, later",
        &["pause_later_2048"],
        60.0,
        "ms",
        None,
    ),
    at_most(
        "resume 256 MB, first",
        &["resume_first_256"],
        150.0,
        "ms",
        RAW,
    ),
    at_most(
        "resume 256 MB, later",
        &["resume_later_256"],
        150.0,
        "ms",
        RAW,
    ),
    at_most(
        "resume 2048 MB, first",
        &["resume_first_2048"],
        150.0,
        "ms",
        RAW,
    ),
    at_most(
        "resume 2048 MB, later",
        &["resume_later_2048"],
        150.0,
        "ms",
        RAW,
    ),
    at_most(
        "QEMU PSS after any resume (worst median)",
        &[
            "resumed_pss_first_256",
            "resumed_pss_later_256",
            "resumed_pss_first_2048",
            "resumed_pss_later_2048",
        ],
        80.0,
        "MB",
        None,
    ),
    at_most("exec `true` round trip", &["exec"], 30.0, "ms", None),
    at_most(
        "30 creates at once, wall time, from the pool",
        &["burst_wall_30_pool"],
        2000.0,
        "ms",
        Some(("pool off", "burst_wall_30")),
    ),
];

/// Idle 512 MB sandboxes held at once, each answering exec.
const DENSITY_GOAL: usize = 100;

/// Every target checked against `report` (whose summaries are computed).
pub fn check(report: &Report) -> Vec<TargetRow> {
    let mut rows: Vec<TargetRow> = TARGETS
        .iter()
        .map(|t| {
            let medians: Vec<f64> = t.keys.iter().filter_map(|k| report.median(k)).collect();
            // A figure stands only when every row it is the worst of was measured.
            let measured = medians
                .iter()
                .copied()
                .reduce(f64::max)
                .filter(|_| medians.len() == t.keys.len());
            let beside = t.beside.and_then(|(name, key)| {
                let b = report.median(key)?;
                let ratio = measured
                    .map(|m| format!(", {:.2}x", m / b))
                    .unwrap_or_default();
                Some(format!("{name} {b:.0} {}{ratio}", t.unit))
            });
            TargetRow {
                what: t.what.into(),
                goal: format!("<= {} {}", t.goal, t.unit),
                measured,
                unit: t.unit.into(),
                met: measured.map(|m| m <= t.goal),
                beside: beside.unwrap_or_default(),
            }
        })
        .collect();
    // Held below the goal only because the run's cap was lower says nothing: no verdict.
    let d = &report.density;
    let ran = d.cap > 0;
    let decides = ran && (d.answered >= DENSITY_GOAL || d.cap >= DENSITY_GOAL);
    rows.push(TargetRow {
        what: format!(
            "idle {} MB sandboxes held, each answering exec",
            d.memory_mb
        ),
        goal: format!(">= {DENSITY_GOAL}"),
        measured: ran.then_some(d.answered as f64),
        unit: String::new(),
        met: decides.then_some(d.answered >= DENSITY_GOAL),
        beside: match (ran, decides) {
            (false, _) => String::new(),
            (true, true) => format!("cap {}", d.cap),
            (true, false) => format!("cap {}: `--cap {DENSITY_GOAL}` decides", d.cap),
        },
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Op, Section};

    fn op(key: &str, samples: &[f64]) -> Op {
        Op::sampled(key, samples)
    }

    fn row<'a>(rows: &'a [TargetRow], what: &str) -> &'a TargetRow {
        rows.iter().find(|r| r.what.starts_with(what)).unwrap()
    }

    #[test]
    fn targets_take_the_median_the_worst_of_several_rows_and_show_the_peer() {
        let mut r = Report {
            sections: vec![Section {
                name: "api".into(),
                how: "test".into(),
                ops: vec![
                    op("exec", &[10.0, 20.0, 90.0]),
                    op("wrenn_echo_pool", &[100.0]),
                    op("gvisor_echo", &[200.0]),
                    op("resumed_pss_first_256", &[70.0]),
                    op("resumed_pss_later_256", &[79.0]),
                    op("resumed_pss_first_2048", &[85.0]),
                    op("resumed_pss_later_2048", &[60.0]),
                    op("pause_first_256", &[50.0]),
                ],
            }],
            ..Default::default()
        };
        r.finish();
        let rows = check(&r);
        let exec = row(&rows, "exec");
        assert_eq!((exec.measured, exec.met), (Some(20.0), Some(true)));
        let echo = row(&rows, "create + first `echo`");
        assert_eq!(echo.met, Some(false));
        assert_eq!(echo.beside, "gVisor 200 ms, 0.50x");
        let pss = row(&rows, "QEMU PSS");
        assert_eq!((pss.measured, pss.met), (Some(85.0), Some(false)));
        // Not measured in this report: no figure, no verdict.
        let resume = row(&rows, "resume 256 MB, first");
        assert_eq!((resume.measured, resume.met), (None, None));
        let density = row(&rows, "idle");
        assert_eq!(density.met, None);
    }

    #[test]
    fn density_is_judged_only_by_a_run_that_could_reach_the_goal() {
        let mut r = Report::default();
        r.density.memory_mb = 512;
        for (cap, answered, met) in [
            (30, 30, None),
            (100, 100, Some(true)),
            (100, 40, Some(false)),
            (150, 120, Some(true)),
        ] {
            r.density.cap = cap;
            r.density.answered = answered;
            let rows = check(&r);
            assert_eq!(
                row(&rows, "idle").met,
                met,
                "cap {cap}, {answered} answered"
            );
        }
    }
}
