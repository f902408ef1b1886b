//! The shared storage suite: the same checks run against the SQLite store and against a
//! PostgreSQL store on a private server (see `support/pg.rs`).

mod store_checks;
mod support;

use store_checks::{account, metadata, sandbox, usage};

use chrono::Duration;
use std::sync::Arc;
use wrenn_server::store::{
    self, now, ApiKeyRecord, HostCapacity, HostRecord, HostStatus, Intent, Operation, RemovedHost,
    SandboxRecord, SnapshotReservation, Store, StoreError, TemplateRecord,
};
use wrenn_types::agent::SandboxStatus;

async fn accounts(s: &dyn Store) {
    let a = account("alice");
    s.create_account(&a).await.unwrap();
    let u = s.user_by_email("alice@example.com").await.unwrap().unwrap();
    assert_eq!(u.id, a.user_id);
    assert_eq!(u.team_id, a.team_id);
    assert_eq!(u.password_hash.as_deref(), Some("hash-alice"));
    assert_eq!(u.created_at, a.created_at);
    assert_eq!(s.user_by_id(&a.user_id).await.unwrap().unwrap(), u);
    assert_eq!(
        s.team(&a.team_id).await.unwrap().unwrap().name,
        "alice's team"
    );

    // Same email again: duplicate, and nothing of the second attempt is left behind.
    let mut again = account("alice2");
    again.email = a.email.clone();
    assert!(matches!(
        s.create_account(&again).await,
        Err(StoreError::Duplicate)
    ));
    assert!(s.team(&again.team_id).await.unwrap().is_none());
    assert!(s
        .user_by_email("nobody@example.com")
        .await
        .unwrap()
        .is_none());
}

async fn oauth(s: &dyn Store) {
    let mut a = account("octo");
    a.password_hash = None;
    s.create_oauth_account(&a, "github", "4242").await.unwrap();
    let u = s.user_by_oauth("github", "4242").await.unwrap().unwrap();
    assert_eq!(u.id, a.user_id);
    assert_eq!(u.password_hash, None);
    assert!(s.user_by_oauth("github", "1").await.unwrap().is_none());

    // The same identity for another email: duplicate, rolled back entirely.
    let b = account("octo2");
    assert!(matches!(
        s.create_oauth_account(&b, "github", "4242").await,
        Err(StoreError::Duplicate)
    ));
    assert!(s.user_by_id(&b.user_id).await.unwrap().is_none());
    assert!(s.team(&b.team_id).await.unwrap().is_none());

    // A new identity whose email is taken: duplicate too.
    let mut c = account("octo3");
    c.email = a.email.clone();
    assert!(matches!(
        s.create_oauth_account(&c, "github", "777").await,
        Err(StoreError::Duplicate)
    ));
    assert!(s.user_by_oauth("github", "777").await.unwrap().is_none());
}

async fn api_keys(s: &dyn Store) {
    s.create_account(&account("k1")).await.unwrap();
    s.create_account(&account("k2")).await.unwrap();
    let mk = |id: &str, team: &str| ApiKeyRecord {
        id: id.into(),
        team_id: team.into(),
        name: format!("key {id}"),
        key_hash: format!("hash-of-{id}"),
        key_prefix: "wrn_abcdef12...".into(),
        created_by: Some("user-k1".into()),
        created_at: now(),
        last_used: None,
    };
    s.insert_api_key(&mk("a", "team-k1")).await.unwrap();
    s.insert_api_key(&mk("b", "team-k1")).await.unwrap();
    s.insert_api_key(&mk("c", "team-k2")).await.unwrap();
    let ids: Vec<String> = s
        .list_api_keys("team-k1")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);

    let found = s.api_key_by_hash("hash-of-c").await.unwrap().unwrap();
    assert_eq!(found.team_id, "team-k2");
    assert_eq!(found.last_used, None);
    let at = now();
    s.touch_api_key("c", at).await.unwrap();
    assert_eq!(
        s.api_key_by_hash("hash-of-c")
            .await
            .unwrap()
            .unwrap()
            .last_used,
        Some(at)
    );

    // Another team's key cannot be deleted.
    assert!(!s.delete_api_key("team-k1", "c").await.unwrap());
    assert!(s.delete_api_key("team-k2", "c").await.unwrap());
    assert!(s.api_key_by_hash("hash-of-c").await.unwrap().is_none());
}

