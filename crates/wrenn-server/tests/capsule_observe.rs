//! Observability over HTTP with the simulated agent: the events stream (a team sees its own
//! creates and pauses, never another team's; the cap on subscribers), team stats and daily
//! usage (shapes, bounds, usage credited by the meter and kept across a restart), and a
//! capsule's metrics (points from the agent, team-scoped lookup, ranges).

mod support;

use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::time::Duration;
use support::{assert_error, TestServer};
use wrenn_types::agent::SandboxStatus;

/// A Server-Sent Events reader over a streamed answer.
struct Sse {
    resp: Response,
    buf: String,
}

impl Sse {
    async fn open(t: &TestServer, key: &str) -> Sse {
        let resp = t
            .keyed(Method::GET, "/v1/events/stream", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event's data (comments skipped), or `None` if none comes `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = Vec::new();
                for line in frame.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = Some(n.trim().to_string());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.trim_start().to_string());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&data.join("\n")).unwrap();
                // The `event:` line names the same event as the payload.
                assert_eq!(name.as_deref(), v["event"].as_str(), "{frame}");
                return Some(v);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(_) | Err(_) => return None,
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn events_reach_their_own_team_only() {
    let t = TestServer::start().await;
    let a = t.account("a@example.com").await;
    let b = t.account("b@example.com").await;
    let mut sa = Sse::open(&t, &a.key).await;
    let mut sb = Sse::open(&t, &b.key).await;
    assert_eq!(sa.next(WAIT).await.unwrap()["event"], "connected");
    assert_eq!(sb.next(WAIT).await.unwrap()["event"], "connected");

    let id = t.sandbox(&a.key, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = sa.next(WAIT).await.expect("create event");
    assert_eq!(ev["event"], "capsule.create");
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["resource"], json!({"id": id, "type": "capsule"}));
    assert_eq!(ev["actor"]["type"], "api_key");
    assert_eq!(ev["sandbox"]["id"], id.as_str());
    assert_eq!(ev["sandbox"]["status"], "running");
    assert!(ev["timestamp"].as_str().unwrap().ends_with('Z'));

    assert_eq!(t.op(&a.key, &id, "pause").await.status(), 200);
    let ev = sa.next(WAIT).await.expect("pause event");
    assert_eq!(ev["event"], "capsule.pause");
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["sandbox"]["status"], "paused");

