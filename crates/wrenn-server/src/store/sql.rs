//! The SQL shared by both backends: one macro that implements [`super::Store`] for a store
//! type holding a `pool` of the given sqlx database. The statements use only the common
//! subset of SQLite and PostgreSQL (`$N` placeholders, `ON CONFLICT`, `RETURNING`), so the
//! two implementations cannot drift apart. Connection setup and migrations are not here.

macro_rules! impl_store {
    ($store:ident, $db:ty) => {
        mod sql_impl {
        use super::$store;
        const SANDBOX_COLS: &str = "id, team_id, host_id, status, template, vcpus, memory_mb, \
             timeout_sec, guest_ip, host_ip, created_at, started_at, last_active_at, last_updated";
        const USER_COLS: &str = "u.id, u.email, u.password_hash, u.team_id, u.created_at";
        const KEY_COLS: &str =
            "id, team_id, name, key_hash, key_prefix, created_by, created_at, last_used";
        const HOST_COLS: &str = "id, url, token, status, cpus, total_memory_mb, free_memory_mb, \
             running, last_seen, created_at";
        const TEMPLATE_COLS: &str =
            "id, team_id, name, agent_name, host_id, vcpus, memory_mb, size_bytes, created_at";

        type DbRow = <$db as sqlx::Database>::Row;
        use sqlx::Row as _;
        use $crate::store::{
            ApiKeyRecord, HostCapacity, HostRecord, NewAccount, SandboxRecord, StoreError,
            TeamRecord, TemplateRecord, UserRecord,
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
                status: r.try_get(3)?,
                cpus: r.try_get(4)?,
                total_memory_mb: r.try_get(5)?,
                free_memory_mb: r.try_get(6)?,
                running: r.try_get(7)?,
                last_seen: r.try_get(8)?,
                created_at: r.try_get(9)?,
            })
        }

        fn sandbox_row(r: &DbRow) -> Result<SandboxRecord, StoreError> {
            let status: String = r.try_get(3)?;
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
                last_updated: r.try_get(13)?,
            })
        }

        fn template_row(r: &DbRow) -> Result<TemplateRecord, StoreError> {
            Ok(TemplateRecord {
                id: r.try_get(0)?,
                team_id: r.try_get(1)?,
                name: r.try_get(2)?,
                agent_name: r.try_get(3)?,
                host_id: r.try_get(4)?,
                vcpus: r.try_get(5)?,
                memory_mb: r.try_get(6)?,
                size_bytes: r.try_get(7)?,
                created_at: r.try_get(8)?,
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
                let q = format!(
                    "INSERT INTO hosts ({HOST_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (url) DO UPDATE SET token = excluded.token, status = excluded.status \
                     RETURNING {HOST_COLS}"
                );
                let row = sqlx::query(&q)
                    .bind(&h.id)
                    .bind(&h.url)
                    .bind(&h.token)
                    .bind(&h.status)
                    .bind(h.cpus)
                    .bind(h.total_memory_mb)
                    .bind(h.free_memory_mb)
                    .bind(h.running)
                    .bind(h.last_seen)
                    .bind(h.created_at)
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
                status: &str,
                capacity: Option<HostCapacity>,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                match capacity {
                    Some(c) => {
                        sqlx::query(
                            "UPDATE hosts SET status = $1, cpus = $2, total_memory_mb = $3, \
                             free_memory_mb = $4, running = $5, last_seen = $6 WHERE id = $7",
                        )
                        .bind(status)
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
                            .bind(status)
                            .bind(id)
                            .execute(&self.pool)
                            .await?;
                    }
                }
                Ok(())
            }

            async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
                let q = format!(
                    "INSERT INTO sandboxes ({SANDBOX_COLS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
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
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_sandbox(
                &self,
                team_id: &str,
                id: &str,
            ) -> Result<Option<SandboxRecord>, StoreError> {
                let q = format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND id = $2");
                let row = sqlx::query(&q)
                    .bind(team_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(sandbox_row).transpose()
            }

            async fn list_sandboxes(&self, team_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
                let q = format!(
                    "SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 ORDER BY created_at, id"
                );
                let rows = sqlx::query(&q).bind(team_id).fetch_all(&self.pool).await?;
                rows.iter().map(sandbox_row).collect()
            }

            async fn update_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE sandboxes SET status = $1, guest_ip = $2, host_ip = $3, started_at = $4, \
                     last_active_at = $5, last_updated = $6 WHERE id = $7 AND team_id = $8",
                )
                .bind(s.status.as_str())
                .bind(&s.guest_ip)
                .bind(&s.host_ip)
                .bind(s.started_at)
                .bind(s.last_active_at)
                .bind(s.last_updated)
                .bind(&s.id)
                .bind(&s.team_id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn touch_sandbox(
                &self,
                team_id: &str,
                id: &str,
                at: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "UPDATE sandboxes SET last_active_at = $1, last_updated = $1 \
                     WHERE team_id = $2 AND id = $3 AND status = 'running'",
                )
                .bind(at)
                .bind(team_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn delete_sandbox(&self, team_id: &str, id: &str) -> Result<bool, StoreError> {
                let r = sqlx::query("DELETE FROM sandboxes WHERE team_id = $1 AND id = $2")
                    .bind(team_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn list_running_with_timeout(&self) -> Result<Vec<SandboxRecord>, StoreError> {
                let q = format!(
                    "SELECT {SANDBOX_COLS} FROM sandboxes WHERE status = 'running' AND timeout_sec > 0"
                );
                let rows = sqlx::query(&q).fetch_all(&self.pool).await?;
                rows.iter().map(sandbox_row).collect()
            }

            async fn count_sandboxes_by_status(
                &self,
            ) -> Result<Vec<(wrenn_types::agent::SandboxStatus, i64)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT status, COUNT(*) FROM sandboxes GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let status: String = r.try_get(0)?;
                        let n: i64 = r.try_get(1)?;
                        Ok(($crate::store::parse_status(&status)?, n))
                    })
                    .collect()
            }

            async fn get_template(
                &self,
                team_id: &str,
                name: &str,
            ) -> Result<Option<TemplateRecord>, StoreError> {
                let q = format!(
                    "SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = $1 AND name = $2"
                );
                let row = sqlx::query(&q)
                    .bind(team_id)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(template_row).transpose()
            }

            async fn list_templates(&self, team_id: &str) -> Result<Vec<TemplateRecord>, StoreError> {
                let q = format!(
                    "SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = $1 ORDER BY name"
                );
                let rows = sqlx::query(&q).bind(team_id).fetch_all(&self.pool).await?;
                rows.iter().map(template_row).collect()
            }

            async fn commit_snapshot(
                &self,
                t: &TemplateRecord,
                sandbox_id: &str,
                overwrite: bool,
            ) -> Result<Option<TemplateRecord>, StoreError> {
                let mut tx = self.pool.begin().await?;
                let q = format!(
                    "SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = $1 AND name = $2"
                );
                let old = sqlx::query(&q)
                    .bind(&t.team_id)
                    .bind(&t.name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let old = old.as_ref().map(template_row).transpose()?;
                match &old {
                    Some(_) if !overwrite => return Err(StoreError::Duplicate),
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
                sqlx::query("DELETE FROM sandboxes WHERE team_id = $1 AND id = $2")
                    .bind(&t.team_id)
                    .bind(sandbox_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(old)
            }

            async fn delete_template(
                &self,
                team_id: &str,
                name: &str,
            ) -> Result<Option<TemplateRecord>, StoreError> {
                let q = format!(
                    "DELETE FROM templates WHERE team_id = $1 AND name = $2 RETURNING {TEMPLATE_COLS}"
                );
                let row = sqlx::query(&q)
                    .bind(team_id)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(template_row).transpose()
            }
        }
        }
    };
}

pub(crate) use impl_store;