async fn hosts(s: &dyn Store) -> String {
    let h = HostRecord {
        id: "host-1".into(),
        url: "http://127.0.0.1:9".into(),
        token: "t1".into(),
        status: HostStatus::Healthy,
        cpus: 0,
        total_memory_mb: 0,
        free_memory_mb: 0,
        running: 0,
        last_seen: None,
        created_at: now(),
        draining: false,
        cert_sha256: None,
    };
    let stored = s.upsert_host(&h).await.unwrap();
    assert_eq!(stored, h);
    // Registering the same url again keeps the id and takes the new token.
    let again = s
        .upsert_host(&HostRecord {
            id: "host-other".into(),
            token: "t2".into(),
            ..h.clone()
        })
        .await
        .unwrap();
    assert_eq!(again.id, "host-1");
    assert_eq!(again.token, "t2");
    let cap = HostCapacity {
        cpus: 4,
        total_memory_mb: 8192,
        free_memory_mb: 4096,
        running: 3,
    };
    let at = now();
    s.update_host_health("host-1", HostStatus::Healthy, Some(cap), at)
        .await
        .unwrap();
    s.update_host_health("host-1", HostStatus::Unreachable, None, at)
        .await
        .unwrap();
    let all = s.list_hosts().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, HostStatus::Unreachable);
    assert_eq!(all[0].free_memory_mb, 4096);
    assert_eq!(all[0].running, 3);
    assert_eq!(all[0].last_seen, Some(at));
    assert_eq!(all[0].cert_sha256, None);
    // A joined host's certificate pin is listed with it; registering its URL again (with a
    // pin in the record) leaves the pin as the join set it.
    let url = "https://127.0.0.1:9";
    let joined = s.record_joined_host(None, "host-j", url, "ab12", at).await;
    assert_eq!(joined.unwrap().as_deref(), Some("host-j"));
    let pinned = HostRecord {
        id: "host-j2".into(),
        url: url.into(),
        cert_sha256: Some("ff".into()),
        ..h.clone()
    };
    assert_eq!(s.upsert_host(&pinned).await.unwrap().id, "host-j");
    let all = s.list_hosts().await.unwrap();
    let pin_of = |id: &str| all.iter().find(|h| h.id == id).unwrap().cert_sha256.clone();
    assert_eq!(pin_of("host-j").as_deref(), Some("ab12"));
    assert_eq!(pin_of("host-1"), None);
    "host-1".into()
}

