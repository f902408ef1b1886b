//! Control-plane metrics: what the process counts (HTTP requests and their durations,
//! sandbox create and resume durations, failed sandbox operations) in the Prometheus
//! project's `prometheus-client` types, the gauges read from the store at scrape time, and
//! their rendering in the Prometheus text exposition format 0.0.4 (served at `GET /metrics`
//! by `api`). `request` holds the request-id rules and the label vocabulary that the
//! per-request middleware (`api::observe`) applies.
//!
//! Every label value comes from a bounded set: route templates of the router (never raw
//! paths), a fixed list of methods, status codes, sandbox statuses and operation names. No
//! metric carries a team, user, key or sandbox id, an email, a header or a query string.
//! This module decides nothing about requests and reads none: it counts what it is told.
//!
//! What the exposition says is pinned by the tests below (names, types, help, buckets), so
//! that a new version of the library cannot rename a series unnoticed. Two habits of the
//! library shape the registrations: a counter is registered without its `_total` suffix
//! (the encoder adds it), and help texts are registered without their final period (the
//! encoder adds it). A family without series yet (the HTTP metrics before the first answered
//! request) is left out, HELP and TYPE lines included.

pub mod request;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use wrenn_types::agent::SandboxStatus;

/// The content type of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the histogram buckets; `+Inf` follows implicitly.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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

/// Labels of `wrenn_http_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Arc<str>,
    status: u16,
}

/// Labels of `wrenn_http_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: Arc<str>,
}

/// Labels of `wrenn_sandbox_operation_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Labels of `wrenn_sandboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The control plane's metrics; one per [`App`](crate::app::App). The handles below are
/// shared with the registries that render them.
#[derive(Debug)]
pub struct Metrics {
    /// The HTTP metrics, rendered first.
    http: Registry,
    /// The sandbox operation metrics, rendered after the scrape-time gauges.
    operations: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    sandbox_create: Histogram,
    sandbox_resume: Histogram,
    failures: Family<OpLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        let sandbox_create = histogram();
        let sandbox_resume = histogram();
        let failures = Family::<OpLabels, Counter>::default();
        // Every operation from the start, so that the counter shows zeros.
        for op in SandboxOp::ALL {
            let _ = failures.get_or_create(&OpLabels { op: op.as_str() });
        }

        let mut http = Registry::default();
        http.register(
            "wrenn_http_requests",
            "HTTP requests answered, by method, route template and status code",
            requests.clone(),
        );
        http.register(
            "wrenn_http_request_duration_seconds",
            "Time from receiving a request to sending its response head, by method and route template",
            durations.clone(),
        );
        let mut operations = Registry::default();
        operations.register(
            "wrenn_sandbox_create_duration_seconds",
            "Duration of successful sandbox creations (the host agent call)",
            sandbox_create.clone(),
        );
        operations.register(
            "wrenn_sandbox_resume_duration_seconds",
            "Duration of successful sandbox resumes (the host agent call)",
            sandbox_resume.clone(),
        );
        operations.register(
            "wrenn_sandbox_operation_failures",
            "Sandbox operations whose host agent call failed, by operation",
            failures.clone(),
        );
        Self {
            http,
            operations,
            requests,
            durations,
            sandbox_create,
            sandbox_resume,
            failures,
        }
    }
}

