//! Observability over real HTTP: `GET /metrics` in the Prometheus text format (HTTP
//! counters by route template, the sandbox gauge, the create/resume histograms, operation
//! failures), the `X-Request-Id` header, and the request log line (captured by a tracing
//! subscriber writing to a buffer) with its request id and without credentials.

mod support;

use reqwest::Method;
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use support::TestServer;

/// One parsed sample: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the text exposition format strictly: every line is a `# HELP`/`# TYPE` comment
/// or a sample; anything else fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(!line.is_empty(), "empty line in:\n{text}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, HashMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                (name, parse_labels(body, line))
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line:?}"
        );
        out.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    out
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(body: &str, line: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {key:?}: {line:?}"
        );
        assert_eq!(chars.next(), Some('"'), "unquoted label value: {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?}: {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {line:?}"),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            None | Some(',') => {}
            Some(c) => panic!("unexpected {c:?} after a label: {line:?}"),
        }
    }
    labels
}

/// The value of the one sample with this name and these labels (0 when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(hits.len() <= 1, "duplicate series {name} {labels:?}");
    hits.first().map(|s| s.value).unwrap_or(0.0)
}

async fn scrape(t: &TestServer) -> (String, Vec<Sample>) {
    let r = t.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

const REQS: &str = "wrenn_http_requests_total";

#[tokio::test]
async fn http_counters_use_route_templates() {
    let t = TestServer::start().await;
    let acc = t.account("metrics@example.com").await;

    let (_, before) = scrape(&t).await;
    let labels_404 = [
        ("method", "GET"),
        ("route", "/v1/sandboxes/{id}"),
        ("status", "404"),
    ];
    assert_eq!(value(&before, REQS, &labels_404), 0.0);

    for _ in 0..2 {
        let r = t
            .keyed(Method::GET, "/v1/sandboxes/sb-unknown", &acc.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = t
        .req(Method::GET, "/no/such/route/sb-raw-path")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = t
        .req(Method::DELETE, "/v1/sandboxes")
        .header("x-api-key", &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    let (text, after) = scrape(&t).await;
    assert_eq!(value(&after, REQS, &labels_404), 2.0, "{text}");
    assert_eq!(
        value(
            &after,
            REQS,
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            REQS,
            &[
                ("method", "DELETE"),
                ("route", "/v1/sandboxes"),
                ("status", "405")
            ]
        ),
        1.0,
        "{text}"
    );
    // Signup (201) and key creation (201) were counted under their templates.
    assert_eq!(
        value(
            &after,
            REQS,
            &[
                ("method", "POST"),
                ("route", "/v1/auth/signup"),
                ("status", "201")
            ]
        ),
        1.0,
        "{text}"
    );
    // The previous scrape is counted too.
    assert!(
        value(
            &after,
            REQS,
            &[("method", "GET"), ("route", "/metrics"), ("status", "200")]
        ) >= 1.0,
        "{text}"
    );
    // The duration histogram has the same series, with buckets up to +Inf.
    let dur = "wrenn_http_request_duration_seconds";
    let route = [("method", "GET"), ("route", "/v1/sandboxes/{id}")];
    assert_eq!(value(&after, &format!("{dur}_count"), &route), 2.0);
    let inf = [
        ("method", "GET"),
        ("route", "/v1/sandboxes/{id}"),
        ("le", "+Inf"),
    ];
    assert_eq!(value(&after, &format!("{dur}_bucket"), &inf), 2.0);
    assert!(value(&after, &format!("{dur}_sum"), &route) > 0.0);

    // No raw paths, credentials or account data.
    for secret in [
        "sb-unknown",
        "sb-raw-path",
        acc.key.as_str(),
        acc.team_id.as_str(),
        "metrics@example.com",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

#[tokio::test]
async fn sandbox_gauge_and_operation_histograms() {
    let t = TestServer::start().await;
    let acc = t.account("gauge@example.com").await;
    let running = [("status", "running")];
    let paused = [("status", "paused")];
    let creates = "wrenn_sandbox_create_duration_seconds_count";
    let resumes = "wrenn_sandbox_resume_duration_seconds_count";
    let failures = "wrenn_sandbox_operation_failures_total";

    let (text, m) = scrape(&t).await;
    assert_eq!(value(&m, "wrenn_sandboxes", &running), 0.0, "{text}");
    assert_eq!(value(&m, "wrenn_store_up", &[]), 1.0, "{text}");
    assert_eq!(value(&m, creates, &[]), 0.0, "{text}");

    let a = t.sandbox(&acc.key, json!({})).await;
    t.sandbox(&acc.key, json!({})).await;
    let (text, m) = scrape(&t).await;
    assert_eq!(value(&m, "wrenn_sandboxes", &running), 2.0, "{text}");
    assert_eq!(value(&m, "wrenn_sandboxes", &paused), 0.0, "{text}");
    assert_eq!(value(&m, creates, &[]), 2.0, "{text}");

    let id = a["id"].as_str().unwrap();
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/pause"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (text, m) = scrape(&t).await;
    assert_eq!(value(&m, "wrenn_sandboxes", &running), 1.0, "{text}");
    assert_eq!(value(&m, "wrenn_sandboxes", &paused), 1.0, "{text}");
    assert_eq!(value(&m, resumes, &[]), 0.0, "{text}");

    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{id}/resume"),
            &acc.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (text, m) = scrape(&t).await;
    assert_eq!(value(&m, "wrenn_sandboxes", &running), 2.0, "{text}");
    assert_eq!(value(&m, "wrenn_sandboxes", &paused), 0.0, "{text}");
    assert_eq!(value(&m, resumes, &[]), 1.0, "{text}");

    // A create whose agent call fails: counted as a failure, not in the histogram.
    assert_eq!(value(&m, failures, &[("op", "create")]), 0.0, "{text}");
    t.sim.set_fail_creates(true);
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &acc.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let (text, m) = scrape(&t).await;
    assert_eq!(value(&m, failures, &[("op", "create")]), 1.0, "{text}");
    assert_eq!(value(&m, failures, &[("op", "resume")]), 0.0, "{text}");
    assert_eq!(value(&m, creates, &[]), 2.0, "{text}");
    assert_eq!(value(&m, "wrenn_sandboxes", &running), 2.0, "{text}");
}

fn header(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .expect("no X-Request-Id")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn request_ids_are_echoed_generated_or_replaced() {
    let t = TestServer::start().await;

    let r = t
        .req(Method::GET, "/openapi.yaml")
        .header("x-request-id", "client-id_1.2-3")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r), "client-id_1.2-3");

    // Generated when absent: present, valid and different per request.
    let a = header(&t.req(Method::GET, "/openapi.yaml").send().await.unwrap());
    let b = header(&t.req(Method::GET, "/nowhere").send().await.unwrap());
    assert!(!a.is_empty() && !b.is_empty());
    assert_ne!(a, b);
    for id in [&a, &b] {
        assert!(wrenn_server::metrics::request::valid_request_id(id), "{id}");
    }

    // Invalid ones are replaced by a generated id.
    let long = "x".repeat(65);
    for bad in [long.as_str(), "has space", "semi;colon", "slash/id", ""] {
        let r = t
            .req(Method::GET, "/openapi.yaml")
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let got = header(&r);
        assert_ne!(got, bad);
        assert!(
            wrenn_server::metrics::request::valid_request_id(&got),
            "{got}"
        );
    }
    let max = "y".repeat(64);
    let r = t
        .req(Method::GET, "/openapi.yaml")
        .header("x-request-id", &max)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r), max);
}

/// Everything the global tracing subscriber of this test binary wrote.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
    });
}