async fn sandboxes(s: &dyn Store, host: &str) {
    s.create_account(&account("s1")).await.unwrap();
    s.create_account(&account("s2")).await.unwrap();
    let mut a = sandbox("sb-a", "team-s1", host, 0);
    s.insert_sandbox(&a).await.unwrap();
    let mut b = sandbox("sb-b", "team-s1", host, 5);
    b.created_at += Duration::milliseconds(1);
    s.insert_sandbox(&b).await.unwrap();
    s.insert_sandbox(&sandbox("sb-c", "team-s2", host, 7))
        .await
        .unwrap();
    assert!(matches!(
        s.insert_sandbox(&a).await,
        Err(StoreError::Duplicate)
    ));
    assert_eq!(
        s.count_sandboxes_by_status().await.unwrap(),
        [(SandboxStatus::Running, 3)]
    );

    assert_eq!(s.get_sandbox("team-s1", "sb-a").await.unwrap().unwrap(), a);
    assert!(s.get_sandbox("team-s2", "sb-a").await.unwrap().is_none());
    let ids: Vec<String> = s
        .list_sandboxes("team-s1")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, ["sb-a", "sb-b"]);

    let mut timed: Vec<String> = s
        .list_running_with_timeout()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    timed.sort();
    assert_eq!(timed, ["sb-b", "sb-c"]);

    let later = now() + Duration::seconds(3);
    assert!(s.touch_sandbox("team-s1", "sb-a", later).await.unwrap());
    assert!(!s.touch_sandbox("team-s2", "sb-a", later).await.unwrap());
    a = s.get_sandbox("team-s1", "sb-a").await.unwrap().unwrap();
    assert_eq!(a.last_active_at, Some(later));
    // Every write bumps the version, a touch too.
    assert_eq!(a.version, 1);

    a.status = SandboxStatus::Paused;
    a.host_ip = String::new();
    a.last_updated = later;
    assert!(s.update_sandbox(&a).await.unwrap());
    a.version += 1;
    assert_eq!(s.get_sandbox("team-s1", "sb-a").await.unwrap().unwrap(), a);
    // A write on a version read before another write is refused and changes nothing.
    let mut stale = a.clone();
    stale.version -= 1;
    stale.status = SandboxStatus::Error;
    assert!(!s.update_sandbox(&stale).await.unwrap());
    assert_eq!(s.get_sandbox("team-s1", "sb-a").await.unwrap().unwrap(), a);
    // Counts span every team.
    assert_eq!(
        s.count_sandboxes_by_status().await.unwrap(),
        [(SandboxStatus::Paused, 1), (SandboxStatus::Running, 2)]
    );
    // A paused sandbox is not touched.
    assert!(!s.touch_sandbox("team-s1", "sb-a", now()).await.unwrap());

    assert!(!s
        .delete_sandbox("team-s2", "sb-a", a.version)
        .await
        .unwrap());
    assert!(!s
        .delete_sandbox("team-s1", "sb-a", a.version - 1)
        .await
        .unwrap());
    assert!(s
        .delete_sandbox("team-s1", "sb-a", a.version)
        .await
        .unwrap());
    assert!(s.get_sandbox("team-s1", "sb-a").await.unwrap().is_none());
    b.status = SandboxStatus::Paused;
    assert!(s.update_sandbox(&b).await.unwrap());
    let timed: Vec<String> = s
        .list_running_with_timeout()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(timed, ["sb-c"]);
}

/// A sandbox with an operation under way: stored and read back, not touched, not offered to
/// the reaper; found across teams by the reconciler's queries.
async fn intents(s: &dyn Store, host: &str) {
    s.create_account(&account("i1")).await.unwrap();
    let mut sb = sandbox("sb-i", "team-i1", host, 5);
    sb.last_active_at = Some(now() - Duration::seconds(60));
    sb.intent = Some(Intent {
        op: Operation::Pausing,
        owner: "cp-test".into(),
        since: now(),
    });
    s.insert_sandbox(&sb).await.unwrap();
    assert_eq!(s.get_sandbox("team-i1", "sb-i").await.unwrap().unwrap(), sb);
    assert_eq!(s.find_sandbox("sb-i").await.unwrap().unwrap(), sb);
    assert!(s.find_sandbox("sb-none").await.unwrap().is_none());
    assert!(!s.touch_sandbox("team-i1", "sb-i", now()).await.unwrap());
    let listed = |v: Vec<SandboxRecord>| v.into_iter().any(|x| x.id == "sb-i");
    assert!(!listed(s.list_running_with_timeout().await.unwrap()));
    assert!(listed(s.list_host_sandboxes(host).await.unwrap()));
    assert!(!listed(s.list_host_sandboxes("host-other").await.unwrap()));

    for op in Operation::ALL {
        sb.intent = Some(Intent {
            op,
            owner: "cp-test".into(),
            since: now(),
        });
        assert!(s.update_sandbox(&sb).await.unwrap());
        sb.version += 1;
        assert_eq!(s.find_sandbox("sb-i").await.unwrap().unwrap(), sb);
    }
    sb.intent = None;
    assert!(s.update_sandbox(&sb).await.unwrap());
    assert!(listed(s.list_running_with_timeout().await.unwrap()));
    assert!(s.touch_sandbox("team-i1", "sb-i", now()).await.unwrap());
}