impl Metrics {
    /// Records one answered request. `route` is the matched route template or
    /// [`request::UNMATCHED_ROUTE`].
    pub fn observe_request(&self, method: &'static str, route: Arc<str>, status: u16, d: Duration) {
        let labels = RouteLabels { method, route };
        self.durations
            .get_or_create(&labels)
            .observe(d.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: labels.route,
                status,
            })
            .inc();
    }

    /// Records a successful sandbox creation (the agent call's duration).
    pub fn observe_create(&self, d: Duration) {
        self.sandbox_create.observe(d.as_secs_f64());
    }

    /// Records a successful sandbox resume (the agent call's duration).
    pub fn observe_resume(&self, d: Duration) {
        self.sandbox_resume.observe(d.as_secs_f64());
    }

    /// Counts a failed sandbox operation (the agent call failed).
    pub fn operation_failed(&self, op: SandboxOp) {
        self.failures
            .get_or_create(&OpLabels { op: op.as_str() })
            .inc();
    }

    /// Renders every metric in the Prometheus text format. `sandboxes` are the counts by
    /// status read from the store, or `None` when the store could not be read (then
    /// `wrenn_store_up` is 0 and the gauge is left out rather than reported as zeros).
    pub fn render(&self, sandboxes: Option<&[(SandboxStatus, i64)]>) -> String {
        let mut scrape = Registry::default();
        let up = Gauge::<i64>::default();
        up.set(i64::from(sandboxes.is_some()));
        scrape.register(
            "wrenn_store_up",
            "1 if the store answered the last scrape's queries, else 0",
            up,
        );
        if let Some(counts) = sandboxes {
            let gauge = Family::<StatusLabels, Gauge>::default();
            for status in SandboxStatus::ALL {
                let n: i64 = counts
                    .iter()
                    .filter(|(s, _)| s == status)
                    .map(|(_, n)| n)
                    .sum();
                gauge
                    .get_or_create(&StatusLabels {
                        status: status.as_str(),
                    })
                    .set(n);
            }
            scrape.register(
                "wrenn_sandboxes",
                "Sandboxes known to the control plane, across all teams, by status",
                gauge,
            );
        }

        let mut out = String::with_capacity(8 * 1024);
        for registry in [&self.http, &scrape, &self.operations] {
            // Writing to a String fails only when a value's encoder does; ours never do.
            if let Err(e) = prometheus_text::encode(&mut out, registry) {
                tracing::error!(error = %e, "rendering /metrics failed");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample line of `name` with exactly these labels (`k="v",…` or empty).
    fn sample<'a>(out: &'a str, name: &str, labels: &str) -> Option<&'a str> {
        let series = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{labels}}}")
        };
        out.lines()
            .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
    }

    #[test]
    fn names_types_and_help_are_stable() {
        let m = Metrics::default();
        m.observe_request("GET", Arc::from("/metrics"), 200, Duration::ZERO);
        let out = m.render(Some(&[]));
        let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("# ")).collect();
        assert_eq!(
            headers,
            [
                "# HELP wrenn_http_requests_total HTTP requests answered, by method, route template and status code.",
                "# TYPE wrenn_http_requests_total counter",
                "# HELP wrenn_http_request_duration_seconds Time from receiving a request to sending its response head, by method and route template.",
                "# TYPE wrenn_http_request_duration_seconds histogram",
                "# HELP wrenn_store_up 1 if the store answered the last scrape's queries, else 0.",
                "# TYPE wrenn_store_up gauge",
                "# HELP wrenn_sandboxes Sandboxes known to the control plane, across all teams, by status.",
                "# TYPE wrenn_sandboxes gauge",
                "# HELP wrenn_sandbox_create_duration_seconds Duration of successful sandbox creations (the host agent call).",
                "# TYPE wrenn_sandbox_create_duration_seconds histogram",
                "# HELP wrenn_sandbox_resume_duration_seconds Duration of successful sandbox resumes (the host agent call).",
                "# TYPE wrenn_sandbox_resume_duration_seconds histogram",
                "# HELP wrenn_sandbox_operation_failures_total Sandbox operations whose host agent call failed, by operation.",
                "# TYPE wrenn_sandbox_operation_failures_total counter",
            ]
        );
        assert!(!out.contains("# EOF"), "{out}");
    }

    #[test]
    fn families_without_series_are_left_out() {
        // The library's habit (and client_golang's): no HELP/TYPE lines without a sample.
        let out = Metrics::default().render(None);
        assert!(!out.contains("wrenn_http_requests_total"), "{out}");
        assert!(
            !out.contains("wrenn_http_request_duration_seconds"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE wrenn_sandbox_create_duration_seconds histogram\n"),
            "{out}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for d in [
            Duration::from_millis(3),   // 0.005
            Duration::from_millis(5),   // 0.005 (upper bounds are inclusive)
            Duration::from_millis(700), // 1
            Duration::from_secs(60),    // +Inf
        ] {
            m.observe_request("GET", Arc::from("/x"), 200, d);
        }
        let out = m.render(None);
        let name = "wrenn_http_request_duration_seconds";
        let labels = "method=\"GET\",route=\"/x\"";
        let bucket = |le: &str| {
            sample(
                &out,
                &format!("{name}_bucket"),
                &format!("{labels},le=\"{le}\""),
            )
        };
        assert_eq!(bucket("0.005"), Some("2"), "{out}");
        assert_eq!(bucket("0.5"), Some("2"), "{out}");
        assert_eq!(bucket("1"), Some("3"), "{out}");
        assert_eq!(bucket("30"), Some("3"), "{out}");
        assert_eq!(bucket("+Inf"), Some("4"), "{out}");
        let les: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(
            les,
            [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                "30", "+Inf"
            ]
        );
        assert_eq!(
            sample(&out, &format!("{name}_count"), labels),
            Some("4"),
            "{out}"
        );
        let sum: f64 = sample(&out, &format!("{name}_sum"), labels)
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.708).abs() < 1e-9, "{out}");
        let requests = "method=\"GET\",route=\"/x\",status=\"200\"";
        assert_eq!(
            sample(&out, "wrenn_http_requests_total", requests),
            Some("4"),
            "{out}"
        );
    }

    #[test]
    fn unlabelled_histogram_has_no_empty_braces() {
        let m = Metrics::default();
        m.observe_create(Duration::from_millis(20));
        let out = m.render(None);
        let name = "wrenn_sandbox_create_duration_seconds";
        assert_eq!(
            sample(&out, &format!("{name}_bucket"), "le=\"0.01\""),
            Some("0"),
            "{out}"
        );
        assert_eq!(
            sample(&out, &format!("{name}_bucket"), "le=\"0.025\""),
            Some("1"),
            "{out}"
        );
        assert_eq!(
            sample(&out, &format!("{name}_count"), ""),
            Some("1"),
            "{out}"
        );
        assert_eq!(
            sample(&out, "wrenn_sandbox_resume_duration_seconds_count", ""),
            Some("0"),
            "{out}"
        );
        assert!(!out.contains("{}"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.observe_request("GET", Arc::from("a\"b\\c\nd"), 404, Duration::ZERO);
        let out = m.render(None);
        assert!(
            out.contains("wrenn_http_requests_total{method=\"GET\",route=\"a\\\"b\\\\c\\nd\",status=\"404\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn failures_list_every_operation() {
        let m = Metrics::default();
        m.operation_failed(SandboxOp::Resume);
        let out = m.render(None);
        let name = "wrenn_sandbox_operation_failures_total";
        assert_eq!(sample(&out, name, "op=\"create\""), Some("0"), "{out}");
        assert_eq!(sample(&out, name, "op=\"resume\""), Some("1"), "{out}");
        assert_eq!(sample(&out, name, "op=\"pause\""), Some("0"), "{out}");
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