fn log_lines_with(needle: &str) -> Vec<String> {
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn request_log_line_has_the_id_and_no_secrets() {
    capture_logs();
    let t = TestServer::start().await;
    let acc = t.account("logs@example.com").await;

    let r = t
        .keyed(
            Method::GET,
            "/v1/sandboxes/sb-unknown?token=query-secret-123",
            &acc.key,
        )
        .header("x-request-id", "log-test-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r), "log-test-req-1");

    let lines = log_lines_with("log-test-req-1");
    let finished: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("request finished"))
        .collect();
    assert_eq!(finished.len(), 1, "{lines:#?}");
    let line = finished[0];
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("route=/v1/sandboxes/{id}"), "{line}");
    assert!(line.contains("method=GET"), "{line}");
    assert!(line.contains("status=404"), "{line}");
    assert!(line.contains("latency_ms="), "{line}");
    assert!(!line.contains("sb-unknown"), "raw path logged: {line}");

    // An error logged inside the handler carries the request id through the span.
    t.sim.set_fail_creates(true);
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &acc.key)
        .header("x-request-id", "log-test-req-2")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let lines = log_lines_with("log-test-req-2");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("host agent error")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("request finished") && l.contains("status=502")),
        "{lines:#?}"
    );

    // Nothing anywhere in the log holds the API key, the session token, the query string
    // or the email.
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    for secret in [
        acc.key.as_str(),
        acc.token.as_str(),
        "query-secret-123",
        "logs@example.com",
    ] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}