/// Snapshot names held before the agent is called.
async fn reservations(s: &dyn Store, host: &str) {
    s.create_account(&account("r1")).await.unwrap();
    for id in ["sb-r1", "sb-r2", "sb-r3"] {
        s.insert_sandbox(&sandbox(id, "team-r1", host, 0))
            .await
            .unwrap();
    }
    let res = |sandbox: &str, name: &str, agent: &str, overwrite: bool| SnapshotReservation {
        team_id: "team-r1".into(),
        name: name.into(),
        agent_name: agent.into(),
        sandbox_id: sandbox.into(),
        host_id: host.into(),
        overwrite,
        created_at: now(),
    };
    let tpl = |name: &str, agent: &str| TemplateRecord {
        id: format!("tp-{agent}"),
        team_id: "team-r1".into(),
        name: name.into(),
        agent_name: agent.into(),
        host_id: host.into(),
        vcpus: 1,
        memory_mb: 512,
        size_bytes: 1,
        created_at: now(),
    };
    let first = res("sb-r1", "py", "t-r-1", false);
    s.reserve_snapshot(&first).await.unwrap();
    // A held name is held, with or without overwrite.
    for overwrite in [false, true] {
        assert!(matches!(
            s.reserve_snapshot(&res("sb-r2", "py", "t-r-2", overwrite))
                .await,
            Err(StoreError::Duplicate)
        ));
    }
    assert_eq!(
        s.snapshot_reservation("sb-r1").await.unwrap().unwrap(),
        first
    );
    assert!(s
        .host_template_names(host)
        .await
        .unwrap()
        .contains(&"t-r-1".to_string()));

    // Committing records the template, removes the sandbox and ends the reservation.
    assert_eq!(
        s.commit_snapshot(&tpl("py", "t-r-1"), "sb-r1")
            .await
            .unwrap(),
        None
    );
    assert!(s.snapshot_reservation("sb-r1").await.unwrap().is_none());
    assert!(s.get_sandbox("team-r1", "sb-r1").await.unwrap().is_none());
    assert!(s.get_template("team-r1", "py").await.unwrap().is_some());

    // An existing template's name is reserved only to overwrite it.
    assert!(matches!(
        s.reserve_snapshot(&res("sb-r2", "py", "t-r-2", false))
            .await,
        Err(StoreError::Duplicate)
    ));
    s.reserve_snapshot(&res("sb-r2", "py", "t-r-2", true))
        .await
        .unwrap();
    let old = s
        .commit_snapshot(&tpl("py", "t-r-2"), "sb-r2")
        .await
        .unwrap();
    assert_eq!(old.unwrap().agent_name, "t-r-1");
    let names = s.host_template_names(host).await.unwrap();
    assert!(names.contains(&"t-r-2".to_string()) && !names.contains(&"t-r-1".to_string()));

    // A name given up is free again.
    s.reserve_snapshot(&res("sb-r3", "node", "t-r-3", false))
        .await
        .unwrap();
    assert!(s.release_snapshot("team-r1", "node").await.unwrap());
    assert!(!s.release_snapshot("team-r1", "node").await.unwrap());
    assert!(s.snapshot_reservation("sb-r3").await.unwrap().is_none());
    s.reserve_snapshot(&res("sb-r3", "node", "t-r-4", false))
        .await
        .unwrap();
}

