//! Per-team quotas on SQLite and PostgreSQL: concurrent creates never overshoot the running
//! limit nor the creates-under-way limit, vCPUs and memory count pending and running
//! sandboxes (a resume is admitted like a create), snapshot templates are counted with the
//! names being taken, and a refusal is `429 quota_exceeded` naming the limit. Each team has
//! its own quotas.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::{assert_error, TestServer};
use wrenn_server::agent::sim_faults::SimOp;
use wrenn_server::config::Quotas;

async fn server(database_url: Option<String>, quotas: Quotas) -> TestServer {
    TestServer::start_with(move |c| {
        c.database_url = database_url;
        c.quotas = quotas;
        c.reaper_interval = Duration::from_secs(3600);
        c.reconcile_interval = Duration::from_secs(3600);
    })
    .await
}

/// Fires `n` creates at once; the statuses and bodies of their answers.
async fn creates(t: &TestServer, key: &str, n: usize, body: Value) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = t
                .keyed(Method::POST, "/v1/sandboxes", key)
                .json(&body)
                .send();
            tokio::spawn(async move {
                let r = req.await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

fn count(answers: &[(u16, Value)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

/// Every refusal is a 429 `quota_exceeded` whose message contains `names`.
fn refused_for(answers: &[(u16, Value)], names: &str) {
    for (s, v) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*s, 429, "{v}");
        assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(names), "{msg}");
    }
}

async fn sandboxes(t: &TestServer, key: &str) -> Vec<Value> {
    let r = t
        .keyed(Method::GET, "/v1/sandboxes", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// 20 concurrent creates against a running quota of 5: exactly 5. Another team is not
/// affected.
async fn running_limit(db: Option<String>) {
    let t = server(
        db,
        Quotas {
            running_sandboxes: 5,
            ..Quotas::UNLIMITED
        },
    )
    .await;
    // Slow answers: the creates overlap while their rows are `creating`.
    t.sim.set_delay(SimOp::Create, Duration::from_millis(200));
    let k = t.account("run@example.com").await.key;
    let answers = creates(&t, &k, 20, json!({})).await;
    assert_eq!(count(&answers, 201), 5, "{answers:?}");
    refused_for(&answers, "at most 5 running sandboxes");
    assert_eq!(sandboxes(&t, &k).await.len(), 5);
    let other = t.account("other@example.com").await.key;
    assert_eq!(count(&creates(&t, &other, 3, json!({})).await, 201), 3);

    // A paused sandbox does not count; resuming it is admitted like a create.
    let first = sandboxes(&t, &k).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.op(&k, &first, "pause").await.status(), 200);
    t.sandbox(&k, json!({})).await;
    assert_error(t.op(&k, &first, "resume").await, 429, "quota_exceeded").await;
    assert_eq!(t.status(&k, &first).await, "paused");
}

/// Creates under way at once: the rest are refused while they run, and admitted after.
async fn concurrent_creates(db: Option<String>) {
    let t = server(
        db,
        Quotas {
            concurrent_creates: 2,
            ..Quotas::UNLIMITED
        },
    )
    .await;
    t.sim.set_delay(SimOp::Create, Duration::from_millis(400));
    let k = t.account("burst@example.com").await.key;
    let answers = creates(&t, &k, 8, json!({})).await;
    assert_eq!(count(&answers, 201), 2, "{answers:?}");
    refused_for(&answers, "at most 2 sandbox creates under way");
    t.sim.set_delay(SimOp::Create, Duration::ZERO);
    t.sandbox(&k, json!({})).await;
}

/// vCPUs and memory are summed over the team's pending and running sandboxes.
async fn vcpus_and_memory(db: Option<String>) {
    let t = server(
        db,
        Quotas {
            vcpus: 4,
            memory_mb: 1024,
            ..Quotas::UNLIMITED
        },
    )
    .await;
    let k = t.account("size@example.com").await.key;
    let big = t.sandbox(&k, json!({"vcpus": 3, "memory_mb": 256})).await;
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &k)
        .json(&json!({"vcpus": 2}))
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 429, "quota_exceeded").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("4 vCPUs"),
        "{v}"
    );
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &k)
        .json(&json!({"vcpus": 1, "memory_mb": 1024}))
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 429, "quota_exceeded").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1024 MiB"),
        "{v}"
    );
    let id = big["id"].as_str().unwrap();
    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    t.sandbox(&k, json!({"vcpus": 4, "memory_mb": 1024})).await;
}

