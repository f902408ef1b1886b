//! Control-plane observability: a small in-process metrics registry (atomic counters and
//! fixed-bucket histograms), its rendering in the Prometheus text exposition format 0.0.4
//! (served at `GET /metrics` by `api`), and (in `request`) the request-id rules and the
//! label vocabulary the per-request middleware (`api::observe`) applies.
//!
//! Every label value comes from a bounded set: route templates of the router (never raw
//! paths), a fixed list of methods, status codes, sandbox statuses and operation names. No
//! metric carries a team, user, key or sandbox id, an email, a header or a query string.
//! This module does not decide anything about requests, and it reads none: it only counts
//! what it is told.

pub mod request;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wrenn_types::agent::SandboxStatus;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the histogram buckets; `+Inf` follows implicitly.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every sandbox status, so that the gauge shows zeros instead of missing series.
const STATUSES: [SandboxStatus; 5] = [
    SandboxStatus::Pending,
    SandboxStatus::Running,
    SandboxStatus::Paused,
    SandboxStatus::Stopped,
    SandboxStatus::Error,
];

/// A histogram with the fixed [`BUCKETS`]. Lock-free: one atomic per bucket plus the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The number of observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",…` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, slot) in self.buckets.iter().enumerate() {
            cumulative += slot.load(Ordering::Relaxed);
            let le = BUCKETS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The sandbox operations whose failures are counted (`op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxOp {
    /// `POST /v1/sandboxes`.
    Create,
    /// `POST /v1/sandboxes/{id}/resume`.
    Resume,
    /// `POST /v1/sandboxes/{id}/pause` and the idle reaper's pauses.
    Pause,
}

impl SandboxOp {
    const ALL: [SandboxOp; 3] = [SandboxOp::Create, SandboxOp::Resume, SandboxOp::Pause];

    /// The `op` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxOp::Create => "create",
            SandboxOp::Resume => "resume",
            SandboxOp::Pause => "pause",
        }
    }
}

/// `(method, route, status)`.
type RequestKey = (&'static str, String, u16);
/// `(method, route)`.
type DurationKey = (&'static str, String);

/// The registry of the control plane's metrics; one per [`App`](crate::app::App).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: RwLock<HashMap<RequestKey, Arc<AtomicU64>>>,
    durations: RwLock<HashMap<DurationKey, Arc<Histogram>>>,
    /// Successful sandbox creations, around the agent call.
    pub sandbox_create: Histogram,
    /// Successful sandbox resumes, around the agent call.
    pub sandbox_resume: Histogram,
    failures: [AtomicU64; SandboxOp::ALL.len()],
}

/// Gets (or inserts) the series of `key`, taking the write lock only for new series.
fn series<K, V>(map: &RwLock<HashMap<K, Arc<V>>>, key: K) -> Arc<V>
where
    K: std::hash::Hash + Eq,
    V: Default,
{
    if let Some(v) = map.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return v.clone();
    }
    map.write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics {
    /// Records one answered request. `route` is the matched route template or
    /// [`request::UNMATCHED_ROUTE`].
    pub fn observe_request(&self, method: &'static str, route: &str, status: u16, d: Duration) {
        series(&self.requests, (method, route.to_string(), status)).fetch_add(1, Ordering::Relaxed);
        series(&self.durations, (method, route.to_string())).observe(d);
    }

    /// Counts a failed sandbox operation (the agent call failed).
    pub fn operation_failed(&self, op: SandboxOp) {
        let i = SandboxOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures counted so far for `op`.
    pub fn failures(&self, op: SandboxOp) -> u64 {
        let i = SandboxOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        self.failures[i].load(Ordering::Relaxed)
    }

    /// Renders every metric in the Prometheus text format. `sandboxes` are the counts by
    /// status read from the store, or `None` when the store could not be read (then
    /// `wrenn_store_up` is 0 and the gauge is left out rather than reported as zeros).
    pub fn render(&self, sandboxes: Option<&[(SandboxStatus, i64)]>) -> String {
        let mut out = String::with_capacity(8 * 1024);

        let mut requests: Vec<(RequestKey, u64)> = self
            .requests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        requests.sort();
        header(
            &mut out,
            "wrenn_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status code.",
        );
        for ((method, route, status), n) in requests {
            let _ = writeln!(
                out,
                "wrenn_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(&route)
            );
        }

        let mut durations: Vec<(DurationKey, Arc<Histogram>)> = self
            .durations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        durations.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            &mut out,
            "wrenn_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to sending its response head, by method and route template.",
        );
        for ((method, route), h) in durations {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(&route));
            h.render(&mut out, "wrenn_http_request_duration_seconds", &labels);
        }

        header(
            &mut out,
            "wrenn_store_up",
            "gauge",
            "1 if the store answered the last scrape's queries, else 0.",
        );
        let _ = writeln!(out, "wrenn_store_up {}", u8::from(sandboxes.is_some()));
        if let Some(counts) = sandboxes {
            header(
                &mut out,
                "wrenn_sandboxes",
                "gauge",
                "Sandboxes known to the control plane, across all teams, by status.",
            );
            for status in STATUSES {
                let n: i64 = counts
                    .iter()
                    .filter(|(s, _)| *s == status)
                    .map(|(_, n)| n)
                    .sum();
                let _ = writeln!(out, "wrenn_sandboxes{{status=\"{}\"}} {n}", status.as_str());
            }
        }

        header(
            &mut out,
            "wrenn_sandbox_create_duration_seconds",
            "histogram",
            "Duration of successful sandbox creations (the host agent call).",
        );
        self.sandbox_create
            .render(&mut out, "wrenn_sandbox_create_duration_seconds", "");
        header(
            &mut out,
            "wrenn_sandbox_resume_duration_seconds",
            "histogram",
            "Duration of successful sandbox resumes (the host agent call).",
        );
        self.sandbox_resume
            .render(&mut out, "wrenn_sandbox_resume_duration_seconds", "");

        header(
            &mut out,
            "wrenn_sandbox_operation_failures_total",
            "counter",
            "Sandbox operations whose host agent call failed, by operation.",
        );
        for op in SandboxOp::ALL {
            let _ = writeln!(
                out,
                "wrenn_sandbox_operation_failures_total{{op=\"{}\"}} {}",
                op.as_str(),
                self.failures(op)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3)); // 0.005
        h.observe(Duration::from_millis(5)); // 0.005 (upper bounds are inclusive)
        h.observe(Duration::from_millis(700)); // 1
        h.observe(Duration::from_secs(60)); // +Inf
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"30\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 60.708\n"), "{out}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn unlabelled_histogram_has_no_empty_braces() {
        let h = Histogram::default();
        let mut out = String::new();
        h.render(&mut out, "y", "");
        assert!(out.contains("y_bucket{le=\"0.01\"} 0\n"), "{out}");
        assert!(out.contains("y_sum 0\n"), "{out}");
        assert!(out.contains("y_count 0\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn gauge_lists_every_status_and_store_down_hides_it() {
        let m = Metrics::default();
        let out = m.render(Some(&[(SandboxStatus::Running, 2)]));
        assert!(
            out.contains("wrenn_sandboxes{status=\"running\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("wrenn_sandboxes{status=\"paused\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("wrenn_store_up 1\n"), "{out}");
        let out = m.render(None);
        assert!(!out.contains("wrenn_sandboxes{"), "{out}");
        assert!(out.contains("wrenn_store_up 0\n"), "{out}");
    }
}