/// Leases for singleton work.
async fn leases(s: &dyn Store) {
    let minute = std::time::Duration::from_secs(60);
    assert!(s.try_lease("reconciler", "cp-a", minute).await.unwrap());
    // The holder renews; another waits for the end.
    assert!(s.try_lease("reconciler", "cp-a", minute).await.unwrap());
    assert!(!s.try_lease("reconciler", "cp-b", minute).await.unwrap());
    assert!(s.try_lease("other-work", "cp-b", minute).await.unwrap());
    // An expired lease goes to whoever asks next.
    assert!(s
        .try_lease("short", "cp-a", std::time::Duration::ZERO)
        .await
        .unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(s.try_lease("short", "cp-b", minute).await.unwrap());
    assert!(!s.try_lease("short", "cp-a", minute).await.unwrap());
}

async fn templates(s: &dyn Store, host: &str) {
    s.create_account(&account("t1")).await.unwrap();
    s.create_account(&account("t2")).await.unwrap();
    let tpl = |id: &str, team: &str, name: &str, agent: &str| TemplateRecord {
        id: id.into(),
        team_id: team.into(),
        name: name.into(),
        agent_name: agent.into(),
        host_id: host.into(),
        vcpus: 2,
        memory_mb: 1024,
        size_bytes: 12345,
        created_at: now(),
    };
    s.insert_sandbox(&sandbox("sb-t1", "team-t1", host, 0))
        .await
        .unwrap();
    let first = tpl("tp-1", "team-t1", "py", "t-agent-1");
    assert_eq!(s.commit_snapshot(&first, "sb-t1").await.unwrap(), None);
    assert!(s.get_sandbox("team-t1", "sb-t1").await.unwrap().is_none());
    assert_eq!(
        s.get_template("team-t1", "py").await.unwrap().unwrap(),
        first
    );
    assert!(s.get_template("team-t2", "py").await.unwrap().is_none());

    // The same name again: the row now points at the new agent name and the old record
    // comes back (so its agent template can be deleted).
    s.insert_sandbox(&sandbox("sb-t2", "team-t1", host, 0))
        .await
        .unwrap();
    let second = tpl("tp-2", "team-t1", "py", "t-agent-2");
    let old = s.commit_snapshot(&second, "sb-t2").await.unwrap();
    assert_eq!(old.unwrap().agent_name, "t-agent-1");
    let now_row = s.get_template("team-t1", "py").await.unwrap().unwrap();
    assert_eq!(now_row.agent_name, "t-agent-2");
    assert!(s.get_sandbox("team-t1", "sb-t2").await.unwrap().is_none());

    // Another team may use the same name.
    s.insert_sandbox(&sandbox("sb-t3", "team-t2", host, 0))
        .await
        .unwrap();
    s.commit_snapshot(&tpl("tp-3", "team-t2", "py", "t-agent-3"), "sb-t3")
        .await
        .unwrap();
    s.insert_sandbox(&sandbox("sb-t4", "team-t2", host, 0))
        .await
        .unwrap();
    s.commit_snapshot(&tpl("tp-4", "team-t2", "node", "t-agent-4"), "sb-t4")
        .await
        .unwrap();
    let names: Vec<String> = s
        .list_templates("team-t2")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["node", "py"]);
    assert_eq!(s.list_templates("team-t1").await.unwrap().len(), 1);

    assert!(s
        .delete_template("team-t1", "node")
        .await
        .unwrap()
        .is_none());
    let gone = s.delete_template("team-t2", "py").await.unwrap().unwrap();
    assert_eq!(gone.agent_name, "t-agent-3");
    assert!(s.get_template("team-t2", "py").await.unwrap().is_none());
    assert!(s.get_template("team-t1", "py").await.unwrap().is_some());
}

/// Every check, in order, against one store.
async fn suite(s: Arc<dyn Store>) {
    accounts(&*s).await;
    oauth(&*s).await;
    api_keys(&*s).await;
    let host = hosts(&*s).await;
    sandboxes(&*s, &host).await;
    metadata(&*s, &host).await;
    usage(&*s, &host).await;
    intents(&*s, &host).await;
    templates(&*s, &host).await;
    reservations(&*s, &host).await;
    leases(&*s).await;
    host_admin(&*s).await;
}