/// Snapshot templates: the names being taken count; overwriting one adds none.
async fn templates(db: Option<String>) {
    let t = server(
        db,
        Quotas {
            templates: 1,
            ..Quotas::UNLIMITED
        },
    )
    .await;
    let k = t.account("snap@example.com").await.key;
    let snap = |name: &'static str, sb: String, overwrite: bool| {
        let path = if overwrite {
            "/v1/snapshots?overwrite=true"
        } else {
            "/v1/snapshots"
        };
        t.keyed(Method::POST, path, &k)
            .json(&json!({"sandbox_id": sb, "name": name}))
            .send()
    };
    let id = |v: Value| v["id"].as_str().unwrap().to_string();
    let a = id(t.sandbox(&k, json!({})).await);
    assert_eq!(snap("one", a, false).await.unwrap().status(), 201);
    let b = id(t.sandbox(&k, json!({})).await);
    let v = assert_error(
        snap("two", b.clone(), false).await.unwrap(),
        429,
        "quota_exceeded",
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 snapshot templates"),
        "{v}"
    );
    // Refused before its sandbox was touched.
    assert_eq!(t.status(&k, &b).await, "running");
    assert_eq!(snap("one", b, true).await.unwrap().status(), 201);
}

#[tokio::test]
async fn sqlite_quotas() {
    running_limit(None).await;
    concurrent_creates(None).await;
    vcpus_and_memory(None).await;
    templates(None).await;
}

#[tokio::test]
async fn postgres_quotas() {
    let pg = support::pg::PgServer::start();
    running_limit(Some(pg.create_database("wrenn_quota_run").await)).await;
    concurrent_creates(Some(pg.create_database("wrenn_quota_burst").await)).await;
    vcpus_and_memory(Some(pg.create_database("wrenn_quota_size").await)).await;
    templates(Some(pg.create_database("wrenn_quota_snap").await)).await;
}

/// A create outside the configured bounds is a 400 naming the bound.
#[tokio::test]
async fn sizes_outside_the_configured_bounds_are_bad_requests() {
    let t = TestServer::start_with(|c| {
        c.sandbox_bounds.max_vcpus = 2;
        c.sandbox_bounds.max_memory_mb = 1024;
        c.sandbox_bounds.max_timeout_sec = 600;
    })
    .await;
    let k = t.account("bounds@example.com").await.key;
    for (body, names) in [
        (json!({"vcpus": 3}), "between 1 and 2"),
        (json!({"vcpus": 0}), "between 1 and 2"),
        (json!({"memory_mb": 2048}), "between 128 and 1024"),
        (json!({"timeout_sec": 601}), "between 0 and 600"),
        (json!({"timeout_sec": -1}), "between 0 and 600"),
    ] {
        let r = t
            .keyed(Method::POST, "/v1/sandboxes", &k)
            .json(&body)
            .send()
            .await
            .unwrap();
        let v = assert_error(r, 400, "bad_request").await;
        assert!(
            v["error"]["message"].as_str().unwrap().contains(names),
            "{v}"
        );
    }
    t.sandbox(
        &k,
        json!({"vcpus": 2, "memory_mb": 1024, "timeout_sec": 600}),
    )
    .await;
}

#[test]
fn bounds_above_the_ceiling_are_refused_at_start() {
    let mut c = wrenn_server::ServerConfig::new("/tmp/x", support::JWT_SECRET);
    c.sandbox_bounds.max_vcpus = 64;
    assert!(c.validate().is_err());
}