    // A pause of a paused capsule fails, and says so.
    assert_eq!(t.op(&a.key, &id, "pause").await.status(), 409);
    let ev = sa.next(WAIT).await.expect("failed pause event");
    assert_eq!(
        (ev["event"].as_str(), ev["outcome"].as_str()),
        (Some("capsule.pause"), Some("error"))
    );
    assert!(ev["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(ev["sandbox"].is_null());

    // Team B's stream carried none of that: its next event is its own create.
    let other = t.sandbox(&b.key, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = sb.next(WAIT).await.expect("b's create");
    assert_eq!(ev["event"], "capsule.create");
    assert_eq!(ev["resource"]["id"], other.as_str());
    // And A does not see B's.
    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let ev = sa.next(WAIT).await.expect("destroy event");
    assert_eq!(ev["event"], "capsule.destroy");
    assert_eq!(ev["resource"]["id"], id.as_str());
    assert!(sa.next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn the_stream_needs_a_key_and_subscribers_are_capped_per_team() {
    let t = TestServer::start().await;
    let r = t
        .req(Method::GET, "/v1/events/stream")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let a = t.account("cap@example.com").await;
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(Sse::open(&t, &a.key).await);
    }
    let r = t
        .keyed(Method::GET, "/v1/events/stream", &a.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 429, "rate_limited").await;
    // Another team still subscribes; a closed stream frees its place.
    let b = t.account("cap-b@example.com").await;
    let _b = Sse::open(&t, &b.key).await;
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _again = Sse::open(&t, &a.key).await;
}

async fn get_json(t: &TestServer, path: &str, key: &str) -> Value {
    let r = t.keyed(Method::GET, path, key).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {v}");
    v
}

#[tokio::test]
async fn stats_show_what_the_team_holds() {
    let t = TestServer::start().await;
    let a = t.account("stats@example.com").await;
    let empty = get_json(&t, "/v1/capsules/stats", &a.key).await;
    assert_eq!(empty["range"], "1h");
    assert_eq!(
        empty["current"],
        json!({"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": 0})
    );
    assert_eq!(empty["series"]["labels"].as_array().unwrap().len(), 60);

    t.sandbox(&a.key, json!({"vcpus": 2, "memory_mb": 1024}))
        .await;
    t.sandbox(&a.key, json!({})).await;
    assert!(t.server.meter_usage_now().await.unwrap());
    for (range, buckets) in [("5m", 5), ("1h", 60), ("6h", 72), ("24h", 96), ("30d", 120)] {
        let s = get_json(&t, &format!("/v1/capsules/stats?range={range}"), &a.key).await;
        assert_eq!(s["range"], range);
        assert_eq!(
            s["current"],
            json!({"running_count": 2, "vcpus_reserved": 3, "memory_mb_reserved": 1536})
        );
        assert_eq!(
            s["peaks"],
            json!({"running_count": 2, "vcpus": 3, "memory_mb": 1536})
        );
        let series = &s["series"];
        for k in ["labels", "running", "vcpus", "memory_mb"] {
            assert_eq!(series[k].as_array().unwrap().len(), buckets, "{range} {k}");
        }
        assert_eq!(series["running"].as_array().unwrap().last().unwrap(), 2);
        assert_eq!(
            series["memory_mb"].as_array().unwrap().last().unwrap(),
            1536
        );
        let labels: Vec<&str> = series["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(labels.windows(2).all(|w| w[0] < w[1]), "{labels:?}");
    }
    // Another team holds nothing.
    let b = t.account("stats-b@example.com").await;
    let s = get_json(&t, "/v1/capsules/stats", &b.key).await;
    assert_eq!(s["current"]["running_count"], 0);
    assert_eq!(s["peaks"]["running_count"], 0);
    let r = t
        .keyed(Method::GET, "/v1/capsules/stats?range=7d", &a.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn usage_is_credited_per_day_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data2 = data.clone();
    let t = TestServer::start_with(move |c| c.data_dir = data2).await;
    let a = t.account("usage@example.com").await;
    let today = chrono::Utc::now().date_naive();

    let empty = get_json(&t, "/v1/capsules/usage", &a.key).await;
    let points = empty["points"].as_array().unwrap();
    assert_eq!(points.len(), 31);
    assert_eq!(empty["to"], today.to_string());
    assert_eq!(points.last().unwrap()["date"], today.to_string());
    assert_eq!(points[0]["date"], empty["from"]);
    assert!(points
        .iter()
        .all(|p| p["cpu_minutes"] == 0.0 && p["ram_mb_minutes"] == 0.0));

    t.sandbox(&a.key, json!({"vcpus": 2, "memory_mb": 512}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(t.server.meter_usage_now().await.unwrap());
    let q = format!("/v1/capsules/usage?from={today}&to={today}");
    let u = get_json(&t, &q, &a.key).await;
    let p = &u["points"].as_array().unwrap()[0];
    let cpu = p["cpu_minutes"].as_f64().unwrap();
    let ram = p["ram_mb_minutes"].as_f64().unwrap();
    // At least 1.5 s on 2 vCPUs, and not more than the test's own run time.
    assert!((2.0 * 1.5 / 60.0..2.0).contains(&cpu), "{cpu}");
    assert!((ram / cpu - 256.0).abs() < 1e-6, "{ram} {cpu}");
    // Another team used nothing.
    let b = t.account("usage-b@example.com").await;
    let ub = get_json(&t, &q, &b.key).await;
    assert_eq!(ub["points"][0]["cpu_minutes"], 0.0);

    // A second control plane on the same database sees the same usage.
    let mut cfg = wrenn_server::ServerConfig::new(data, support::JWT_SECRET);
    cfg.auth_limits = wrenn_server::config::AuthLimits::unlimited();
    let again = wrenn_server::build(cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = again.router();
    tokio::spawn(async move { wrenn_server::serve(listener, router).await });
    let r = t
        .client
        .get(format!("{base}{q}"))
        .header("x-api-key", &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["points"][0]["cpu_minutes"].as_f64().unwrap() >= cpu);

    for bad in [
        "?from=2026-13-01",
        "?from=yesterday",
        "?from=2026-03-02&to=2026-03-01",
        "?from=2020-01-01&to=2026-01-01",
    ] {
        let r = t
            .keyed(Method::GET, &format!("/v1/capsules/usage{bad}"), &a.key)
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn metrics_come_from_the_agent_for_the_teams_own_capsule() {
    let t = TestServer::start().await;
    let a = t.account("m@example.com").await;
    let id = t.sandbox(&a.key, json!({"memory_mb": 512})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let m = get_json(&t, &format!("/v1/capsules/{id}/metrics"), &a.key).await;
    assert_eq!(m["sandbox_id"], id.as_str());
    assert_eq!(m["range"], "10m");
    let points = m["points"].as_array().unwrap();
    assert!(!points.is_empty());
    for p in points {
        let cpu = p["cpu_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{p}");
        assert!(p["mem_bytes"].as_u64().unwrap() > 0);
        assert!(p["timestamp_unix"].as_i64().unwrap() > 1_700_000_000);
    }
    for range in ["5m", "1h", "2h", "6h", "12h", "24h"] {
        let m = get_json(
            &t,
            &format!("/v1/capsules/{id}/metrics?range={range}"),
            &a.key,
        )
        .await;
        assert_eq!(m["range"], range);
    }
    let r = t
        .keyed(
            Method::GET,
            &format!("/v1/capsules/{id}/metrics?range=3d"),
            &a.key,
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    // Another team's capsule and an unknown one are not found.
    let b = t.account("m-b@example.com").await;
    let r = t
        .keyed(Method::GET, &format!("/v1/capsules/{id}/metrics"), &b.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    let r = t
        .keyed(Method::GET, "/v1/capsules/sb-nope/metrics", &a.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    // Paused: no new samples from the simulated agent, still an answer.
    assert_eq!(t.op(&a.key, &id, "pause").await.status(), 200);
    let m = get_json(&t, &format!("/v1/capsules/{id}/metrics"), &a.key).await;
    assert!(m["points"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_state_the_reconciler_takes_from_the_host_is_an_event() {
    let t = TestServer::start_with(|c| c.reconcile_interval = Duration::from_secs(3600)).await;
    let a = t.account("state@example.com").await;
    let id = t.sandbox(&a.key, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = Sse::open(&t, &a.key).await;
    assert_eq!(s.next(WAIT).await.unwrap()["event"], "connected");
    // The host paused it behind the control plane's back, then lost it.
    assert!(t.sim.set_status(&id, SandboxStatus::Paused));
    t.server.reconcile_now().await.unwrap();
    let ev = s.next(WAIT).await.expect("state change");
    assert_eq!(ev["event"], "capsule.state.changed");
    assert!(ev.get("outcome").is_none(), "{ev}");
    assert_eq!(ev["resource"], json!({"id": id, "type": "capsule"}));
    assert_eq!(ev["actor"]["type"], "system");
    assert_eq!(
        ev["metadata"],
        json!({"from": "running", "to": "paused", "reason": "reconciled"})
    );
    assert_eq!(ev["sandbox"]["status"], "paused");
    assert!(t.sim.forget(&id));
    t.server.reconcile_now().await.unwrap();
    let ev = s.next(WAIT).await.expect("lost");
    assert_eq!(
        ev["metadata"],
        json!({"from": "paused", "to": "error", "reason": "host_failure"})
    );
    assert!(ev["sandbox"].is_null());
}
