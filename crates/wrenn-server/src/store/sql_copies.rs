//! Template copy queries shared by both backends like [`super::sql`]: one macro that defines,
//! for a given sqlx database, a module `copies` with the hosts holding a copy of a snapshot
//! template (`template_copies`, migration 0008). Only copies of a template that still exists
//! count (the queries join `templates`), so a row left by a deleted or replaced template
//! names nothing.

macro_rules! copy_queries {
    ($db:ty) => {
        mod copies {
            use chrono::{DateTime, Utc};
            use sqlx::Row as _;
            use $crate::store::StoreError;

            type Pool = sqlx::Pool<$db>;

            /// Records that `host_id` holds a published copy of the template `agent_name`.
            pub async fn add(
                pool: &Pool,
                agent_name: &str,
                host_id: &str,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO template_copies (agent_name, host_id, created_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (agent_name, host_id) DO NOTHING",
                )
                .bind(agent_name)
                .bind(host_id)
                .bind(at)
                .execute(pool)
                .await?;
                Ok(())
            }

            /// The hosts holding a copy of the template `agent_name` (not its own host), by id.
            pub async fn hosts(pool: &Pool, agent_name: &str) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT c.host_id FROM template_copies c \
                 JOIN templates t ON t.agent_name = c.agent_name \
                 WHERE c.agent_name = $1 AND c.host_id <> t.host_id ORDER BY c.host_id",
                )
                .bind(agent_name)
                .fetch_all(pool)
                .await?;
                rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
            }

            /// Forgets every copy of the template `agent_name`.
            pub async fn forget(pool: &Pool, agent_name: &str) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM template_copies WHERE agent_name = $1")
                    .bind(agent_name)
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use copy_queries;
