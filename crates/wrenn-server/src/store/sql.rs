//! The SQL shared by both backends: one macro that implements [`super::Store`] for a store
//! type holding a `pool` of the given sqlx database. The statements use only the common
//! subset of SQLite and PostgreSQL (`$N` placeholders, `ON CONFLICT`, `RETURNING`), so the
//! two implementations cannot drift apart. Connection setup and migrations are not here.
//! Accounts, keys and hosts are written here; sandboxes, templates, reservations and leases
//! in [`super::sql_lifecycle`], whose functions the `Store` methods call.

macro_rules! impl_store {
    ($store:ident, $db:ty, single_writer = $single:expr) => {
        mod sql_impl {
        use super::$store;
        $crate::store::sql_lifecycle::lifecycle_queries!($db);
        $crate::store::sql_quota::quota_queries!($db);
        $crate::store::sql_usage::usage_queries!($db);
        $crate::store::sql_copies::copy_queries!($db);
        $crate::store::sql_hosts::host_queries!($db);
        const USER_COLS: &str = "u.id, u.email, u.password_hash, u.team_id, u.created_at";
        const KEY_COLS: &str =
            "id, team_id, name, key_hash, key_prefix, created_by, created_at, last_used";
        const HOST_COLS: &str = "id, url, token, status, cpus, total_memory_mb, free_memory_mb, \
             running, last_seen, created_at, draining, cert_sha256";

        type DbRow = <$db as sqlx::Database>::Row;
        use sqlx::Row as _;
        use $crate::store::{
            ApiKeyRecord, HostCapacity, HostRecord, HostStatus, NewAccount, SandboxRecord,
            SnapshotReservation, StoreError, TeamRecord, TemplateRecord, UserRecord,
        };
        use chrono::{DateTime, Utc};

        fn user_row(r: &DbRow) -> Result<UserRecord, StoreError> {
            Ok(UserRecord {
                id: r.try_get(0)?,
                email: r.try_get(1)?,
                password_hash: r.try_get(2)?,
                team_id: r.try_get(3)?,
                created_at: r.try_get(4)?,
            })
        }

        fn key_row(r: &DbRow) -> Result<ApiKeyRecord, StoreError> {
            Ok(ApiKeyRecord {
                id: r.try_get(0)?,
                team_id: r.try_get(1)?,
                name: r.try_get(2)?,
                key_hash: r.try_get(3)?,
                key_prefix: r.try_get(4)?,
                created_by: r.try_get(5)?,
                created_at: r.try_get(6)?,
                last_used: r.try_get(7)?,
            })
        }

        fn host_row(r: &DbRow) -> Result<HostRecord, StoreError> {
            Ok(HostRecord {
                id: r.try_get(0)?,
                url: r.try_get(1)?,
                token: r.try_get(2)?,
                status: $crate::store::parse_host_status(r.try_get(3)?)?,
                cpus: r.try_get(4)?,
                total_memory_mb: r.try_get(5)?,
                free_memory_mb: r.try_get(6)?,
                running: r.try_get(7)?,
                last_seen: r.try_get(8)?,
                created_at: r.try_get(9)?,
                draining: r.try_get(10)?,
                cert_sha256: r.try_get(11)?,
            })
        }



        async fn insert_team_and_user(
            tx: &mut sqlx::Transaction<'_, $db>,
            a: &NewAccount,
        ) -> Result<(), StoreError> {
            sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(&a.team_id)
                .bind(&a.team_name)
                .bind(a.created_at)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, team_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&a.user_id)
            .bind(&a.email)
            .bind(&a.password_hash)
            .bind(&a.team_id)
            .bind(a.created_at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        $crate::store::sql_join::join_queries!($db);

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn create_account(&self, a: &NewAccount) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                insert_team_and_user(&mut tx, a).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_oauth_account(
                &self,
                a: &NewAccount,
                provider: &str,
                provider_user_id: &str,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                insert_team_and_user(&mut tx, a).await?;
                sqlx::query(
                    "INSERT INTO oauth_identities (provider, provider_user_id, user_id, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(provider)
                .bind(provider_user_id)
                .bind(&a.user_id)
                .bind(a.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
                let q = format!("SELECT {USER_COLS} FROM users u WHERE u.email = $1");
                let row = sqlx::query(&q).bind(email).fetch_optional(&self.pool).await?;
                row.as_ref().map(user_row).transpose()
            }

            async fn insert_join_token(
                &self,
                token: &$crate::store::JoinTokenRecord,
            ) -> Result<(), StoreError> {
                join::insert_token(&self.pool, token).await
            }

            async fn list_join_tokens(
                &self,
            ) -> Result<Vec<$crate::store::JoinTokenRecord>, StoreError> {
                join::list_tokens(&self.pool).await
            }

            async fn spend_join_token(
                &self,
                token_hash: &str,
                at: DateTime<Utc>,
            ) -> Result<$crate::store::JoinTokenSpend, StoreError> {
                join::spend_token(&self.pool, token_hash, at).await
            }

            async fn record_joined_host(
                &self,
                rotated: Option<&str>,
                new_id: &str,
                url: &str,
                cert_sha256: &str,
                at: DateTime<Utc>,
            ) -> Result<Option<String>, StoreError> {
                join::record_host(&self.pool, rotated, new_id, url, cert_sha256, at).await
            }

            async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
                let q = format!("SELECT {USER_COLS} FROM users u WHERE u.id = $1");
                let row = sqlx::query(&q).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(user_row).transpose()
            }

            async fn user_by_oauth(
                &self,
                provider: &str,
                provider_user_id: &str,
            ) -> Result<Option<UserRecord>, StoreError> {
                let q = format!(
                    "SELECT {USER_COLS} FROM users u JOIN oauth_identities o ON o.user_id = u.id \
                     WHERE o.provider = $1 AND o.provider_user_id = $2"
                );
                let row = sqlx::query(&q)
                    .bind(provider)
                    .bind(provider_user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(user_row).transpose()
            }

            async fn team(&self, id: &str) -> Result<Option<TeamRecord>, StoreError> {
                let row = sqlx::query("SELECT id, name, created_at FROM teams WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| {
                    Ok(TeamRecord {
                        id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        created_at: r.try_get(2)?,
                    })
                })
                .transpose()
            }

            async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
                let q = format!(
                    "INSERT INTO api_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                );
                sqlx::query(&q)
                    .bind(&k.id)
                    .bind(&k.team_id)
                    .bind(&k.name)
                    .bind(&k.key_hash)
                    .bind(&k.key_prefix)
                    .bind(&k.created_by)
                    .bind(k.created_at)
                    .bind(k.last_used)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn list_api_keys(&self, team_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
                let q = format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE team_id = $1 ORDER BY created_at, id"
                );
                let rows = sqlx::query(&q).bind(team_id).fetch_all(&self.pool).await?;
                rows.iter().map(key_row).collect()
            }

            async fn delete_api_key(&self, team_id: &str, id: &str) -> Result<bool, StoreError> {
                let r = sqlx::query("DELETE FROM api_keys WHERE team_id = $1 AND id = $2")
                    .bind(team_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn api_key_by_hash(
                &self,
                key_hash: &str,
            ) -> Result<Option<ApiKeyRecord>, StoreError> {
                let q = format!("SELECT {KEY_COLS} FROM api_keys WHERE key_hash = $1");
                let row = sqlx::query(&q).bind(key_hash).fetch_optional(&self.pool).await?;
                row.as_ref().map(key_row).transpose()
            }

            async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query("UPDATE api_keys SET last_used = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn upsert_host(&self, h: &HostRecord) -> Result<HostRecord, StoreError> {
                // The pin is a join's to set: a registered host gets none.
                let q = format!(
                    "INSERT INTO hosts ({HOST_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL) \
                     ON CONFLICT (url) DO UPDATE SET token = excluded.token, status = excluded.status \
                     RETURNING {HOST_COLS}"
                );
                let row = sqlx::query(&q)
                    .bind(&h.id)
                    .bind(&h.url)
                    .bind(&h.token)
                    .bind(h.status.as_str())
                    .bind(h.cpus)
                    .bind(h.total_memory_mb)
                    .bind(h.free_memory_mb)
                    .bind(h.running)
                    .bind(h.last_seen)
                    .bind(h.created_at)
                    .bind(h.draining)
                    .fetch_one(&self.pool)
                    .await?;
                host_row(&row)
            }

            async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
                let q = format!("SELECT {HOST_COLS} FROM hosts ORDER BY created_at, id");
                let rows = sqlx::query(&q).fetch_all(&self.pool).await?;
                rows.iter().map(host_row).collect()
            }

            async fn update_host_health(
                &self,
                id: &str,
                status: HostStatus,
                capacity: Option<HostCapacity>,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                match capacity {
                    Some(c) => {
                        sqlx::query(
                            "UPDATE hosts SET status = $1, cpus = $2, total_memory_mb = $3, \
                             free_memory_mb = $4, running = $5, last_seen = $6 WHERE id = $7",
                        )
                        .bind(status.as_str())
                        .bind(c.cpus)
                        .bind(c.total_memory_mb)
                        .bind(c.free_memory_mb)
                        .bind(c.running)
                        .bind(at)
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                    }
                    None => {
                        sqlx::query("UPDATE hosts SET status = $1 WHERE id = $2")
                            .bind(status.as_str())
                            .bind(id)
                            .execute(&self.pool)
                            .await?;
                    }
                }
                Ok(())
            }

            async fn set_host_draining(&self, id: &str, draining: bool) -> Result<bool, StoreError> {
                host_admin::set_draining(&self.pool, id, draining).await
            }

            async fn remove_host(
                &self,
                id: &str,
                force: bool,
            ) -> Result<$crate::store::RemovedHost, StoreError> {
                host_admin::remove(&self.pool, id, force).await
            }

            async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
                lifecycle::insert_sandbox(&self.pool, s).await
            }

            async fn insert_sandbox_within(
                &self,
                s: &SandboxRecord,
                q: &$crate::config::Quotas,
            ) -> Result<(), StoreError> {
                quota::insert_sandbox_within(&self.pool, s, q).await
            }

            async fn update_sandbox_within(
                &self,
                s: &SandboxRecord,
                q: &$crate::config::Quotas,
            ) -> Result<bool, StoreError> {
                quota::update_sandbox_within(&self.pool, s, q).await
            }

            async fn get_sandbox(
                &self,
                team_id: &str,
                id: &str,
            ) -> Result<Option<SandboxRecord>, StoreError> {
                lifecycle::get_sandbox(&self.pool, team_id, id).await
            }

            async fn put_sandbox_metadata(
                &self,
                sandbox_id: &str,
                json: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO sandbox_metadata (sandbox_id, metadata) VALUES ($1, $2) \
                     ON CONFLICT (sandbox_id) DO UPDATE SET metadata = excluded.metadata",
                )
                .bind(sandbox_id)
                .bind(json)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn sandbox_metadata(
                &self,
                team_id: &str,
                sandbox_id: Option<&str>,
            ) -> Result<Vec<(String, String)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT m.sandbox_id, m.metadata FROM sandbox_metadata m \
                     JOIN sandboxes s ON s.id = m.sandbox_id \
                     WHERE s.team_id = $1 AND ($2 IS NULL OR m.sandbox_id = $2)",
                )
                .bind(team_id)
                .bind(sandbox_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            }

            async fn list_sandboxes(&self, team_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
                lifecycle::list_sandboxes(&self.pool, team_id).await
            }

            async fn update_sandbox(&self, s: &SandboxRecord) -> Result<bool, StoreError> {
                lifecycle::update_sandbox(&self.pool, s).await
            }

            async fn touch_sandbox(
                &self,
                team_id: &str,
                id: &str,
                at: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                lifecycle::touch_sandbox(&self.pool, team_id, id, at).await
            }

            async fn delete_sandbox(
                &self,
                team_id: &str,
                id: &str,
                version: i64,
            ) -> Result<bool, StoreError> {
                lifecycle::delete_sandbox(&self.pool, team_id, id, version).await
            }

            async fn list_running_with_timeout(&self) -> Result<Vec<SandboxRecord>, StoreError> {
                lifecycle::list_running_with_timeout(&self.pool).await
            }

            async fn count_sandboxes_by_status(
                &self,
            ) -> Result<Vec<(wrenn_types::agent::SandboxStatus, i64)>, StoreError> {
                lifecycle::count_sandboxes_by_status(&self.pool).await
            }

            async fn find_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
                lifecycle::find_sandbox(&self.pool, id).await
            }

            async fn list_host_sandboxes(
                &self,
                host_id: &str,
            ) -> Result<Vec<SandboxRecord>, StoreError> {
                lifecycle::list_host_sandboxes(&self.pool, host_id).await
            }

            async fn get_template(
                &self,
                team_id: &str,
                name: &str,
            ) -> Result<Option<TemplateRecord>, StoreError> {
                lifecycle::get_template(&self.pool, team_id, name).await
            }

            async fn list_templates(&self, team_id: &str) -> Result<Vec<TemplateRecord>, StoreError> {
                lifecycle::list_templates(&self.pool, team_id).await
            }

            async fn reserve_snapshot(&self, r: &SnapshotReservation) -> Result<(), StoreError> {
                lifecycle::reserve_snapshot(&self.pool, r, i64::MAX).await
            }

            async fn reserve_snapshot_within(
                &self,
                r: &SnapshotReservation,
                max_templates: i64,
            ) -> Result<(), StoreError> {
                lifecycle::reserve_snapshot(&self.pool, r, max_templates).await
            }

            async fn snapshot_reservation(
                &self,
                sandbox_id: &str,
            ) -> Result<Option<SnapshotReservation>, StoreError> {
                lifecycle::snapshot_reservation(&self.pool, sandbox_id).await
            }

            async fn release_snapshot(&self, team_id: &str, name: &str) -> Result<bool, StoreError> {
                lifecycle::release_snapshot(&self.pool, team_id, name).await
            }

            async fn commit_snapshot(
                &self,
                t: &TemplateRecord,
                sandbox_id: &str,
            ) -> Result<Option<TemplateRecord>, StoreError> {
                lifecycle::commit_snapshot(&self.pool, t, sandbox_id).await
            }

            async fn delete_template(
                &self,
                team_id: &str,
                name: &str,
            ) -> Result<Option<TemplateRecord>, StoreError> {
                lifecycle::delete_template(&self.pool, team_id, name).await
            }

            async fn host_template_names(&self, host_id: &str) -> Result<Vec<String>, StoreError> {
                lifecycle::host_template_names(&self.pool, host_id).await
            }

            async fn add_template_copy(
                &self,
                agent_name: &str,
                host_id: &str,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                copies::add(&self.pool, agent_name, host_id, at).await
            }

            async fn template_copy_hosts(&self, agent_name: &str) -> Result<Vec<String>, StoreError> {
                copies::hosts(&self.pool, agent_name).await
            }

            async fn forget_template_copies(&self, agent_name: &str) -> Result<(), StoreError> {
                copies::forget(&self.pool, agent_name).await
            }

            async fn try_lease(
                &self,
                name: &str,
                holder: &str,
                ttl: std::time::Duration,
            ) -> Result<bool, StoreError> {
                lifecycle::try_lease(&self.pool, name, holder, ttl).await
            }

            fn single_writer(&self) -> bool {
                $single
            }

            async fn metered_sandboxes(
                &self,
            ) -> Result<Vec<$crate::store::MeteredSandbox>, StoreError> {
                usage::metered_sandboxes(&self.pool).await
            }

            async fn record_usage(
                &self,
                pass: &$crate::store::UsagePass,
            ) -> Result<(), StoreError> {
                usage::record_usage(&self.pool, pass).await
            }

            async fn daily_usage(
                &self,
                team_id: &str,
                from: &str,
                to: &str,
            ) -> Result<Vec<$crate::store::DailyUsage>, StoreError> {
                usage::daily_usage(&self.pool, team_id, from, to).await
            }

            async fn team_held(
                &self,
                team_id: &str,
                since_ms: i64,
                step_ms: i64,
            ) -> Result<Vec<(i64, $crate::store::Held)>, StoreError> {
                usage::team_held(&self.pool, team_id, since_ms, step_ms).await
            }
        }
        }
    };
}

pub(crate) use impl_store;
