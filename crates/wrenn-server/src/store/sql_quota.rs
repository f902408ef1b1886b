//! Admission against the per-team quotas ([`crate::config::Quotas`]), shared by both
//! backends like [`super::sql`]: one macro that defines, for a given sqlx database, a module
//! `quota` of transactions that count a team's usage and write the new row only if the team
//! stays within its quotas.
//!
//! Atomicity: each transaction first bumps the team's `admissions` counter. That write is
//! the team's admission lock: on PostgreSQL it locks the team's row until the transaction
//! ends (and, at READ COMMITTED, the count that follows sees every admission committed
//! before the lock was granted); on SQLite it takes the database's write lock. So two
//! admissions of one team run one after the other and cannot both pass on the same count.

macro_rules! quota_queries {
    ($db:ty) => {
        mod quota {
        use sqlx::Row as _;
        use $crate::config::Quotas;
        use $crate::store::{QuotaExceeded, SandboxRecord, SnapshotReservation, StoreError};

        type Pool = sqlx::Pool<$db>;
        type Conn = <$db as sqlx::Database>::Connection;

        /// Takes the team's admission lock until the transaction ends.
        pub async fn lock_team(conn: &mut Conn, team_id: &str) -> Result<(), StoreError> {
            sqlx::query("UPDATE teams SET admissions = admissions + 1 WHERE id = $1")
                .bind(team_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// What a team's sandboxes hold: those pending or running, or being created or
        /// resumed (all but `except`).
        struct Usage {
            running: i64,
            vcpus: i64,
            memory_mb: i64,
            creating: i64,
        }

        async fn usage(conn: &mut Conn, team_id: &str, except: &str) -> Result<Usage, StoreError> {
            let r = sqlx::query(
                "SELECT COUNT(*), CAST(COALESCE(SUM(vcpus), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(CASE WHEN op = 'creating' THEN 1 ELSE 0 END), 0) AS BIGINT) \
                 FROM sandboxes WHERE team_id = $1 AND id <> $2 \
                 AND (status IN ('pending', 'running') OR op IN ('creating', 'resuming'))",
            )
            .bind(team_id)
            .bind(except)
            .fetch_one(&mut *conn)
            .await?;
            Ok(Usage {
                running: r.try_get(0)?,
                vcpus: r.try_get(1)?,
                memory_mb: r.try_get(2)?,
                creating: r.try_get(3)?,
            })
        }

        /// Whether `sb` fits beside `u`; a create also needs a free create slot.
        fn admit(u: &Usage, sb: &SandboxRecord, q: &Quotas, create: bool) -> Result<(), StoreError> {
            let over = if create && u.creating >= q.concurrent_creates {
                Some(QuotaExceeded::ConcurrentCreates(q.concurrent_creates))
            } else if u.running >= q.running_sandboxes {
                Some(QuotaExceeded::RunningSandboxes(q.running_sandboxes))
            } else if u.vcpus.saturating_add(sb.vcpus) > q.vcpus {
                Some(QuotaExceeded::Vcpus(q.vcpus))
            } else if u.memory_mb.saturating_add(sb.memory_mb) > q.memory_mb {
                Some(QuotaExceeded::MemoryMb(q.memory_mb))
            } else {
                None
            };
            over.map_or(Ok(()), |o| Err(StoreError::OverQuota(o)))
        }

        pub async fn insert_sandbox_within(
            pool: &Pool,
            sb: &SandboxRecord,
            q: &Quotas,
        ) -> Result<(), StoreError> {
            let mut tx = pool.begin().await?;
            lock_team(&mut tx, &sb.team_id).await?;
            let u = usage(&mut tx, &sb.team_id, &sb.id).await?;
            admit(&u, sb, q, true)?;
            super::lifecycle::insert_sandbox(&mut *tx, sb).await?;
            tx.commit().await?;
            Ok(())
        }

        pub async fn update_sandbox_within(
            pool: &Pool,
            sb: &SandboxRecord,
            q: &Quotas,
        ) -> Result<bool, StoreError> {
            let mut tx = pool.begin().await?;
            lock_team(&mut tx, &sb.team_id).await?;
            let u = usage(&mut tx, &sb.team_id, &sb.id).await?;
            admit(&u, sb, q, false)?;
            let written = super::lifecycle::update_sandbox(&mut *tx, sb).await?;
            tx.commit().await?;
            Ok(written)
        }

        /// Refuses the reservation `r` (already written in the transaction) when the team's
        /// templates and reserved names number more than `max`.
        pub async fn check_templates(
            conn: &mut Conn,
            r: &SnapshotReservation,
            max: i64,
        ) -> Result<(), StoreError> {
            let row = sqlx::query(
                "SELECT COUNT(*) FROM (SELECT name FROM templates WHERE team_id = $1 \
                 UNION SELECT name FROM snapshot_reservations WHERE team_id = $1) AS names",
            )
            .bind(&r.team_id)
            .fetch_one(&mut *conn)
            .await?;
            let n: i64 = row.try_get(0)?;
            if n > max {
                return Err(StoreError::OverQuota(QuotaExceeded::Templates(max)));
            }
            Ok(())
        }
        }
    };
}

pub(crate) use quota_queries;
