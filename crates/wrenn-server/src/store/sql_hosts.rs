//! Host administration queries shared by both backends like [`super::sql`]: one macro that
//! defines, for a given sqlx database, a module `host_admin` with the drain flag and the
//! removal of a host (refused while sandboxes are placed on it unless forced; a forced
//! removal forgets the host's sandboxes, snapshot reservations and the templates no other
//! host holds a copy of, in one transaction; a template copied elsewhere moves to its copy).

macro_rules! host_queries {
    ($db:ty) => {
        mod host_admin {
            use sqlx::Row as _;
            use $crate::store::{RemovedHost, StoreError};

            type Pool = sqlx::Pool<$db>;

            /// Sets a host's drain flag; false if there is no such host.
            pub async fn set_draining(
                pool: &Pool,
                id: &str,
                draining: bool,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE hosts SET draining = $1 WHERE id = $2")
                    .bind(draining)
                    .bind(id)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            /// Removes a host (see the module doc).
            pub async fn remove(
                pool: &Pool,
                id: &str,
                force: bool,
            ) -> Result<RemovedHost, StoreError> {
                let mut tx = pool.begin().await?;
                let known: Option<String> = sqlx::query("SELECT id FROM hosts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                if known.is_none() {
                    return Ok(RemovedHost::NotFound);
                }
                let sandboxes: i64 =
                    sqlx::query("SELECT COUNT(*) FROM sandboxes WHERE host_id = $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                if sandboxes > 0 && !force {
                    return Ok(RemovedHost::HasSandboxes(sandboxes));
                }
                for q in [
                    "DELETE FROM sandboxes WHERE host_id = $1",
                    "DELETE FROM snapshot_reservations WHERE host_id = $1",
                    // A template with a copy on another host lives on there: the oldest copy
                    // becomes its home (and is no longer a copy).
                    "UPDATE templates SET host_id = (SELECT c.host_id FROM template_copies c \
                     WHERE c.agent_name = templates.agent_name AND c.host_id <> $1 \
                     ORDER BY c.created_at, c.host_id LIMIT 1) \
                     WHERE host_id = $1 AND EXISTS (SELECT 1 FROM template_copies c \
                     WHERE c.agent_name = templates.agent_name AND c.host_id <> $1)",
                    "DELETE FROM template_copies WHERE host_id = $1 OR EXISTS (SELECT 1 \
                     FROM templates t WHERE t.agent_name = template_copies.agent_name \
                     AND t.host_id = template_copies.host_id)",
                    "DELETE FROM templates WHERE host_id = $1",
                    "DELETE FROM hosts WHERE id = $1",
                ] {
                    sqlx::query(q).bind(id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(RemovedHost::Removed { sandboxes })
            }
        }
    };
}
pub(crate) use host_queries;
