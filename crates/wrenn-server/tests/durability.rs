//! "Never lose a sandbox", the control plane's half, through the public API with the
//! simulated agent: clients that give up mid-operation, operations that meet on one
//! sandbox, two snapshots racing for one name, the reaper against an exec that just started,
//! and each named failure point (`wrenn_server::failpoints`) failing or panicking its step.
//! After each, every sandbox the API shows is usable or in `error`, and the database and the
//! agent agree.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::{assert_error, TestServer};
use wrenn_server::agent::sim_faults::SimOp;
use wrenn_server::failpoints::Action;
use wrenn_types::agent::SandboxStatus;

/// How long the simulated agent takes to answer a slow call.
const SLOW: Duration = Duration::from_millis(400);
/// A client that gives up long before that.
const IMPATIENT: Duration = Duration::from_millis(50);

/// A server whose background reaper and reconciler stay out of the way (tests run passes).
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.reaper_interval = Duration::from_secs(3600);
        c.reconcile_interval = Duration::from_secs(3600);
    })
    .await
}

/// Waits (up to 5 s) until `cond` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running sandbox holding `/data` = `content`.
async fn sandbox_with_file(t: &TestServer, key: &str, content: &str) -> String {
    let id = t.sandbox(key, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.write(key, &id, "/data", content).await;
    id
}

#[tokio::test]
async fn a_client_that_drops_mid_pause_leaves_a_paused_sandbox() {
    let t = server().await;
    let k = t.account("drop-pause@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "kept").await;
    t.sim.set_delay(SimOp::Pause, SLOW);
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/pause"), &k)
        .timeout(IMPATIENT)
        .send()
        .await;
    assert!(r.is_err(), "the client was meant to give up");
    // The pause goes on without its client, and is recorded.
    t.wait_status(&k, &id, "paused").await;
    assert_eq!(t.sim.sandbox_status(&id), Some(SandboxStatus::Paused));
    let r = t.exec(&k, &id, json!({"cmd": "true"})).await;
    assert_error(r, 409, "sandbox_not_running").await;
    t.sim.set_delay(SimOp::Pause, Duration::ZERO);
    let r = t.op(&k, &id, "resume").await;
    assert_eq!(r.status(), 200);
    assert_eq!(t.cat(&k, &id, "/data").await, "kept");
    assert_eq!(t.op(&k, &id, "pause").await.status(), 200);
}

#[tokio::test]
async fn a_client_that_drops_mid_resume_leaves_a_running_sandbox() {
    let t = server().await;
    let k = t.account("drop-resume@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "kept").await;
    assert_eq!(t.op(&k, &id, "pause").await.status(), 200);
    t.sim.set_delay(SimOp::Resume, SLOW);
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/resume"), &k)
        .timeout(IMPATIENT)
        .send()
        .await;
    assert!(r.is_err());
    t.wait_status(&k, &id, "running").await;
    assert_eq!(t.cat(&k, &id, "/data").await, "kept");
}

#[tokio::test]
async fn a_client_that_drops_mid_create_leaves_a_running_sandbox() {
    let t = server().await;
    let k = t.account("drop-create@example.com").await.key;
    t.sim.set_delay(SimOp::Create, SLOW);
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &k)
        .json(&json!({}))
        .timeout(IMPATIENT)
        .send()
        .await;
    assert!(r.is_err());
    // The client never learnt the id; the list has it, and it finishes as a usable sandbox.
    let list = || async {
        let v: Vec<Value> = t
            .keyed(Method::GET, "/v1/sandboxes", &k)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    until("the create's row", || async { !list().await.is_empty() }).await;
    let list = list().await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    t.wait_status(&k, &id, "running").await;
    t.write(&k, &id, "/x", "y").await;
    assert_eq!(t.cat(&k, &id, "/x").await, "y");
}

#[tokio::test]
async fn a_client_that_drops_mid_destroy_leaves_no_sandbox() {
    let t = server().await;
    let k = t.account("drop-destroy@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "x").await;
    t.sim.set_delay(SimOp::Destroy, SLOW);
    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
        .timeout(IMPATIENT)
        .send()
        .await;
    assert!(r.is_err());
    // Meanwhile the sandbox shows as stopped and serves nothing.
    assert_eq!(t.status(&k, &id).await, "stopped");
    let r = t.exec(&k, &id, json!({"cmd": "true"})).await;
    assert_error(r, 409, "sandbox_not_running").await;
    t.wait_status(&k, &id, "gone").await;
    assert_eq!(t.sim.sandbox_status(&id), None);
}

#[tokio::test]
async fn a_second_pause_joins_the_first() {
    let t = server().await;
    let k = t.account("join@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "x").await;
    t.sim.set_delay(SimOp::Pause, SLOW);
    let (a, b) = tokio::join!(t.op(&k, &id, "pause"), async {
        until("the agent to pause", || async {
            t.sim.sandbox_status(&id) == Some(SandboxStatus::Paused)
        })
        .await;
        t.op(&k, &id, "pause").await
    });
    for r in [a, b] {
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "paused");
    }
    // A pause after that one is over is refused as the API says.
    let r = t.op(&k, &id, "pause").await;
    assert_error(r, 409, "sandbox_not_running").await;
}

#[tokio::test]
async fn a_pause_during_a_destroy_waits_for_it() {
    let t = server().await;
    let k = t.account("destroy-pause@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "x").await;
    t.sim.set_delay(SimOp::Destroy, SLOW);
    let (destroyed, paused) = tokio::join!(
        t.keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
            .send(),
        async {
            until("the destroy to start", || async {
                t.status(&k, &id).await == "stopped"
            })
            .await;
            t.op(&k, &id, "pause").await
        }
    );
    assert_eq!(destroyed.unwrap().status(), 204);
    assert_error(paused, 404, "sandbox_not_found").await;
    assert_eq!(t.sim.sandbox_status(&id), None);
}

#[tokio::test]
async fn a_destroy_during_a_pause_waits_for_it() {
    let t = server().await;
    let k = t.account("pause-destroy@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "x").await;
    t.sim.set_delay(SimOp::Pause, SLOW);
    let (paused, destroyed) = tokio::join!(t.op(&k, &id, "pause"), async {
        until("the agent to pause", || async {
            t.sim.sandbox_status(&id) == Some(SandboxStatus::Paused)
        })
        .await;
        t.keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
            .send()
            .await
            .unwrap()
    });
    let status = paused.status();
    let v: Value = paused.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), v["status"].as_str()),
        (200, Some("paused"))
    );
    assert_eq!(destroyed.status(), 204);
    assert_eq!(t.status(&k, &id).await, "gone");
    assert_eq!(t.sim.sandbox_status(&id), None);
}

#[tokio::test]
async fn a_destroy_during_a_slow_create_leaves_no_vm() {
    let t = server().await;
    let k = t.account("create-destroy@example.com").await.key;
    t.sim.set_delay(SimOp::Create, SLOW);
    let (created, destroyed) = tokio::join!(
        t.keyed(Method::POST, "/v1/sandboxes", &k)
            .json(&json!({}))
            .send(),
        async {
            let list = || async {
                let v: Vec<Value> = t
                    .keyed(Method::GET, "/v1/sandboxes", &k)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v
            };
            until("the create's row", || async { !list().await.is_empty() }).await;
            let list = list().await;
            assert_eq!(list.len(), 1, "{list:?}");
            let id = list[0]["id"].as_str().unwrap().to_string();
            let r = t
                .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
                .send()
                .await
                .unwrap();
            (id, r)
        }
    );
    // The create finishes first; the destroy then removes what it made.
    assert_eq!(created.unwrap().status(), 201);
    let (id, r) = destroyed;
    assert_eq!(r.status(), 204);
    assert_eq!(t.status(&k, &id).await, "gone");
    assert_eq!(t.sim.sandbox_status(&id), None);
}

#[tokio::test]
async fn two_snapshots_racing_for_one_name_never_lose_a_sandbox() {
    let t = server().await;
    let k = t.account("race@example.com").await.key;
    let a = sandbox_with_file(&t, &k, "from a").await;
    let b = sandbox_with_file(&t, &k, "from b").await;
    let before = t.sim.template_names().len();
    t.sim.set_delay(SimOp::Snapshot, SLOW);
    let snap = |id: String| {
        let t = &t;
        let k = k.clone();
        async move {
            t.keyed(Method::POST, "/v1/snapshots", &k)
                .json(&json!({"sandbox_id": id, "name": "race"}))
                .send()
                .await
                .unwrap()
        }
    };
    let (ra, rb) = tokio::join!(snap(a.clone()), snap(b.clone()));
    let (won, lost, loser) = match (ra.status().as_u16(), rb.status().as_u16()) {
        (201, _) => (ra, rb, b.clone()),
        (_, 201) => (rb, ra, a.clone()),
        (x, y) => panic!("no snapshot was taken: {x} {y}"),
    };
    assert_eq!(won.status(), 201);
    assert_error(lost, 409, "snapshot_exists").await;
    // The loser's sandbox is untouched: running, with its file.
    assert_eq!(t.status(&k, &loser).await, "running");
    assert_eq!(t.sim.sandbox_status(&loser), Some(SandboxStatus::Running));
    let want = if loser == a { "from a" } else { "from b" };
    assert_eq!(t.cat(&k, &loser, "/data").await, want);
    // One template made, and a sandbox from it has the winner's file.
    assert_eq!(t.sim.template_names().len(), before + 1);
    let child = t.sandbox(&k, json!({"template": "race"})).await;
    let other = if want == "from a" { "from b" } else { "from a" };
    assert_eq!(
        t.cat(&k, child["id"].as_str().unwrap(), "/data").await,
        other
    );
}

#[tokio::test]
async fn the_reaper_leaves_a_sandbox_whose_activity_moved_after_its_list() {
    let t = server().await;
    let k = t.account("reaper@example.com").await.key;
    let id = t.sandbox(&k, json!({"timeout_sec": 1})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The reaper lists the sandbox as idle, then an exec starts before it claims it.
    t.server
        .failpoints()
        .set(
            "reaper.before_claim",
            Action::Sleep(Duration::from_millis(400)),
        )
        .unwrap();
    let (reaped, exec) = tokio::join!(t.server.reap_idle_now(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.exec(&k, &id, json!({"cmd": "sleep", "args": ["0.6"]}))
            .await
    });
    assert_eq!(reaped.unwrap(), Vec::<String>::new());
    let status = exec.status();
    let v: Value = exec.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), v["exit_code"].as_i64()),
        (200, Some(0)),
        "{v}"
    );
    assert_eq!(t.status(&k, &id).await, "running");
    // Idle again and nothing moves: then it is paused.
    t.server.failpoints().clear_all();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(t.server.reap_idle_now().await.unwrap(), [id.as_str()]);
    assert_eq!(t.status(&k, &id).await, "paused");
}

#[tokio::test]
async fn the_reaper_skips_a_sandbox_the_agent_says_is_busy_without_counting_a_failure() {
    let t = server().await;
    let k = t.account("reaper-busy@example.com").await.key;
    let id = t.sandbox(&k, json!({"timeout_sec": 1})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The agent refuses the pause because an exec did not end in time.
    t.sim.set_fail_with(
        SimOp::Pause,
        wrenn_types::agent::AgentErrorCode::Conflict,
        "sandbox is busy",
    );
    assert_eq!(
        t.server.reap_idle_now().await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(t.status(&k, &id).await, "running");
    assert_eq!(pause_failures(&t).await, 0);
    // Still usable, and a later pass pauses it once the agent agrees.
    let r = t.exec(&k, &id, json!({"cmd": "true"})).await;
    assert_eq!(r.status().as_u16(), 200);
    t.sim.set_fail(SimOp::Pause, false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(t.server.reap_idle_now().await.unwrap(), [id.as_str()]);
    assert_eq!(t.status(&k, &id).await, "paused");
    // A real agent failure is still counted.
    let id2 = t.sandbox(&k, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.sim.set_fail(SimOp::Pause, true);
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id2}/pause"), &k)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(pause_failures(&t).await, 1);
}

/// `wrenn_sandbox_operation_failures_total{op="pause"}` from `GET /metrics`.
async fn pause_failures(t: &TestServer) -> u64 {
    let text = t
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("wrenn_sandbox_operation_failures_total{op=\"pause\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pause failure counter in:\n{text}"))
}

/// Arms `point` with `action` for one request, then disarms it.
async fn with_failpoint<T>(
    t: &TestServer,
    point: &str,
    action: Action,
    f: impl std::future::Future<Output = T>,
) -> T {
    t.server.failpoints().set(point, action).unwrap();
    let out = f.await;
    t.server.failpoints().clear(point);
    out
}

#[tokio::test]
async fn a_step_that_fails_before_the_agent_call_leaves_the_sandbox_as_it_was() {
    let t = server().await;
    let k = t.account("fp-before@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "v").await;
    for action in [Action::Error, Action::Panic] {
        let r = with_failpoint(&t, "pause.before_agent", action, t.op(&k, &id, "pause")).await;
        assert_error(r, 500, "internal_error").await;
        if action == Action::Panic {
            // The task that panicked left its intent: the reconciler settles it.
            assert_eq!(t.status(&k, &id).await, "running");
            t.server.reconcile_now().await.unwrap();
        }
        assert_eq!(t.status(&k, &id).await, "running", "{action:?}");
        assert_eq!(t.cat(&k, &id, "/data").await, "v");
    }
    let r = with_failpoint(&t, "destroy.before_agent", Action::Error, async {
        t.keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_error(r, 500, "internal_error").await;
    assert_eq!(t.cat(&k, &id, "/data").await, "v");

    let snap = json!({"sandbox_id": id, "name": "kept-name"});
    let r = with_failpoint(&t, "snapshot.before_agent", Action::Error, async {
        t.keyed(Method::POST, "/v1/snapshots", &k)
            .json(&snap)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_error(r, 500, "internal_error").await;
    assert_eq!(t.cat(&k, &id, "/data").await, "v");

    assert_eq!(t.op(&k, &id, "pause").await.status(), 200);
    let r = with_failpoint(
        &t,
        "resume.before_agent",
        Action::Error,
        t.op(&k, &id, "resume"),
    )
    .await;
    assert_error(r, 500, "internal_error").await;
    assert_eq!(t.status(&k, &id).await, "paused");
    assert_eq!(t.op(&k, &id, "resume").await.status(), 200);

    // The name was given up: the snapshot can be taken now.
    let r = t
        .keyed(Method::POST, "/v1/snapshots", &k)
        .json(&snap)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let r = with_failpoint(&t, "create.before_agent", Action::Error, async {
        t.keyed(Method::POST, "/v1/sandboxes", &k)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_error(r, 500, "internal_error").await;
    let list: Vec<Value> = t
        .keyed(Method::GET, "/v1/sandboxes", &k)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty(), "{list:?}");
}

#[tokio::test]
async fn a_step_that_fails_after_the_agent_answered_is_settled_from_the_agent() {
    let t = server().await;
    let k = t.account("fp-after@example.com").await.key;
    for action in [Action::Error, Action::Panic] {
        // Pause: the agent paused it; the record is settled to paused by the next request
        // (an exec, which then finds it paused), leaving the reconciler nothing to do.
        let id = sandbox_with_file(&t, &k, "p").await;
        let r = with_failpoint(&t, "pause.after_agent", action, t.op(&k, &id, "pause")).await;
        assert_error(r, 500, "internal_error").await;
        assert_eq!(t.sim.sandbox_status(&id), Some(SandboxStatus::Paused));
        let r = t.exec(&k, &id, json!({"cmd": "true"})).await;
        assert_error(r, 409, "sandbox_not_running").await;
        assert_eq!(t.status(&k, &id).await, "paused");
        let report = t.server.reconcile_now().await.unwrap();
        assert!(report.settled.is_empty(), "{report:?}");

        // Resume: settled by the next request on the sandbox, without the reconciler.
        let r = with_failpoint(&t, "resume.after_agent", action, t.op(&k, &id, "resume")).await;
        assert_error(r, 500, "internal_error").await;
        let r = t.op(&k, &id, "pause").await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert_eq!(t.op(&k, &id, "resume").await.status(), 200);
        assert_eq!(t.cat(&k, &id, "/data").await, "p");

        // Destroy: finished by the reconciler.
        let r = with_failpoint(&t, "destroy.after_agent", action, async {
            t.keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
                .send()
                .await
                .unwrap()
        })
        .await;
        assert_error(r, 500, "internal_error").await;
        assert_eq!(t.status(&k, &id).await, "stopped");
        t.server.reconcile_now().await.unwrap();
        assert_eq!(t.status(&k, &id).await, "gone");

        // Create: the agent's sandbox is taken into the record.
        let r = with_failpoint(&t, "create.after_agent", action, async {
            t.keyed(Method::POST, "/v1/sandboxes", &k)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
        })
        .await;
        assert_error(r, 500, "internal_error").await;
        let list: Vec<Value> = t
            .keyed(Method::GET, "/v1/sandboxes", &k)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["status"], "pending");
        let created = list[0]["id"].as_str().unwrap().to_string();
        t.server.reconcile_now().await.unwrap();
        assert_eq!(t.status(&k, &created).await, "running");
        t.write(&k, &created, "/c", "c").await;

        // Snapshot: the template the agent made is committed.
        let name = format!("after-{action:?}").to_lowercase();
        let r = with_failpoint(&t, "snapshot.after_agent", action, async {
            t.keyed(Method::POST, "/v1/snapshots", &k)
                .json(&json!({"sandbox_id": created, "name": name}))
                .send()
                .await
                .unwrap()
        })
        .await;
        assert_error(r, 500, "internal_error").await;
        t.server.reconcile_now().await.unwrap();
        assert_eq!(t.status(&k, &created).await, "gone");
        let child = t.sandbox(&k, json!({"template": name})).await;
        let cid = child["id"].as_str().unwrap().to_string();
        assert_eq!(t.cat(&k, &cid, "/c").await, "c");
        let r = t
            .keyed(Method::DELETE, &format!("/v1/sandboxes/{cid}"), &k)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
}

#[tokio::test]
async fn a_failed_agent_call_takes_the_agents_state() {
    let t = server().await;
    let k = t.account("agent-fails@example.com").await.key;
    let id = sandbox_with_file(&t, &k, "v").await;
    t.sim.set_fail(SimOp::Pause, true);
    let r = t.op(&k, &id, "pause").await;
    assert_error(r, 502, "agent_error").await;
    t.sim.set_fail(SimOp::Pause, false);
    assert_eq!(t.status(&k, &id).await, "running");
    assert_eq!(t.cat(&k, &id, "/data").await, "v");
    // A destroy the agent fails stays asked for: the reconciler finishes it.
    t.sim.set_fail(SimOp::Destroy, true);
    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
        .send()
        .await
        .unwrap();
    assert_error(r, 502, "agent_error").await;
    assert_eq!(t.status(&k, &id).await, "stopped");
    t.sim.set_fail(SimOp::Destroy, false);
    t.server.reconcile_now().await.unwrap();
    assert_eq!(t.status(&k, &id).await, "gone");
    assert_eq!(t.sim.sandbox_status(&id), None);
}
