//! The SQL of host joining ([`super::host_join`]), shared by both backends like
//! [`super::sql`]: one macro that defines, for a given sqlx database, a module `join`.
//! Spending a token is one conditional `UPDATE`, so of two joins with one token exactly one
//! wins.

macro_rules! join_queries {
    ($db:ty) => {
        mod join {
            use chrono::{DateTime, Utc};
            use sqlx::Row as _;
            use $crate::store::{JoinTokenRecord, JoinTokenSpend, StoreError};

            type Pool = sqlx::Pool<$db>;

            pub async fn insert_token(pool: &Pool, t: &JoinTokenRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO host_join_tokens \
                 (id, token_hash, host_id, expires_at, used_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&t.id)
                .bind(&t.token_hash)
                .bind(&t.host_id)
                .bind(t.expires_at)
                .bind(t.used_at)
                .bind(t.created_at)
                .execute(pool)
                .await?;
                Ok(())
            }

            pub async fn list_tokens(pool: &Pool) -> Result<Vec<JoinTokenRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, token_hash, host_id, expires_at, used_at, created_at \
                 FROM host_join_tokens ORDER BY created_at, id",
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(JoinTokenRecord {
                            id: r.try_get(0)?,
                            token_hash: r.try_get(1)?,
                            host_id: r.try_get(2)?,
                            expires_at: r.try_get(3)?,
                            used_at: r.try_get(4)?,
                            created_at: r.try_get(5)?,
                        })
                    })
                    .collect()
            }

            pub async fn spend_token(
                pool: &Pool,
                token_hash: &str,
                at: DateTime<Utc>,
            ) -> Result<JoinTokenSpend, StoreError> {
                let spent = sqlx::query(
                    "UPDATE host_join_tokens SET used_at = $2 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                 RETURNING host_id",
                )
                .bind(token_hash)
                .bind(at)
                .fetch_optional(pool)
                .await?;
                if let Some(r) = spent {
                    return Ok(JoinTokenSpend::Spent {
                        host_id: r.try_get(0)?,
                    });
                }
                let row = sqlx::query("SELECT used_at FROM host_join_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(pool)
                    .await?;
                Ok(match row {
                    None => JoinTokenSpend::Unknown,
                    Some(r) => {
                        let used: Option<DateTime<Utc>> = r.try_get(0)?;
                        if used.is_some() {
                            JoinTokenSpend::Used
                        } else {
                            JoinTokenSpend::Expired
                        }
                    }
                })
            }

            /// Records a joined host: a rotation updates host `rotated`'s url and certificate
            /// (`None` if it is gone); a new host is inserted with `new_id`, or, when a host
            /// already has that url, that host gets the certificate. Returns the host's id.
            pub async fn record_host(
                pool: &Pool,
                rotated: Option<&str>,
                new_id: &str,
                url: &str,
                cert_sha256: &str,
                at: DateTime<Utc>,
            ) -> Result<Option<String>, StoreError> {
                if let Some(id) = rotated {
                    let done =
                        sqlx::query("UPDATE hosts SET url = $2, cert_sha256 = $3 WHERE id = $1")
                            .bind(id)
                            .bind(url)
                            .bind(cert_sha256)
                            .execute(pool)
                            .await?;
                    return Ok((done.rows_affected() == 1).then(|| id.to_string()));
                }
                let row = sqlx::query(
                    "INSERT INTO hosts (id, url, token, status, created_at, cert_sha256) \
                 VALUES ($1, $2, '', 'unreachable', $3, $4) \
                 ON CONFLICT (url) DO UPDATE SET cert_sha256 = excluded.cert_sha256 \
                 RETURNING id",
                )
                .bind(new_id)
                .bind(url)
                .bind(at)
                .bind(cert_sha256)
                .fetch_one(pool)
                .await?;
                Ok(Some(row.try_get(0)?))
            }
        }
    };
}

pub(crate) use join_queries;