/// Drain flags and host removal: refused with sandboxes unless forced, which forgets them.
async fn host_admin(s: &dyn Store) {
    let h = HostRecord {
        id: "host-adm".into(),
        url: "sim://admin".into(),
        token: String::new(),
        status: HostStatus::Healthy,
        cpus: 0,
        total_memory_mb: 0,
        free_memory_mb: 0,
        running: 0,
        last_seen: None,
        created_at: now(),
        draining: false,
        cert_sha256: None,
    };
    s.upsert_host(&h).await.unwrap();
    assert!(s.set_host_draining("host-adm", true).await.unwrap());
    assert!(!s.set_host_draining("host-none", true).await.unwrap());
    let listed = s.list_hosts().await.unwrap();
    let adm = listed.iter().find(|h| h.id == "host-adm").unwrap();
    assert!(adm.draining);
    // Registering the url again keeps the flag.
    let again = s.upsert_host(&h).await.unwrap();
    assert!(again.draining);
    s.create_account(&account("adm")).await.unwrap();
    s.insert_sandbox(&sandbox("sb-adm", "team-adm", "host-adm", 0))
        .await
        .unwrap();
    assert_eq!(
        s.remove_host("host-adm", false).await.unwrap(),
        RemovedHost::HasSandboxes(1)
    );
    assert!(s.get_sandbox("team-adm", "sb-adm").await.unwrap().is_some());
    // Two snapshot templates made on it, one of them copied to another host.
    let other = HostRecord {
        id: "host-adm-2".into(),
        url: "sim://admin-2".into(),
        ..h.clone()
    };
    s.upsert_host(&other).await.unwrap();
    for (i, agent) in ["adm-kept", "adm-lost"].into_iter().enumerate() {
        s.insert_sandbox(&sandbox(&format!("sb-adm-t{i}"), "team-adm", "host-adm", 0))
            .await
            .unwrap();
        let t = TemplateRecord {
            id: format!("tp-{agent}"),
            team_id: "team-adm".into(),
            name: agent.into(),
            agent_name: agent.into(),
            host_id: "host-adm".into(),
            vcpus: 1,
            memory_mb: 256,
            size_bytes: 1,
            created_at: now(),
        };
        s.commit_snapshot(&t, &format!("sb-adm-t{i}"))
            .await
            .unwrap();
    }
    s.add_template_copy("adm-kept", "host-adm-2", now())
        .await
        .unwrap();
    assert_eq!(
        s.remove_host("host-adm", true).await.unwrap(),
        RemovedHost::Removed { sandboxes: 1 }
    );
    assert!(s.get_sandbox("team-adm", "sb-adm").await.unwrap().is_none());
    // The copied template lives on at its copy's host, which is now its own; the other went
    // with the host.
    let kept = s
        .get_template("team-adm", "adm-kept")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.host_id, "host-adm-2");
    assert!(s.template_copy_hosts("adm-kept").await.unwrap().is_empty());
    assert!(s
        .get_template("team-adm", "adm-lost")
        .await
        .unwrap()
        .is_none());
    assert!(!s
        .list_hosts()
        .await
        .unwrap()
        .iter()
        .any(|h| h.id == "host-adm"));
    assert_eq!(
        s.remove_host("host-adm", false).await.unwrap(),
        RemovedHost::NotFound
    );
}

#[tokio::test]
async fn sqlite_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrenn.db");
    let s = store::open(path.to_str().unwrap()).await.unwrap();
    assert!(s.single_writer());
    suite(s).await;
    // Reopening runs the migrations again without harm and keeps the data.
    let s = store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert!(s
        .user_by_email("alice@example.com")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn postgres_store_suite() {
    let pg = support::pg::PgServer::start();
    let url = pg.create_database("wrenn_suite").await;
    let s = store::open(&url).await.unwrap();
    assert!(!s.single_writer());
    suite(s.clone()).await;
    let s = store::open(&url).await.unwrap();
    assert!(s
        .user_by_email("alice@example.com")
        .await
        .unwrap()
        .is_some());
}
