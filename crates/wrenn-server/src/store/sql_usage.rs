//! The SQL of usage metering and team stats ([`super::usage`]), shared by both backends like
//! [`super::sql`]: one macro that defines, for a given sqlx database, a module `usage`. A
//! meter pass is one transaction, so a crash leaves either all of its credits and meters or
//! none of them. Statements stay in the common subset of SQLite and PostgreSQL (integer
//! division, `MAX`, `ON CONFLICT`).

macro_rules! usage_queries {
    ($db:ty) => {
        mod usage {
        use sqlx::Row as _;
        use chrono::{DateTime, Utc};
        use $crate::store::{DailyUsage, Held, MeteredSandbox, StoreError, UsagePass};

        type Pool = sqlx::Pool<$db>;

        pub async fn metered_sandboxes(pool: &Pool) -> Result<Vec<MeteredSandbox>, StoreError> {
            let rows = sqlx::query(
                "SELECT s.id, s.team_id, s.status, s.vcpus, s.memory_mb, s.started_at, \
                 s.last_updated, m.metered_to_ms FROM sandboxes s \
                 LEFT JOIN usage_meters m ON m.sandbox_id = s.id \
                 WHERE s.status = 'running' OR m.sandbox_id IS NOT NULL",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let status: String = r.try_get(2)?;
                    let started: Option<DateTime<Utc>> = r.try_get(5)?;
                    let updated: DateTime<Utc> = r.try_get(6)?;
                    Ok(MeteredSandbox {
                        id: r.try_get(0)?,
                        team_id: r.try_get(1)?,
                        running: status == "running",
                        vcpus: r.try_get(3)?,
                        memory_mb: r.try_get(4)?,
                        started_ms: started.map(|t| t.timestamp_millis()),
                        last_updated_ms: updated.timestamp_millis(),
                        metered_to_ms: r.try_get(7)?,
                    })
                })
                .collect()
        }

        pub async fn record_usage(pool: &Pool, pass: &UsagePass) -> Result<(), StoreError> {
            let mut tx = pool.begin().await?;
            for c in &pass.credits {
                sqlx::query(
                    "INSERT INTO usage_daily (team_id, day, cpu_ms, ram_mb_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (team_id, day) DO UPDATE SET \
                     cpu_ms = usage_daily.cpu_ms + excluded.cpu_ms, \
                     ram_mb_ms = usage_daily.ram_mb_ms + excluded.ram_mb_ms",
                )
                .bind(&c.team_id)
                .bind(&c.day)
                .bind(c.cpu_ms)
                .bind(c.ram_mb_ms)
                .execute(&mut *tx)
                .await?;
            }
            for (id, to) in &pass.meters {
                sqlx::query(
                    "INSERT INTO usage_meters (sandbox_id, metered_to_ms) VALUES ($1, $2) \
                     ON CONFLICT (sandbox_id) DO UPDATE SET metered_to_ms = excluded.metered_to_ms",
                )
                .bind(id)
                .bind(*to)
                .execute(&mut *tx)
                .await?;
            }
            for id in &pass.unmeter {
                sqlx::query("DELETE FROM usage_meters WHERE sandbox_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            // Meters of sandboxes whose rows are gone (destroyed between two passes).
            sqlx::query(
                "DELETE FROM usage_meters WHERE sandbox_id NOT IN (SELECT id FROM sandboxes)",
            )
            .execute(&mut *tx)
            .await?;
            for (team, h) in &pass.samples {
                sqlx::query(
                    "INSERT INTO team_samples (team_id, minute_ms, running, vcpus, memory_mb) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (team_id, minute_ms) DO UPDATE SET \
                     running = CASE WHEN excluded.running > team_samples.running \
                       THEN excluded.running ELSE team_samples.running END, \
                     vcpus = CASE WHEN excluded.vcpus > team_samples.vcpus \
                       THEN excluded.vcpus ELSE team_samples.vcpus END, \
                     memory_mb = CASE WHEN excluded.memory_mb > team_samples.memory_mb \
                       THEN excluded.memory_mb ELSE team_samples.memory_mb END",
                )
                .bind(team)
                .bind(pass.minute_ms)
                .bind(h.running)
                .bind(h.vcpus)
                .bind(h.memory_mb)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM team_samples WHERE minute_ms < $1")
                .bind(pass.prune_before_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }

        pub async fn daily_usage(
            pool: &Pool,
            team_id: &str,
            from: &str,
            to: &str,
        ) -> Result<Vec<DailyUsage>, StoreError> {
            let rows = sqlx::query(
                "SELECT day, cpu_ms, ram_mb_ms FROM usage_daily \
                 WHERE team_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
            )
            .bind(team_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(DailyUsage {
                        day: r.try_get(0)?,
                        cpu_ms: r.try_get(1)?,
                        ram_mb_ms: r.try_get(2)?,
                    })
                })
                .collect()
        }

        pub async fn team_held(
            pool: &Pool,
            team_id: &str,
            since_ms: i64,
            step_ms: i64,
        ) -> Result<Vec<(i64, Held)>, StoreError> {
            let rows = sqlx::query(
                "SELECT CAST((minute_ms - $2) / $3 AS BIGINT) AS bucket, \
                 CAST(MAX(running) AS BIGINT), CAST(MAX(vcpus) AS BIGINT), \
                 CAST(MAX(memory_mb) AS BIGINT) FROM team_samples \
                 WHERE team_id = $1 AND minute_ms >= $2 GROUP BY bucket ORDER BY bucket",
            )
            .bind(team_id)
            .bind(since_ms)
            .bind(step_ms.max(1))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        Held {
                            running: r.try_get(1)?,
                            vcpus: r.try_get(2)?,
                            memory_mb: r.try_get(3)?,
                        },
                    ))
                })
                .collect()
        }
        }
    };
}

pub(crate) use usage_queries;
