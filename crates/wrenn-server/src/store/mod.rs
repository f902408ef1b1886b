//! Persistent state of the control plane: teams, users, OAuth identities, API keys, hosts,
//! sandbox records and snapshot templates, behind one async [`Store`] trait.
//!
//! Two implementations share the same SQL text (written in the common subset of SQLite and
//! PostgreSQL, `$N` placeholders, runtime-bound queries only): [`sqlite::SqliteStore`] (the
//! default, one file in the data directory) and [`postgres::PgStore`]. Each backend has its own
//! migrations folder (`migrations/sqlite`, `migrations/postgres`). This module knows nothing of
//! HTTP, hosts or agents; every user-visible query is scoped by team (the reconciler's queries
//! across teams say so in their names).
//!
//! Sandbox rows are written compare-and-set: every write bumps [`SandboxRecord::version`] and
//! only succeeds on the version the writer read, so two writers (an operation, the reaper, the
//! reconciler, another control plane) never overwrite each other unseen.

pub mod postgres;
mod sql;
mod sql_copies;
mod sql_hosts;
mod sql_lifecycle;
mod sql_quota;
mod sql_usage;
pub mod sqlite;
mod usage;

use crate::config::Quotas;
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use std::sync::Arc;
use wrenn_types::agent::SandboxStatus;

mod host_join;
mod hosts;
mod sql_join;
pub use host_join::{JoinTokenRecord, JoinTokenSpend};
pub(crate) use hosts::parse_host_status;
pub use hosts::{HostCapacity, HostRecord, HostStatus, RemovedHost};
pub use usage::{DailyUsage, Held, MeteredSandbox, UsageCredit, UsagePass};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was violated (e.g. an email or a template name already taken).
    #[error("a record with the same unique key already exists")]
    Duplicate,
    /// The database URL is neither a SQLite path/URL nor `postgres://`.
    #[error("unsupported database URL (expected sqlite: or postgres://)")]
    UnsupportedUrl,
    /// A value read from the database does not have the expected shape.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error (connection, I/O, syntax).
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// Admitting the row would take the team over one of its quotas; nothing was written.
    #[error("team quota exceeded: {0}")]
    OverQuota(QuotaExceeded),
}

/// Which per-team limit ([`crate::config::Quotas`]) an admission would exceed, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    RunningSandboxes(i64),
    Vcpus(i64),
    MemoryMb(i64),
    Templates(i64),
    ConcurrentCreates(i64),
    /// Execs, exec streams and attaches at once on one sandbox (counted by the control
    /// plane, not the store: `app::exec_slots`).
    ExecsPerSandbox(i64),
    /// The same across a team's sandboxes.
    ExecsPerTeam(i64),
}

impl std::fmt::Display for QuotaExceeded {
    /// Names the limit, as the tenant is told it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RunningSandboxes(n) => write!(f, "at most {n} running sandboxes per team"),
            Self::Vcpus(n) => write!(f, "at most {n} vCPUs in running sandboxes per team"),
            Self::MemoryMb(n) => {
                write!(f, "at most {n} MiB of memory in running sandboxes per team")
            }
            Self::Templates(n) => write!(f, "at most {n} snapshot templates per team"),
            Self::ConcurrentCreates(n) => {
                write!(f, "at most {n} sandbox creates under way at once per team")
            }
            Self::ExecsPerSandbox(n) => {
                write!(f, "at most {n} execs and streams at once per sandbox")
            }
            Self::ExecsPerTeam(n) => write!(f, "at most {n} execs and streams at once per team"),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e {
            if d.is_unique_violation() {
                return StoreError::Duplicate;
            }
        }
        StoreError::Db(e)
    }
}

/// The current time at the precision both backends keep (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A team; every user-visible row belongs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRecord {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A user account. `password_hash` is `None` for accounts created through OAuth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    /// Always lowercase.
    pub email: String,
    pub password_hash: Option<String>,
    pub team_id: String,
    pub created_at: DateTime<Utc>,
}

/// Everything needed to create a user together with their own team.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub user_id: String,
    pub team_id: String,
    pub team_name: String,
    /// Must already be lowercase.
    pub email: String,
    pub password_hash: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An API key; only the SHA-256 of the key is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub team_id: String,
    pub name: String,
    /// Lowercase hex SHA-256 of the full key.
    pub key_hash: String,
    pub key_prefix: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
}

