//! Progress reporting of the image build: one callback per step start and end, so the CLI can
//! print lines on a terminal and the server can forward them. Owns only the presentation of
//! progress; it never decides what is built.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// One step of a build, as shown to the user: `[index/total] label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based position of the step.
    pub index: usize,
    /// Number of steps in the whole build.
    pub total: usize,
    /// What the step does, e.g. `debootstrap bookworm (minbase + python3 …)`.
    pub label: String,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step did its work, taking this long.
    Done(Duration),
    /// The step's artifact was already up to date.
    Cached,
    /// The step failed; the build returns the error right after.
    Failed(Duration),
}

/// Receives the steps of a build as they happen.
pub trait Progress {
    /// A step begins.
    fn begin(&mut self, step: &Step);
    /// The step that began last has ended.
    fn end(&mut self, step: &Step, outcome: &StepOutcome);
}

/// Discards all progress (tests, callers that only want the result).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&mut self, _: &Step) {}
    fn end(&mut self, _: &Step, _: &StepOutcome) {}
}

/// Prints progress to stderr: on a terminal one line per step completed in place
/// (`[2/5] label… done in 31.2s`), otherwise a plain line at the start and the end of each step.
#[derive(Debug, Clone, Copy)]
pub struct StderrProgress {
    terminal: bool,
}

impl StderrProgress {
    /// Detects whether stderr is a terminal.
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for StderrProgress {
    fn begin(&mut self, step: &Step) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "{}… ", step_prefix(step));
        } else {
            let _ = writeln!(err, "{}…", step_prefix(step));
        }
        let _ = err.flush();
    }

    fn end(&mut self, step: &Step, outcome: &StepOutcome) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = writeln!(err, "{}", outcome_text(outcome));
        } else {
            let _ = writeln!(err, "{}: {}", step_prefix(step), outcome_text(outcome));
        }
    }
}

/// `[2/5] label`
pub fn step_prefix(step: &Step) -> String {
    format!("[{}/{}] {}", step.index, step.total, step.label)
}

/// `done in 31.2s`, `cached` or `failed after 3.0s`.
pub fn outcome_text(outcome: &StepOutcome) -> String {
    match outcome {
        StepOutcome::Done(d) => format!("done in {:.1}s", d.as_secs_f64()),
        StepOutcome::Cached => "cached".to_string(),
        StepOutcome::Failed(d) => format!("failed after {:.1}s", d.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_documented() {
        let step = Step {
            index: 2,
            total: 5,
            label: "debootstrap bookworm".into(),
        };
        assert_eq!(step_prefix(&step), "[2/5] debootstrap bookworm");
        assert_eq!(
            outcome_text(&StepOutcome::Done(Duration::from_millis(31_249))),
            "done in 31.2s"
        );
        assert_eq!(outcome_text(&StepOutcome::Cached), "cached");
    }
}
