//! The reconciler against each kind of disagreement between the database and an agent, on
//! SQLite and on PostgreSQL: sandboxes the agent forgot, a VM that died, a sandbox the agent
//! paused, a VM and a snapshot template no record owns (removed only after the grace), a
//! create still under way (never taken for an orphan), operations left unfinished by this
//! control plane or another, and the lease that makes one control plane of several the
//! reconciler.

mod support;

use chrono::Duration as ChronoDuration;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::{assert_error, TestServer};
use wrenn_server::agent::sim_faults::SimOp;
use wrenn_server::failpoints::Action;
use wrenn_server::store::{self, Intent, Operation};
use wrenn_types::agent::SandboxStatus;

/// How long a VM or template must stay unowned before it is removed.
const GRACE: Duration = Duration::from_millis(300);

/// A control plane whose background reconciler has run its first pass (a new leader runs
/// one at once) and runs no other within the test, so the test's own passes see each
/// disagreement first.
async fn server(database_url: Option<String>) -> TestServer {
    let t = TestServer::start_with(move |c| {
        c.database_url = database_url;
        c.reaper_interval = Duration::from_secs(3600);
        c.reconcile_interval = Duration::from_secs(3600);
        c.orphan_grace = GRACE;
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while t.server.reconcile_passes() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader's first reconciler pass did not come"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t
}

async fn new_sandbox(t: &TestServer, key: &str) -> String {
    t.sandbox(key, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every kind of disagreement at once, then each fixed as it should be.
async fn disagreements(t: &TestServer) {
    let k = t.account("disagree@example.com").await.key;
    let lost_running = new_sandbox(t, &k).await;
    let lost_paused = new_sandbox(t, &k).await;
    assert_eq!(t.op(&k, &lost_paused, "pause").await.status(), 200);
    assert!(t.sim.forget(&lost_running) && t.sim.forget(&lost_paused));
    let died = new_sandbox(t, &k).await;
    assert!(t.sim.set_status(&died, SandboxStatus::Error));
    let paused_by_agent = new_sandbox(t, &k).await;
    assert!(t.sim.set_status(&paused_by_agent, SandboxStatus::Paused));
    let fine = new_sandbox(t, &k).await;
    t.write(&k, &fine, "/f", "fine").await;
    let snapped = new_sandbox(t, &k).await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots", &k)
        .json(&json!({"sandbox_id": snapped, "name": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    t.sim.invent("sb-nobody", SandboxStatus::Running);
    t.sim.invent_template("t-nobody");
    let templates_before = t.sim.template_names();

    let first = t.server.reconcile_now().await.unwrap();
    let mut corrected = first.corrected.clone();
    corrected.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (lost_running.clone(), SandboxStatus::Error),
        (lost_paused.clone(), SandboxStatus::Error),
        (died.clone(), SandboxStatus::Error),
        (paused_by_agent.clone(), SandboxStatus::Paused),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(corrected, want, "{first:?}");
    // Seen unowned once: within the grace, nothing is removed.
    assert!(first.destroyed_vms.is_empty() && first.removed_templates.is_empty());
    assert_eq!(
        t.sim.sandbox_status("sb-nobody"),
        Some(SandboxStatus::Running)
    );
    for (id, status) in [
        (&lost_running, "error"),
        (&lost_paused, "error"),
        (&died, "error"),
        (&paused_by_agent, "paused"),
        (&fine, "running"),
    ] {
        assert_eq!(t.status(&k, id).await, status, "{id}");
    }
    assert_eq!(t.cat(&k, &fine, "/f").await, "fine");

    tokio::time::sleep(GRACE + Duration::from_millis(50)).await;
    let second = t.server.reconcile_now().await.unwrap();
    assert_eq!(second.destroyed_vms, ["sb-nobody"], "{second:?}");
    assert_eq!(second.removed_templates, ["t-nobody"]);
    assert!(second.corrected.is_empty() && second.settled.is_empty());
    assert_eq!(t.sim.sandbox_status("sb-nobody"), None);
    let templates_after = t.sim.template_names();
    assert_eq!(templates_after.len(), templates_before.len() - 1);
    assert!(!templates_after.contains(&"t-nobody".to_string()));
    // The team's snapshot, and base templates, are kept.
    let child = new_sandbox_from(t, &k, "mine").await;
    assert_eq!(t.status(&k, &child).await, "running");

    // A third pass finds nothing to do.
    let third = t.server.reconcile_now().await.unwrap();
    assert!(!third.changed_anything(), "{third:?}");
    // Sandboxes in error can be destroyed; the one the agent paused resumes.
    for id in [&lost_running, &lost_paused, &died] {
        let r = t
            .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert_eq!(t.op(&k, &paused_by_agent, "resume").await.status(), 200);
}

async fn new_sandbox_from(t: &TestServer, key: &str, template: &str) -> String {
    t.sandbox(key, json!({"template": template})).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A create whose agent call is under way is recorded, never taken for an orphan.
async fn a_create_under_way_is_not_an_orphan(t: &TestServer) {
    let k = t.account("in-flight@example.com").await.key;
    t.sim.set_delay(SimOp::Create, GRACE * 3);
    let create = async {
        t.keyed(Method::POST, "/v1/sandboxes", &k)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
    };
    let passes = async {
        let mut reports = Vec::new();
        for _ in 0..2 {
            tokio::time::sleep(GRACE / 2 + Duration::from_millis(50)).await;
            reports.push(t.server.reconcile_now().await.unwrap());
            tokio::time::sleep(GRACE / 2).await;
        }
        reports
    };
    let (created, reports) = tokio::join!(create, passes);
    t.sim.set_delay(SimOp::Create, Duration::ZERO);
    for r in &reports {
        assert!(!r.changed_anything(), "{r:?}");
    }
    assert_eq!(created.status(), 201);
    let v: Value = created.json().await.unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(t.sim.sandbox_status(id), Some(SandboxStatus::Running));
    assert_eq!(t.status(&k, id).await, "running");
}

/// Unfinished operations: this control plane's are settled at once; another's only once it
/// is stale, except on SQLite, where there is no other control plane.
async fn unfinished_operations(t: &TestServer, single_writer: bool) {
    let k = t.account("unfinished@example.com").await.key;
    let id = new_sandbox(t, &k).await;
    t.server
        .failpoints()
        .set("pause.after_agent", Action::Error)
        .unwrap();
    assert_error(t.op(&k, &id, "pause").await, 500, "internal_error").await;
    t.server.failpoints().clear_all();
    let report = t.server.reconcile_now().await.unwrap();
    assert_eq!(report.settled, [id.as_str()]);
    assert_eq!(t.status(&k, &id).await, "paused");

    // Another control plane's resume, which the agent never saw.
    let store = t.server.store();
    let mut sb = store.find_sandbox(&id).await.unwrap().unwrap();
    sb.intent = Some(Intent {
        op: Operation::Resuming,
        owner: "cp-elsewhere".into(),
        since: store::now(),
    });
    assert!(store.update_sandbox(&sb).await.unwrap());
    sb.version += 1;
    if single_writer {
        // SQLite has one control plane: that intent was abandoned, and the next request
        // settles it and goes on.
        assert_eq!(t.op(&k, &id, "resume").await.status(), 200);
        return;
    }
    // Busy meanwhile, in the words of each endpoint.
    assert_error(t.op(&k, &id, "resume").await, 409, "sandbox_not_paused").await;
    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &k)
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "conflict").await;
    let report = t.server.reconcile_now().await.unwrap();
    assert!(report.settled.is_empty(), "{report:?}");
    assert_eq!(t.status(&k, &id).await, "paused");
    // Stale: settled to what the agent says.
    sb.intent = Some(Intent {
        op: Operation::Resuming,
        owner: "cp-elsewhere".into(),
        since: store::now() - ChronoDuration::hours(1),
    });
    assert!(store.update_sandbox(&sb).await.unwrap());
    let report = t.server.reconcile_now().await.unwrap();
    assert_eq!(report.settled, [id.as_str()]);
    assert_eq!(t.op(&k, &id, "resume").await.status(), 200);
}

#[tokio::test]
async fn sqlite_reconciler_fixes_each_disagreement() {
    let t = server(None).await;
    disagreements(&t).await;
    a_create_under_way_is_not_an_orphan(&t).await;
    unfinished_operations(&t, true).await;
}

#[tokio::test]
async fn postgres_reconciler_fixes_each_disagreement() {
    let pg = support::pg::PgServer::start();
    let url = pg.create_database("wrenn_reconcile").await;
    let t = server(Some(url.clone())).await;
    disagreements(&t).await;
    a_create_under_way_is_not_an_orphan(&t).await;
    unfinished_operations(&t, false).await;

    // A second control plane on the database: the first holds the reconciler lease.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = wrenn_server::ServerConfig::new(dir.path(), support::JWT_SECRET);
    cfg.database_url = Some(url);
    cfg.reconcile_interval = Duration::from_secs(3600);
    let other = wrenn_server::build(cfg).await.unwrap();
    assert!(other.reconcile_now().await.unwrap().skipped);
    assert!(!t.server.reconcile_now().await.unwrap().skipped);
}

/// On SQLite there is one control plane: one started again after a crash (its lease row still
/// naming the dead process) reconciles at once, not after the dead one's lease ran out.
#[tokio::test]
async fn sqlite_restarted_control_plane_reconciles_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut cfg = wrenn_server::ServerConfig::new(dir.path(), support::JWT_SECRET);
        cfg.reconcile_interval = Duration::from_secs(3600);
        cfg
    };
    let crashed = wrenn_server::build(cfg()).await.unwrap();
    assert!(!crashed.reconcile_now().await.unwrap().skipped);
    let restarted = wrenn_server::build(cfg()).await.unwrap();
    assert!(!restarted.reconcile_now().await.unwrap().skipped);
}

/// A sandbox whose pause a crashed control plane left unfinished shows `running`; an exec on
/// it settles the abandoned pause (the agent says running) and runs, instead of answering
/// 409 until the reconciler comes by. Only on SQLite, where every such intent is abandoned.
#[tokio::test]
async fn an_exec_settles_an_abandoned_operation_first() {
    let t = server(None).await;
    let k = t.account("abandoned@example.com").await.key;
    let id = new_sandbox(&t, &k).await;
    let store = t.server.store();
    let mut sb = store.find_sandbox(&id).await.unwrap().unwrap();
    sb.intent = Some(Intent {
        op: Operation::Pausing,
        owner: "cp-crashed".into(),
        since: store::now(),
    });
    assert!(store.update_sandbox(&sb).await.unwrap());
    assert_eq!(t.status(&k, &id).await, "running");
    let r = t
        .exec(&k, &id, json!({"cmd": "echo", "args": ["hi"]}))
        .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let sb = store.find_sandbox(&id).await.unwrap().unwrap();
    assert!(sb.intent.is_none(), "{sb:?}");
}