/// A lifecycle operation under way on a sandbox. It is recorded (as the sandbox's
/// [`Intent`]) before the host agent is called and cleared when the result is recorded, so an
/// operation cut short by a crash is found and settled afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Creating,
    Pausing,
    Resuming,
    Snapshotting,
    Destroying,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 5] = [
        Self::Creating,
        Self::Pausing,
        Self::Resuming,
        Self::Snapshotting,
        Self::Destroying,
    ];

    /// The stored name (also the word in error messages: "sandbox … is pausing").
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Pausing => "pausing",
            Self::Resuming => "resuming",
            Self::Snapshotting => "snapshotting",
            Self::Destroying => "destroying",
        }
    }

    /// The public status a sandbox shows while the operation runs (the API's statuses are
    /// fixed): a create is `pending`, a pause or snapshot still `running`, a resume still
    /// `paused`, a destroy `stopped`.
    pub fn shown_as(self) -> SandboxStatus {
        match self {
            Self::Creating => SandboxStatus::Pending,
            Self::Pausing | Self::Snapshotting => SandboxStatus::Running,
            Self::Resuming => SandboxStatus::Paused,
            Self::Destroying => SandboxStatus::Stopped,
        }
    }
}

/// Parses a stored operation name.
pub(crate) fn parse_operation(s: &str) -> Result<Operation, StoreError> {
    Operation::ALL
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown sandbox operation {s:?}")))
}

/// The operation a sandbox is in, who runs it and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub op: Operation,
    /// The control plane instance that runs it (empty for rows of older versions).
    pub owner: String,
    pub since: DateTime<Utc>,
}

/// The control plane's record of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub team_id: String,
    pub host_id: String,
    pub status: SandboxStatus,
    /// The template name as the team knows it (base name or snapshot name).
    pub template: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub timeout_sec: i64,
    pub guest_ip: String,
    pub host_ip: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_active_at: Option<DateTime<Utc>>,
    pub last_updated: DateTime<Utc>,
    /// The operation under way, if any; `status` is the state before it.
    pub intent: Option<Intent>,
    /// Bumped by every write; a write succeeds only on the version it read.
    pub version: i64,
}

impl SandboxRecord {
    /// The status the public API shows: the stored one, or the one an operation under way
    /// shows ([`Operation::shown_as`]).
    pub fn public_status(&self) -> SandboxStatus {
        self.intent
            .as_ref()
            .map_or(self.status, |i| i.op.shown_as())
    }

    /// The word for the sandbox's state in messages: the operation under way, else the status.
    pub fn state_word(&self) -> &'static str {
        self.intent
            .as_ref()
            .map_or(self.status.as_str(), |i| i.op.as_str())
    }
}

/// A snapshot name held for a snapshot being taken: written before the agent is called, so
/// two snapshots cannot both take one name; gone when the snapshot is committed or given up.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SnapshotReservation {
    pub team_id: String,
    pub name: String,
    /// The opaque name the agent is asked to create.
    pub agent_name: String,
    pub sandbox_id: String,
    pub host_id: String,
    /// Whether an existing snapshot of the name is to be replaced.
    pub overwrite: bool,
    pub created_at: DateTime<Utc>,
}

/// A team's snapshot template. `agent_name` is the opaque, globally unique name the host
/// agent knows it by; `name` is unique per team only.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TemplateRecord {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub agent_name: String,
    /// The host that holds the template's files.
    pub host_id: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// Parses a stored sandbox status.
pub(crate) fn parse_status(s: &str) -> Result<SandboxStatus, StoreError> {
    Ok(match s {
        "pending" => SandboxStatus::Pending,
        "running" => SandboxStatus::Running,
        "paused" => SandboxStatus::Paused,
        "stopped" => SandboxStatus::Stopped,
        "error" => SandboxStatus::Error,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown sandbox status {other:?}"
            )))
        }
    })
}

