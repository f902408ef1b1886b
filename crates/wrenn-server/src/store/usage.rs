//! The rows of usage metering and team stats (migration `0005_usage`): what the meter reads
//! of the sandboxes, what one meter pass writes, and what stats and usage read back. Plain
//! data; the rules are `crate::app`'s (`usage.rs`) and the SQL is [`super::sql_usage`]'s.
//! Times are milliseconds since the Unix epoch, days `YYYY-MM-DD` in UTC.

/// A sandbox as the meter sees it: every running one, and every one it has a meter for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredSandbox {
    pub id: String,
    pub team_id: String,
    /// Its stored status is `running`.
    pub running: bool,
    pub vcpus: i64,
    pub memory_mb: i64,
    /// When its VM last started running (create or resume).
    pub started_ms: Option<i64>,
    /// Its row's last write.
    pub last_updated_ms: i64,
    /// How far its running time has been credited; `None` when it has no meter.
    pub metered_to_ms: Option<i64>,
}

/// Usage added to one team's day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCredit {
    pub team_id: String,
    pub day: String,
    /// vCPU-milliseconds.
    pub cpu_ms: i64,
    /// MB-milliseconds.
    pub ram_mb_ms: i64,
}

/// What a team held at once (a minute's most, or a bucket's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub running: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
}

/// Everything one meter pass writes, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsagePass {
    pub credits: Vec<UsageCredit>,
    /// Meters set: sandbox id and how far it is now credited.
    pub meters: Vec<(String, i64)>,
    /// Meters removed (sandboxes no longer running).
    pub unmeter: Vec<String>,
    /// Per team, what it holds in the minute starting at `minute_ms`.
    pub samples: Vec<(String, Held)>,
    pub minute_ms: i64,
    /// Samples older than this are deleted.
    pub prune_before_ms: i64,
}

/// One stored day of a team's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    pub day: String,
    pub cpu_ms: i64,
    pub ram_mb_ms: i64,
}
