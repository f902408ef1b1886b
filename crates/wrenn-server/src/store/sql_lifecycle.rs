//! The SQL of sandbox and template rows, snapshot reservations and leases, shared by both
//! backends like [`super::sql`]: one macro that defines, for a given sqlx database, a module
//! `lifecycle` of functions over a pool, which `impl_store!` calls from its `Store` methods.
//! Sandbox writes are compare-and-set on the row's `version`.

macro_rules! lifecycle_queries {
    ($db:ty) => {
        mod lifecycle {
        use sqlx::{FromRow as _, Row as _};
        use chrono::{DateTime, Utc};
        use $crate::store::{
            Intent, SandboxRecord, SnapshotReservation, StoreError, TemplateRecord,
        };

        type Pool = sqlx::Pool<$db>;
        type DbRow = <$db as sqlx::Database>::Row;

        const SANDBOX_COLS: &str = "id, team_id, host_id, status, template, vcpus, memory_mb, \
             timeout_sec, guest_ip, host_ip, created_at, started_at, last_active_at, last_updated, \
             op, op_owner, op_started_at, version";
        // The columns of templates and reservations are named as the fields of
        // `TemplateRecord` and `SnapshotReservation`, which `FromRow` maps by name.
        const TEMPLATE_COLS: &str =
            "id, team_id, name, agent_name, host_id, vcpus, memory_mb, size_bytes, created_at";
        const RESERVATION_COLS: &str =
            "team_id, name, agent_name, sandbox_id, host_id, overwrite, created_at";

        const DELETE_RESERVATION: &str =
            "DELETE FROM snapshot_reservations WHERE team_id = $1 AND name = $2";

        fn sandbox_row(r: &DbRow) -> Result<SandboxRecord, StoreError> {
            let status: String = r.try_get(3)?;
            let last_updated: DateTime<Utc> = r.try_get(13)?;
            let op: Option<String> = r.try_get(14)?;
            let owner: Option<String> = r.try_get(15)?;
            let since: Option<DateTime<Utc>> = r.try_get(16)?;
            let intent = match op {
                Some(op) => Some(Intent {
                    op: $crate::store::parse_operation(&op)?,
                    owner: owner.unwrap_or_default(),
                    since: since.unwrap_or(last_updated),
                }),
                None => None,
            };
            Ok(SandboxRecord {
                id: r.try_get(0)?,
                team_id: r.try_get(1)?,
                host_id: r.try_get(2)?,
                status: $crate::store::parse_status(&status)?,
                template: r.try_get(4)?,
                vcpus: r.try_get(5)?,
                memory_mb: r.try_get(6)?,
                timeout_sec: r.try_get(7)?,
                guest_ip: r.try_get(8)?,
                host_ip: r.try_get(9)?,
                created_at: r.try_get(10)?,
                started_at: r.try_get(11)?,
                last_active_at: r.try_get(12)?,
                last_updated,
                intent,
                version: r.try_get(17)?,
            })
        }

        /// A template or a reservation from its row: the mapping is the struct's own
        /// (`sqlx::FromRow`, by column name), the same for both databases.
        fn template_row(r: &DbRow) -> Result<TemplateRecord, StoreError> {
            Ok(TemplateRecord::from_row(r)?)
        }

        fn reservation_row(r: &DbRow) -> Result<SnapshotReservation, StoreError> {
            Ok(SnapshotReservation::from_row(r)?)
        }

        /// The row of `sql` (whose `$1` is a team id and `$2` a key within the team: a sandbox
        /// id or a template name) mapped by `map`: the one shape of every lookup by team and key.
        async fn by_team_key<'e, T>(
            ex: impl sqlx::Executor<'e, Database = $db>,
            sql: &str,
            team_id: &str,
            key: &str,
            map: fn(&DbRow) -> Result<T, StoreError>,
        ) -> Result<Option<T>, StoreError> {
            let row = sqlx::query(sql).bind(team_id).bind(key).fetch_optional(ex).await?;
            row.as_ref().map(map).transpose()
        }

        /// Runs `sql` with a team id as `$1` and a key within the team as `$2`: whether it
        /// touched a row.
        async fn exec_team_key<'e>(
            ex: impl sqlx::Executor<'e, Database = $db>,
            sql: &str,
            team_id: &str,
            key: &str,
        ) -> Result<bool, StoreError> {
            let r = sqlx::query(sql).bind(team_id).bind(key).execute(ex).await?;
            Ok(r.rows_affected() > 0)
        }

        async fn sandboxes_where(
            pool: &Pool,
            clause: &str,
            arg: Option<&str>,
        ) -> Result<Vec<SandboxRecord>, StoreError> {
            let q = format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE {clause}");
            let mut query = sqlx::query(&q);
            if let Some(a) = arg {
                query = query.bind(a);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(sandbox_row).collect()
        }

        pub async fn insert_sandbox<'e>(
            ex: impl sqlx::Executor<'e, Database = $db>,
            s: &SandboxRecord,
        ) -> Result<(), StoreError> {
            let q = format!(
                "INSERT INTO sandboxes ({SANDBOX_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
            );
            sqlx::query(&q)
                .bind(&s.id)
                .bind(&s.team_id)
                .bind(&s.host_id)
                .bind(s.status.as_str())
                .bind(&s.template)
                .bind(s.vcpus)
                .bind(s.memory_mb)
                .bind(s.timeout_sec)
                .bind(&s.guest_ip)
                .bind(&s.host_ip)
                .bind(s.created_at)
                .bind(s.started_at)
                .bind(s.last_active_at)
                .bind(s.last_updated)
                .bind(s.intent.as_ref().map(|i| i.op.as_str()))
                .bind(s.intent.as_ref().map(|i| i.owner.as_str()))
                .bind(s.intent.as_ref().map(|i| i.since))
                .bind(s.version)
                .execute(ex)
                .await?;
            Ok(())
        }

        pub async fn get_sandbox(
            pool: &Pool,
            team_id: &str,
            id: &str,
        ) -> Result<Option<SandboxRecord>, StoreError> {
            let q = format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND id = $2");
            by_team_key(pool, &q, team_id, id, sandbox_row).await
        }

        pub async fn find_sandbox(
            pool: &Pool,
            id: &str,
        ) -> Result<Option<SandboxRecord>, StoreError> {
            Ok(sandboxes_where(pool, "id = $1", Some(id)).await?.pop())
        }

        pub async fn list_sandboxes(
            pool: &Pool,
            team_id: &str,
        ) -> Result<Vec<SandboxRecord>, StoreError> {
            sandboxes_where(pool, "team_id = $1 ORDER BY created_at, id", Some(team_id)).await
        }

        pub async fn list_host_sandboxes(
            pool: &Pool,
            host_id: &str,
        ) -> Result<Vec<SandboxRecord>, StoreError> {
            sandboxes_where(pool, "host_id = $1 ORDER BY created_at, id", Some(host_id)).await
        }

        pub async fn list_running_with_timeout(
            pool: &Pool,
        ) -> Result<Vec<SandboxRecord>, StoreError> {
            sandboxes_where(
                pool,
                "status = 'running' AND timeout_sec > 0 AND op IS NULL",
                None,
            )
            .await
        }

        pub async fn update_sandbox<'e>(
            ex: impl sqlx::Executor<'e, Database = $db>,
            s: &SandboxRecord,
        ) -> Result<bool, StoreError> {
            let r = sqlx::query(
                "UPDATE sandboxes SET status = $1, guest_ip = $2, host_ip = $3, started_at = $4, \
                 last_active_at = $5, last_updated = $6, op = $7, op_owner = $8, \
                 op_started_at = $9, version = version + 1 \
                 WHERE id = $10 AND team_id = $11 AND version = $12",
            )
            .bind(s.status.as_str())
            .bind(&s.guest_ip)
            .bind(&s.host_ip)
            .bind(s.started_at)
            .bind(s.last_active_at)
            .bind(s.last_updated)
            .bind(s.intent.as_ref().map(|i| i.op.as_str()))
            .bind(s.intent.as_ref().map(|i| i.owner.as_str()))
            .bind(s.intent.as_ref().map(|i| i.since))
            .bind(&s.id)
            .bind(&s.team_id)
            .bind(s.version)
            .execute(ex)
            .await?;
            Ok(r.rows_affected() > 0)
        }

        pub async fn touch_sandbox(
            pool: &Pool,
            team_id: &str,
            id: &str,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            let r = sqlx::query(
                "UPDATE sandboxes SET last_active_at = $1, last_updated = $1, \
                 version = version + 1 \
                 WHERE team_id = $2 AND id = $3 AND status = 'running' AND op IS NULL",
            )
            .bind(at)
            .bind(team_id)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(r.rows_affected() > 0)
        }

        pub async fn delete_sandbox(
            pool: &Pool,
            team_id: &str,
            id: &str,
            version: i64,
        ) -> Result<bool, StoreError> {
            let r = sqlx::query(
                "DELETE FROM sandboxes WHERE team_id = $1 AND id = $2 AND version = $3",
            )
            .bind(team_id)
            .bind(id)
            .bind(version)
            .execute(pool)
            .await?;
            Ok(r.rows_affected() > 0)
        }

        pub async fn count_sandboxes_by_status(
            pool: &Pool,
        ) -> Result<Vec<(wrenn_types::agent::SandboxStatus, i64)>, StoreError> {
            let rows = sqlx::query(
                "SELECT status, COUNT(*) FROM sandboxes GROUP BY status ORDER BY status",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let status: String = r.try_get(0)?;
                    let n: i64 = r.try_get(1)?;
                    Ok(($crate::store::parse_status(&status)?, n))
                })
                .collect()
        }

        pub async fn get_template(
            pool: &Pool,
            team_id: &str,
            name: &str,
        ) -> Result<Option<TemplateRecord>, StoreError> {
            let q =
                format!("SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = $1 AND name = $2");
            by_team_key(pool, &q, team_id, name, template_row).await
        }

        pub async fn list_templates(
            pool: &Pool,
            team_id: &str,
        ) -> Result<Vec<TemplateRecord>, StoreError> {
            let q = format!("SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = $1 ORDER BY name");
            let rows = sqlx::query(&q).bind(team_id).fetch_all(pool).await?;
            rows.iter().map(template_row).collect()
        }

        pub async fn reserve_snapshot(
            pool: &Pool,
            r: &SnapshotReservation,
            max_templates: i64,
        ) -> Result<(), StoreError> {
            // Each transaction writes first: a SQLite transaction that reads first cannot
            // take the write lock once another writer has committed, and fails at once.
            // The first write is the team's admission lock (`quota`).
            let mut tx = pool.begin().await?;
            super::quota::lock_team(&mut tx, &r.team_id).await?;
            let q = format!(
                "INSERT INTO snapshot_reservations ({RESERVATION_COLS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            );
            sqlx::query(&q)
                .bind(&r.team_id)
                .bind(&r.name)
                .bind(&r.agent_name)
                .bind(&r.sandbox_id)
                .bind(&r.host_id)
                .bind(r.overwrite)
                .bind(r.created_at)
                .execute(&mut *tx)
                .await?;
            if !r.overwrite {
                let taken = sqlx::query("SELECT id FROM templates WHERE team_id = $1 AND name = $2")
                    .bind(&r.team_id)
                    .bind(&r.name)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Err(StoreError::Duplicate);
                }
            }
            super::quota::check_templates(&mut tx, r, max_templates).await?;
            tx.commit().await?;
            Ok(())
        }

        pub async fn snapshot_reservation(
            pool: &Pool,
            sandbox_id: &str,
        ) -> Result<Option<SnapshotReservation>, StoreError> {
            let q = format!(
                "SELECT {RESERVATION_COLS} FROM snapshot_reservations WHERE sandbox_id = $1"
            );
            let row = sqlx::query(&q).bind(sandbox_id).fetch_optional(pool).await?;
            row.as_ref().map(reservation_row).transpose()
        }

        pub async fn release_snapshot(
            pool: &Pool,
            team_id: &str,
            name: &str,
        ) -> Result<bool, StoreError> {
            exec_team_key(pool, DELETE_RESERVATION, team_id, name).await
        }

        pub async fn commit_snapshot(
            pool: &Pool,
            t: &TemplateRecord,
            sandbox_id: &str,
        ) -> Result<Option<TemplateRecord>, StoreError> {
            let mut tx = pool.begin().await?;
            // A write first (see reserve_snapshot).
            exec_team_key(&mut *tx, DELETE_RESERVATION, &t.team_id, &t.name).await?;
            let q = format!("SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = $1 AND name = $2");
            let old = by_team_key(&mut *tx, &q, &t.team_id, &t.name, template_row).await?;
            match &old {
                Some(o) => {
                    sqlx::query(
                        "UPDATE templates SET agent_name = $1, host_id = $2, vcpus = $3, \
                         memory_mb = $4, size_bytes = $5, created_at = $6 WHERE id = $7",
                    )
                    .bind(&t.agent_name)
                    .bind(&t.host_id)
                    .bind(t.vcpus)
                    .bind(t.memory_mb)
                    .bind(t.size_bytes)
                    .bind(t.created_at)
                    .bind(&o.id)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    let q = format!(
                        "INSERT INTO templates ({TEMPLATE_COLS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    );
                    sqlx::query(&q)
                        .bind(&t.id)
                        .bind(&t.team_id)
                        .bind(&t.name)
                        .bind(&t.agent_name)
                        .bind(&t.host_id)
                        .bind(t.vcpus)
                        .bind(t.memory_mb)
                        .bind(t.size_bytes)
                        .bind(t.created_at)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let q = "DELETE FROM sandboxes WHERE team_id = $1 AND id = $2";
            exec_team_key(&mut *tx, q, &t.team_id, sandbox_id).await?;
            tx.commit().await?;
            Ok(old)
        }

        pub async fn delete_template(
            pool: &Pool,
            team_id: &str,
            name: &str,
        ) -> Result<Option<TemplateRecord>, StoreError> {
            let q = format!(
                "DELETE FROM templates WHERE team_id = $1 AND name = $2 RETURNING {TEMPLATE_COLS}"
            );
            by_team_key(pool, &q, team_id, name, template_row).await
        }

        pub async fn host_template_names(
            pool: &Pool,
            host_id: &str,
        ) -> Result<Vec<String>, StoreError> {
            let rows = sqlx::query(
                "SELECT agent_name FROM templates WHERE host_id = $1 \
                 UNION ALL SELECT agent_name FROM snapshot_reservations WHERE host_id = $1 \
                 UNION ALL SELECT c.agent_name FROM template_copies c \
                 JOIN templates t ON t.agent_name = c.agent_name WHERE c.host_id = $1",
            )
            .bind(host_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
        }

        pub async fn try_lease(
            pool: &Pool,
            name: &str,
            holder: &str,
            ttl: std::time::Duration,
        ) -> Result<bool, StoreError> {
            let now_ms = Utc::now().timestamp_millis();
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
            let r = sqlx::query(
                "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms \
                 WHERE leases.holder = excluded.holder OR leases.expires_ms < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(now_ms.saturating_add(ttl_ms))
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(r.rows_affected() > 0)
        }
        }
    };
}

pub(crate) use lifecycle_queries;