/// The storage interface of the control plane.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- accounts ---

    /// Creates a team and its first user in one transaction. `Duplicate` if the email is taken.
    async fn create_account(&self, account: &NewAccount) -> Result<(), StoreError>;
    /// Creates a team, a user without password and an OAuth identity in one transaction.
    /// `Duplicate` if the email or the (provider, provider_user_id) pair is already taken.
    async fn create_oauth_account(
        &self,
        account: &NewAccount,
        provider: &str,
        provider_user_id: &str,
    ) -> Result<(), StoreError>;
    /// The user with this (lowercase) email.
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    /// The user with this id.
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// The user linked to an OAuth identity.
    async fn user_by_oauth(
        &self,
        provider: &str,
        provider_user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// The team with this id.
    async fn team(&self, id: &str) -> Result<Option<TeamRecord>, StoreError>;

    // --- API keys ---

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The team's keys, oldest first.
    async fn list_api_keys(&self, team_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Deletes one of the team's keys; false if the team has no key with that id.
    async fn delete_api_key(&self, team_id: &str, id: &str) -> Result<bool, StoreError>;
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    // --- hosts ---

    /// Inserts a host, or updates url/token/status of the host with the same url.
    /// Returns the stored record (its id is the existing one when the url was known).
    async fn upsert_host(&self, host: &HostRecord) -> Result<HostRecord, StoreError>;
    /// Every host, oldest first, each with its certificate pin (the heartbeat's one read).
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError>;

    // --- host joining (`host_join`) ---

    /// Stores a join token (its hash only).
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Every join token, oldest first.
    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StoreError>;
    /// Spends the token with this hash at `at` if it is unused and unexpired (atomically:
    /// one of two concurrent spends wins), else says why not.
    async fn spend_join_token(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<JoinTokenSpend, StoreError>;
    /// Records a joined host and its certificate's SHA-256: the host `rotated` (its url
    /// updated; `None` if it is gone), or a new host `new_id` (or the host with that url).
    /// Returns the host's id.
    async fn record_joined_host(
        &self,
        rotated: Option<&str>,
        new_id: &str,
        url: &str,
        cert_sha256: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;
    /// Records a health check: status, capacity (when healthy) and last_seen.
    async fn update_host_health(
        &self,
        id: &str,
        status: HostStatus,
        capacity: Option<HostCapacity>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Sets a host's drain flag; false if there is no such host.
    async fn set_host_draining(&self, id: &str, draining: bool) -> Result<bool, StoreError>;
    /// Removes a host: refused while sandboxes are placed on it unless `force`, which
    /// forgets their records (and the host's templates and snapshot reservations) with it.
    async fn remove_host(&self, id: &str, force: bool) -> Result<RemovedHost, StoreError>;

    // --- sandboxes ---

    async fn insert_sandbox(&self, sb: &SandboxRecord) -> Result<(), StoreError>;
    /// Inserts a sandbox (being created) if the team stays within `quotas` with it, counting
    /// in one transaction that holds the team's admission lock, so concurrent creates cannot
    /// overshoot; `OverQuota` (nothing written) otherwise.
    async fn insert_sandbox_within(
        &self,
        sb: &SandboxRecord,
        quotas: &Quotas,
    ) -> Result<(), StoreError>;
    /// [`Store::update_sandbox`] for a sandbox about to run again (a resume's claim), if the
    /// team stays within `quotas` with it (the same admission as a create, without the
    /// creates-under-way limit); `OverQuota` otherwise.
    async fn update_sandbox_within(
        &self,
        sb: &SandboxRecord,
        quotas: &Quotas,
    ) -> Result<bool, StoreError>;
    async fn get_sandbox(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<Option<SandboxRecord>, StoreError>;
    /// The team's sandboxes, oldest first.
    async fn list_sandboxes(&self, team_id: &str) -> Result<Vec<SandboxRecord>, StoreError>;
    /// Writes status, addresses, timestamps and intent of a sandbox if its stored version is
    /// still `sb.version`, and stores `sb.version + 1`; false (nothing written) otherwise.
    async fn update_sandbox(&self, sb: &SandboxRecord) -> Result<bool, StoreError>;
    /// Sets last_active_at (and last_updated) of a running sandbox with no operation under
    /// way, bumping its version; false if it is not such a sandbox of the team.
    async fn touch_sandbox(
        &self,
        team_id: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Deletes the team's sandbox if its stored version is still `version`.
    async fn delete_sandbox(
        &self,
        team_id: &str,
        id: &str,
        version: i64,
    ) -> Result<bool, StoreError>;
    /// Running sandboxes with an idle timeout and no operation under way, across all teams
    /// (for the reaper).
    async fn list_running_with_timeout(&self) -> Result<Vec<SandboxRecord>, StoreError>;
    /// How many sandboxes are in each status, across all teams (for `/metrics`); statuses
    /// with no sandbox are absent. One `GROUP BY` query.
    async fn count_sandboxes_by_status(&self) -> Result<Vec<(SandboxStatus, i64)>, StoreError>;
    /// A sandbox of any team (for the reconciler).
    async fn find_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;
    /// Every sandbox placed on a host, of any team (for the reconciler).
    async fn list_host_sandboxes(&self, host_id: &str) -> Result<Vec<SandboxRecord>, StoreError>;
    /// Stores the metadata (a JSON object) of a sandbox whose row exists; replaces any.
    async fn put_sandbox_metadata(&self, sandbox_id: &str, json: &str) -> Result<(), StoreError>;
    /// The metadata (JSON) of the team's sandboxes that have any, by sandbox id; only
    /// `sandbox_id`'s when given.
    async fn sandbox_metadata(
        &self,
        team_id: &str,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError>;

    // --- templates ---

    async fn get_template(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<TemplateRecord>, StoreError>;
    /// The team's snapshot templates, by name.
    async fn list_templates(&self, team_id: &str) -> Result<Vec<TemplateRecord>, StoreError>;
    /// Holds a snapshot name for a snapshot about to be taken, in one transaction:
    /// `Duplicate` if the name is already held, or (without `overwrite`) already a template.
    async fn reserve_snapshot(&self, r: &SnapshotReservation) -> Result<(), StoreError>;
    /// [`Store::reserve_snapshot`], refused with `OverQuota` when the team's templates and
    /// reserved names would number more than `max_templates` (a name already a template,
    /// overwritten, adds none). Holds the team's admission lock.
    async fn reserve_snapshot_within(
        &self,
        r: &SnapshotReservation,
        max_templates: i64,
    ) -> Result<(), StoreError>;
    /// The reservation held for a snapshot of this sandbox, if any.
    async fn snapshot_reservation(
        &self,
        sandbox_id: &str,
    ) -> Result<Option<SnapshotReservation>, StoreError>;
    /// Gives a reserved name up; false if it was not held.
    async fn release_snapshot(&self, team_id: &str, name: &str) -> Result<bool, StoreError>;
    /// Records a snapshot template taken under a reservation and removes the sandbox it was
    /// taken from and the reservation, in one transaction. An existing template of the same
    /// team and name (the reservation allowed overwriting it) is replaced and returned, so
    /// its agent template can be deleted.
    async fn commit_snapshot(
        &self,
        template: &TemplateRecord,
        sandbox_id: &str,
    ) -> Result<Option<TemplateRecord>, StoreError>;
    /// Deletes one of the team's templates and returns it.
    async fn delete_template(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<TemplateRecord>, StoreError>;
    /// The agent names of every template and reservation on a host, of any team (what the
    /// reconciler must not delete there).
    async fn host_template_names(&self, host_id: &str) -> Result<Vec<String>, StoreError>;
    /// Records that `host_id` holds a published copy of the snapshot template `agent_name`
    /// (made on another host); recording it twice is one record.
    async fn add_template_copy(
        &self,
        agent_name: &str,
        host_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The hosts other than its own that hold a copy of the existing template `agent_name`.
    async fn template_copy_hosts(&self, agent_name: &str) -> Result<Vec<String>, StoreError>;
    /// Forgets every copy of the template `agent_name` (after they were deleted).
    async fn forget_template_copies(&self, agent_name: &str) -> Result<(), StoreError>;

    // --- singleton work ---

    /// Takes or renews the lease `name` for `holder` until `ttl` from now; false while
    /// another holder's lease has not expired. With several control planes on one database
    /// this is what makes the reconciler run on one of them at a time.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Whether only one control plane can use this database (SQLite): then an operation that
    /// this process is not running has been abandoned.
    fn single_writer(&self) -> bool;

    // --- usage and stats (see `usage`) ---

    /// Every running sandbox and every sandbox with a meter, across all teams (for the
    /// usage meter).
    async fn metered_sandboxes(&self) -> Result<Vec<MeteredSandbox>, StoreError>;
    /// Writes one meter pass in one transaction (and drops meters of deleted sandboxes).
    async fn record_usage(&self, pass: &UsagePass) -> Result<(), StoreError>;
    /// The team's stored days from `from` to `to` (both `YYYY-MM-DD`, included), in order.
    async fn daily_usage(
        &self,
        team_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError>;
    /// The most the team held in each bucket of `step_ms` from `since_ms` on (bucket index
    /// from 0), buckets without samples left out.
    async fn team_held(
        &self,
        team_id: &str,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, Held)>, StoreError>;
}

/// Opens the store for a database URL: `postgres://` / `postgresql://` → PostgreSQL,
/// `sqlite:` or a plain path → SQLite. Runs the migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else if let Some(path) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    {
        Ok(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?))
    } else if url.contains("://") {
        Err(StoreError::UnsupportedUrl)
    } else {
        Ok(Arc::new(sqlite::SqliteStore::open(url.as_ref()).await?))
    }
}
