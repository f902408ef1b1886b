//! Benchmark: `GET /v1/sandboxes` for a team with 200 sandboxes (simulated agent, SQLite
//! store, real HTTP on loopback). Prints the median and the spread of the request latency.
//! Run with `cargo bench -p wrenn-server --bench list_sandboxes`.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wrenn_server::agent::sim::SimAgent;
use wrenn_server::{build, serve, ServerConfig};

const SANDBOXES: usize = 200;
const WARMUP: usize = 50;
const SAMPLES: usize = 1000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServerConfig::new(dir.path(), vec![b's'; 32]);
    // 200 running sandboxes in one team: far over the default quotas.
    cfg.quotas = wrenn_server::config::Quotas::UNLIMITED;
    let server = build(cfg).await.expect("build server");
    let sim = Arc::new(SimAgent::new(&["minimal"], 0).expect("sim agent"));
    server
        .register_agent("sim://bench", sim)
        .await
        .expect("register sim");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = server.router();
    tokio::spawn(async move { serve(listener, router).await });

    let client = reqwest::Client::new();
    let auth: serde_json::Value = client
        .post(format!("{base}/v1/auth/signup"))
        .json(&serde_json::json!({"email": "bench@example.com", "password": "benchmark1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: serde_json::Value = client
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(auth["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    for _ in 0..SANDBOXES {
        let r = client
            .post(format!("{base}/v1/sandboxes"))
            .header("x-api-key", &key)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    let mut times = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let start = Instant::now();
        let r = client
            .get(format!("{base}/v1/sandboxes"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        let body = r.bytes().await.unwrap();
        let took = start.elapsed();
        if i == 0 {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            assert_eq!(list.len(), SANDBOXES);
        }
        if i >= WARMUP {
            times.push(took);
        }
    }
    times.sort();
    println!(
        "GET /v1/sandboxes ({SANDBOXES} sandboxes, {SAMPLES} requests, sequential): \
         median {:.3} ms, p10 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, min {:.3} ms, max {:.3} ms",
        pct(&times, 0.5).as_secs_f64() * 1e3,
        pct(&times, 0.1).as_secs_f64() * 1e3,
        pct(&times, 0.9).as_secs_f64() * 1e3,
        pct(&times, 0.99).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}
