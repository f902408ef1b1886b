//! Leadership of the singleton background work: the idle reaper and the reconciler run on one
//! control plane at a time. On PostgreSQL the leader is whoever holds a session-level
//! advisory lock ([`LOCK_KEY`]) on a dedicated connection, outside the pool: a server that
//! dies (or is dropped) closes that connection, PostgreSQL releases the lock, and another
//! server, trying every [`TRY_EVERY`], takes it within seconds. The leader checks its
//! connection as often and stops leading as soon as it fails. SQLite has one control plane
//! per file: it always leads. No consensus of our own: PostgreSQL is the source of truth.

use sqlx::Connection as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

/// The advisory lock's key ("WRENN" in ASCII).
pub const LOCK_KEY: i64 = 0x57_52_45_4E_4E;
/// How often a follower tries the lock and the leader checks its connection.
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// How long one statement on the lock's connection may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether this control plane leads, and how many leader-only passes it ran.
#[derive(Debug, Default)]
pub struct Leader {
    leading: AtomicBool,
    /// Whether leadership is fixed (SQLite: always leading).
    fixed: bool,
    reaper_passes: AtomicU64,
    reconcile_passes: AtomicU64,
}

impl Leader {
    /// A leader for a store: SQLite (`single_writer`) leads from the start and for good.
    pub fn new(single_writer: bool) -> Self {
        Leader {
            leading: AtomicBool::new(single_writer),
            fixed: single_writer,
            reaper_passes: AtomicU64::new(0),
            reconcile_passes: AtomicU64::new(0),
        }
    }

    /// Whether this control plane runs the reaper and the reconciler now.
    pub fn leads(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Counts a reaper pass run as leader.
    pub(crate) fn count_reaper_pass(&self) {
        self.reaper_passes.fetch_add(1, Ordering::Relaxed);
    }

    /// Reaper passes this control plane ran as leader.
    pub fn reaper_passes(&self) -> u64 {
        self.reaper_passes.load(Ordering::Relaxed)
    }

    /// Counts a background reconciler pass run as leader.
    pub(crate) fn count_reconcile_pass(&self) {
        self.reconcile_passes.fetch_add(1, Ordering::Relaxed);
    }

    /// Background reconciler passes this control plane ran as leader (not `reconcile_now`).
    pub fn reconcile_passes(&self) -> u64 {
        self.reconcile_passes.load(Ordering::Relaxed)
    }

    fn set(&self, leading: bool) {
        if self.leading.swap(leading, Ordering::AcqRel) != leading {
            if leading {
                tracing::info!("this control plane now leads: it runs the reaper and reconciler");
            } else {
                tracing::warn!("this control plane no longer leads (its lock connection failed)");
            }
        }
    }
}

/// Holds or seeks the advisory lock on `database_url` (PostgreSQL) until `app` is gone;
/// returns at once for a fixed leader (SQLite).
pub async fn run(app: Weak<crate::app::App>, database_url: String) {
    let leader_fixed = match app.upgrade() {
        Some(a) => a.leader.fixed,
        None => return,
    };
    if leader_fixed {
        return;
    }
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        let Some(a) = app.upgrade() else { return };
        let leader = &a.leader;
        if conn.is_none() {
            match tokio::time::timeout(
                STATEMENT_TIMEOUT,
                sqlx::PgConnection::connect(&database_url),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => tracing::warn!(error = %e, "leader lock: cannot connect"),
                Err(_) => tracing::warn!("leader lock: connecting timed out"),
            }
        }
        if let Some(c) = conn.as_mut() {
            let step = if leader.leads() {
                // Still ours while the connection lives.
                tokio::time::timeout(
                    STATEMENT_TIMEOUT,
                    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *c),
                )
                .await
                .map(|r| r.map(|_| true))
            } else {
                tokio::time::timeout(
                    STATEMENT_TIMEOUT,
                    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(LOCK_KEY)
                        .fetch_one(&mut *c),
                )
                .await
            };
            match step {
                Ok(Ok(held)) => leader.set(held),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader lock: the connection failed");
                    leader.set(false);
                    conn = None;
                }
                Err(_) => {
                    tracing::warn!("leader lock: the connection stopped answering");
                    leader.set(false);
                    conn = None;
                }
            }
        } else {
            leader.set(false);
        }
        drop(a);
        tokio::time::sleep(TRY_EVERY).await;
    }
}
