//! The records of host joining: one-time join tokens (only their hash) and what a token's
//! use says. The rules are `app::host_join`'s, the SQL [`super::sql_join`]'s.

use chrono::{DateTime, Utc};

/// A join token as stored: never the token itself, only the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    /// Hex SHA-256 of the token's secret.
    pub token_hash: String,
    /// The host whose credentials a rotation replaces; `None` for a new host.
    pub host_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What spending a join token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinTokenSpend {
    /// Spent now; the host it rotates (`None`: a new host).
    Spent { host_id: Option<String> },
    /// No token with that hash.
    Unknown,
    /// Already used.
    Used,
    /// Past its expiry.
    Expired,
}
