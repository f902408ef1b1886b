//! What the storage suite shares (records to store) and its checks of capsule metadata and of
//! usage metering; `store_suite.rs` runs them with the others against each store.

use wrenn_server::store::{now, NewAccount, SandboxRecord, Store};
use wrenn_server::store::{DailyUsage, Held, MeteredSandbox, UsageCredit, UsagePass};
use wrenn_types::agent::SandboxStatus;

pub fn account(n: &str) -> NewAccount {
    NewAccount {
        user_id: format!("user-{n}"),
        team_id: format!("team-{n}"),
        team_name: format!("{n}'s team"),
        email: format!("{n}@example.com"),
        password_hash: Some(format!("hash-{n}")),
        created_at: now(),
    }
}

pub fn sandbox(id: &str, team: &str, host: &str, timeout: i64) -> SandboxRecord {
    let t = now();
    SandboxRecord {
        id: id.into(),
        team_id: team.into(),
        host_id: host.into(),
        status: SandboxStatus::Running,
        template: "minimal".into(),
        vcpus: 1,
        memory_mb: 512,
        timeout_sec: timeout,
        guest_ip: "172.16.0.2".into(),
        host_ip: "10.11.0.1".into(),
        created_at: t,
        started_at: Some(t),
        last_active_at: Some(t),
        last_updated: t,
        intent: None,
        version: 0,
    }
}
/// Capsule metadata: stored per sandbox, replaced on a second write, read per team (one
/// sandbox or all), gone with the sandbox's row.
pub async fn metadata(s: &dyn Store, host: &str) {
    s.insert_sandbox(&sandbox("sb-meta", "team-alice", host, 0))
        .await
        .unwrap();
    let one = s
        .sandbox_metadata("team-alice", Some("sb-meta"))
        .await
        .unwrap();
    assert!(one.is_empty());
    s.put_sandbox_metadata("sb-meta", r#"{"a":"1"}"#)
        .await
        .unwrap();
    s.put_sandbox_metadata("sb-meta", r#"{"a":"2"}"#)
        .await
        .unwrap();
    let want = vec![("sb-meta".to_string(), r#"{"a":"2"}"#.to_string())];
    let one = s
        .sandbox_metadata("team-alice", Some("sb-meta"))
        .await
        .unwrap();
    assert_eq!(one, want);
    let all = s.sandbox_metadata("team-alice", None).await.unwrap();
    assert_eq!(all, want);
    // Another team sees none of it.
    assert!(s
        .sandbox_metadata("team-octo", None)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .sandbox_metadata("team-octo", Some("sb-meta"))
        .await
        .unwrap()
        .is_empty());
    let cur = s
        .get_sandbox("team-alice", "sb-meta")
        .await
        .unwrap()
        .unwrap();
    assert!(s
        .delete_sandbox("team-alice", "sb-meta", cur.version)
        .await
        .unwrap());
    assert!(s
        .sandbox_metadata("team-alice", None)
        .await
        .unwrap()
        .is_empty());
}

/// Usage and stats rows: a meter pass adds to the team's days, sets and drops meters and keeps
/// each minute's most; daily usage reads the team's own days; held buckets take the most.
pub async fn usage(s: &dyn Store, host: &str) {
    let mut running = sandbox("sb-use", "team-alice", host, 0);
    running.vcpus = 2;
    s.insert_sandbox(&running).await.unwrap();
    let mut paused = sandbox("sb-use-p", "team-alice", host, 0);
    paused.status = SandboxStatus::Paused;
    s.insert_sandbox(&paused).await.unwrap();
    let ours = |all: Vec<MeteredSandbox>| -> Vec<(String, bool, i64, Option<i64>)> {
        all.into_iter()
            .filter(|m| m.id.starts_with("sb-use"))
            .map(|m| (m.id, m.running, m.vcpus, m.metered_to_ms))
            .collect()
    };
    // Running ones only, until a paused one has a meter.
    let seen = ours(s.metered_sandboxes().await.unwrap());
    assert_eq!(seen, vec![("sb-use".to_string(), true, 2, None)]);

    let credit = |day: &str, cpu_ms: i64, ram_mb_ms: i64| UsageCredit {
        team_id: "team-alice".into(),
        day: day.into(),
        cpu_ms,
        ram_mb_ms,
    };
    let held = |running: i64, vcpus: i64, memory_mb: i64| Held {
        running,
        vcpus,
        memory_mb,
    };
    // The start of a minute.
    let minute: i64 = 30_000_000 * 60_000;
    s.record_usage(&UsagePass {
        credits: vec![credit("2026-03-01", 10, 100), credit("2026-03-02", 5, 50)],
        meters: vec![("sb-use".into(), 1000), ("sb-use-p".into(), 900)],
        unmeter: vec![],
        samples: vec![("team-alice".into(), held(1, 2, 512))],
        minute_ms: minute,
        prune_before_ms: 0,
    })
    .await
    .unwrap();
    let mut seen = ours(s.metered_sandboxes().await.unwrap());
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("sb-use".to_string(), true, 2, Some(1000)),
            ("sb-use-p".to_string(), false, 1, Some(900)),
        ]
    );
    // A second pass adds to a day, moves and drops meters; a smaller sample in the same
    // minute lowers nothing.
    s.record_usage(&UsagePass {
        credits: vec![credit("2026-03-02", 5, 50)],
        meters: vec![("sb-use".into(), 2000)],
        unmeter: vec!["sb-use-p".into()],
        samples: vec![("team-alice".into(), held(1, 1, 1024))],
        minute_ms: minute,
        prune_before_ms: 0,
    })
    .await
    .unwrap();
    let seen = ours(s.metered_sandboxes().await.unwrap());
    assert_eq!(seen, vec![("sb-use".to_string(), true, 2, Some(2000))]);
    let day = |d: &str, cpu_ms: i64, ram_mb_ms: i64| DailyUsage {
        day: d.into(),
        cpu_ms,
        ram_mb_ms,
    };
    assert_eq!(
        s.daily_usage("team-alice", "2026-02-01", "2026-03-31")
            .await
            .unwrap(),
        vec![day("2026-03-01", 10, 100), day("2026-03-02", 10, 100)]
    );
    assert_eq!(
        s.daily_usage("team-alice", "2026-03-02", "2026-03-02")
            .await
            .unwrap(),
        vec![day("2026-03-02", 10, 100)]
    );
    assert!(s
        .daily_usage("team-octo", "2026-01-01", "2026-12-31")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.team_held("team-alice", minute - 60_000, 60_000)
            .await
            .unwrap(),
        vec![(1, held(1, 2, 1024))]
    );
    // The next minute holds more; a wide bucket takes the most of both; pruning drops the
    // first minute.
    s.record_usage(&UsagePass {
        samples: vec![("team-alice".into(), held(3, 3, 768))],
        minute_ms: minute + 60_000,
        ..UsagePass::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.team_held("team-alice", minute, 600_000).await.unwrap(),
        vec![(0, held(3, 3, 1024))]
    );
    assert!(s
        .team_held("team-octo", 0, 600_000)
        .await
        .unwrap()
        .is_empty());
    s.record_usage(&UsagePass {
        prune_before_ms: minute + 1,
        ..UsagePass::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.team_held("team-alice", minute, 60_000).await.unwrap(),
        vec![(1, held(3, 3, 768))]
    );
    for id in ["sb-use", "sb-use-p"] {
        let cur = s.get_sandbox("team-alice", id).await.unwrap().unwrap();
        assert!(s
            .delete_sandbox("team-alice", id, cur.version)
            .await
            .unwrap());
    }
    assert!(ours(s.metered_sandboxes().await.unwrap()).is_empty());
}
