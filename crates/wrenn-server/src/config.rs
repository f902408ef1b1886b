//! Configuration of the control plane ([`ServerConfig`]), its validation ([`ConfigError`]),
//! and the fixed limits on every input of the public API. Reading flags or environment
//! variables is the binary's job, not this module's.

pub use crate::auth::oauth::config::{GithubConfig, OAuthConfig, OAuthConfigError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Limits on sandbox creation and exec requests.
pub mod limits {
    pub const MIN_VCPUS: i64 = 1;
    pub const MAX_VCPUS: i64 = 8;
    pub const DEFAULT_VCPUS: i64 = 1;
    pub const MIN_MEMORY_MB: i64 = 128;
    pub const MAX_MEMORY_MB: i64 = 8192;
    pub const DEFAULT_MEMORY_MB: i64 = 512;
    /// Longest idle auto-pause timeout (one day); 0 disables auto-pause.
    pub const MAX_TIMEOUT_SEC: i64 = 86_400;
    pub const DEFAULT_TEMPLATE: &str = "minimal";
    /// Exec timeout when the request gives none.
    pub const DEFAULT_EXEC_TIMEOUT_SEC: i64 = 30;
    pub const MAX_EXEC_TIMEOUT_SEC: i64 = 3_600;
    /// Longest command name, argument, env value or path accepted.
    pub const MAX_ARG_BYTES: usize = 64 * 1024;
    pub const MAX_ARGS: usize = 1_024;
    pub const MAX_ENV_VARS: usize = 256;
    pub const MAX_PATH_BYTES: usize = 4_096;
    /// Longest API key name.
    pub const MAX_KEY_NAME: usize = 100;
    pub const MAX_EMAIL: usize = 254;
    pub const MIN_PASSWORD: usize = 8;
    /// Argon2 hashing of very long passwords is wasted work: cap it.
    pub const MAX_PASSWORD: usize = 1_024;
    /// Largest JSON request body.
    pub const MAX_JSON_BODY: usize = 1024 * 1024;
    /// Default limit of the buffered `files/write` upload.
    pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
    /// Default limit of the streamed `files/stream/write` upload.
    pub const DEFAULT_MAX_STREAM_UPLOAD_BYTES: u64 = 16 * 1024 * 1024 * 1024;
    /// Shortest accepted JWT secret.
    pub const MIN_JWT_SECRET: usize = 32;
}

/// Everything the control plane needs to start.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address the binary should listen on (informational for [`crate::serve`] callers).
    pub listen: SocketAddr,
    /// `postgres://…` for PostgreSQL; `None` (or a SQLite URL/path) for SQLite.
    pub database_url: Option<String>,
    /// Directory for the SQLite file (`wrenn.db`) when no database URL is given.
    pub data_dir: PathBuf,
    /// HS256 secret for the session JWTs; at least [`limits::MIN_JWT_SECRET`] bytes.
    pub jwt_secret: Vec<u8>,
    /// Limit of `POST /v1/sandboxes/{id}/files/write`.
    pub max_upload_bytes: u64,
    /// Limit of `POST /v1/sandboxes/{id}/files/stream/write`.
    pub max_stream_upload_bytes: u64,
    /// The externally visible base URL (`CP_PUBLIC_URL`); OAuth callback URLs are built
    /// from it, so it is required when an OAuth provider is configured.
    pub public_url: Option<String>,
    /// OAuth login providers and the frontend redirect URL (none configured by default).
    pub oauth: OAuthConfig,
    /// How often the auto-pause reaper looks for idle sandboxes.
    pub reaper_interval: Duration,
    /// How often the reconciler compares the database with every agent (it also runs once
    /// at start).
    pub reconcile_interval: Duration,
    /// How often each control plane probes every host (`heartbeat`); a host that has not
    /// answered for three intervals is unreachable.
    pub heartbeat_interval: Duration,
    /// How long a VM or snapshot template that no record owns must stay unowned on its agent
    /// before the reconciler removes it (covers the moment between an agent creating a thing
    /// and the database recording it).
    pub orphan_grace: Duration,
    /// After how long an operation started by another control plane counts as abandoned (its
    /// control plane died) and is settled by the reconciler; longer than any agent call.
    /// With SQLite (one control plane) an operation this process is not running is abandoned
    /// at once.
    pub op_stale_after: Duration,
    /// Failure points to arm (`crate::failpoints`, for tests); `None` reads
    /// `WRENN_FAILPOINTS` from the environment at build.
    pub failpoints: Option<String>,
    /// Per-team limits on what a team may hold at once ([`Quotas`]).
    pub quotas: Quotas,
    /// Bounds of one sandbox's size and idle timeout ([`SandboxBounds`]).
    pub sandbox_bounds: SandboxBounds,
    /// Whether anyone may sign up (`open`, the default) or only an administrator creates
    /// accounts (`closed`: `POST /v1/auth/signup` and OAuth sign-ins of unknown users are
    /// refused; [`crate::add_account`] still works).
    pub signup: SignupMode,
    /// Rate limits of login and signup and the cap on concurrent password hashing.
    pub auth_limits: AuthLimits,
    /// Addresses of reverse proxies in front of the control plane: for a connection from one
    /// of them, the client address is the last one of `X-Forwarded-For`. Empty by default
    /// (the socket peer is the client).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Connections the public listener serves at once (`Server::serve`; default 2048);
    /// further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Longest time a quick request (auth, API keys, reads of sandboxes and snapshots, ping)
    /// may take before it is answered `504 timeout` (default 30 s). Lifecycle operations run
    /// to completion whatever their caller does and have the agent client's own deadlines;
    /// exec has its own timeout; file transfers stream.
    pub request_timeout: Duration,
    /// Output caps and concurrency limits of exec and streams ([`ExecLimits`]).
    pub exec_limits: ExecLimits,
    /// The port proxy: its domain, who may use it and its limits ([`ProxyConfig`]).
    pub proxy: ProxyConfig,
}

/// The port proxy (`api::proxy`): HTTP and WebSocket to a port of a capsule, at
/// `http://{port}-{capsule id}.{domain}/…` (the `Host` header decides) or at
/// `/v1/capsules/{id}/proxy/{port}/…` on the API's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The domain whose names `{port}-{capsule id}.{domain}` reach capsule ports (a wildcard
    /// DNS name, `*.{domain}`, pointing at this server), lowercase, without a port. `None`
    /// (the default): any domain, the first label alone decides.
    pub domain: Option<String>,
    /// Who may use the proxy ([`ProxyAuth`]; default: an API key of the capsule's team).
    pub auth: ProxyAuth,
    /// Proxied requests and connections open at once to one capsule (default 64); beyond it
    /// `429 quota_exceeded`.
    pub per_capsule: usize,
    /// The same across a team's capsules (default 256).
    pub per_team: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            domain: None,
            auth: ProxyAuth::ApiKey,
            per_capsule: 64,
            per_team: 256,
        }
    }
}

impl ProxyConfig {
    /// `domain` as the proxy compares it: lowercase, without a trailing dot or a port;
    /// `None` if it is no host name.
    pub fn normalize_domain(domain: &str) -> Option<String> {
        let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let d = match d.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
            _ => d,
        };
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        ok.then_some(d)
    }
}

/// Who may use the port proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyAuth {
    /// An API key of the capsule's team (`X-API-Key`, or `Authorization: Bearer <key>`), as
    /// the SDK sends it. The key is not passed on to the guest.
    #[default]
    ApiKey,
    /// No credential: the URL is the secret (a capsule id has about 62 random bits). Anyone
    /// who learns the URL (a shared link, a log, a `Referer`) reaches the port while the
    /// capsule runs (a code-runner capsule's Jupyter server, which has no token of its own,
    /// runs code for them); meant for sharing a web app with a browser, which cannot add a
    /// header.
    Url,
}

impl std::str::FromStr for ProxyAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api-key" => Ok(Self::ApiKey),
            "url" => Ok(Self::Url),
            other => Err(format!("proxy auth must be api-key or url, not {other:?}")),
        }
    }
}

/// Limits on execs and streams, so one tenant's output cannot exhaust the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    /// Bytes of stdout and of stderr (each) a buffered exec answers with; envd keeps this
    /// much, reads and discards the rest, and says so (`stdout_truncated`, …). Default 1 MiB,
    /// at most [`ExecLimits::MAX_OUTPUT_BYTES`].
    pub max_output_bytes: usize,
    /// Execs, exec streams and process attaches running at once on one sandbox (default 16).
    pub per_sandbox: usize,
    /// The same across all of a team's sandboxes (default 64). Over either is
    /// `429 quota_exceeded`.
    pub per_team: usize,
    /// How long a stream's client may take no event before it is disconnected (default
    /// 30 s, at most [`ExecLimits::MAX_STREAM_STALL`]): events are never buffered for a
    /// client that does not read.
    pub stream_stall: Duration,
}

impl ExecLimits {
    /// Largest configurable output cap: twice over, JSON-escaped, it stays within the agent
    /// client's exec answer limit.
    pub const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
    /// Longest configurable stall time: envd ends a session whose reader takes nothing for
    /// 90 s, which must stay beyond it.
    pub const MAX_STREAM_STALL: Duration = Duration::from_secs(60);
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self {
            max_output_bytes: 1024 * 1024,
            per_sandbox: 16,
            per_team: 64,
            stream_stall: Duration::from_secs(30),
        }
    }
}

/// Who may create accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignupMode {
    /// Anyone, through signup or an OAuth login.
    #[default]
    Open,
    /// Only an administrator ([`crate::add_account`]); signup answers `403 signup_closed`.
    Closed,
}

impl std::str::FromStr for SignupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            other => Err(format!("signup mode must be open or closed, not {other:?}")),
        }
    }
}

pub use crate::auth::limiter::Rate;

/// Limits on login and signup attempts (each answered `429 rate_limited` with `Retry-After`
/// when over) and on password hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    /// Logins from one client address (default 10 at once, then 10 a minute).
    pub login_per_addr: Rate,
    /// Failed logins for one email (default 5 at once, then 5 a minute); a success costs none.
    pub login_per_email: Rate,
    /// Signups from one client address (default 5 at once, then 5 a minute).
    pub signup_per_addr: Rate,
    /// Signups for one email (default 3 at once, then 3 a minute).
    pub signup_per_email: Rate,
    /// Keys each limiter tracks at most (default 100 000: a few MiB).
    pub max_tracked: usize,
    /// Password hashes computed at once (default: the number of CPUs); others wait.
    pub hash_concurrency: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        let rate = |n| Rate {
            burst: n,
            per_minute: n,
        };
        Self {
            login_per_addr: rate(10),
            login_per_email: rate(5),
            signup_per_addr: rate(5),
            signup_per_email: rate(3),
            max_tracked: 100_000,
            hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

impl AuthLimits {
    /// No rate limit (for tests that sign up many accounts from one address).
    pub fn unlimited() -> Self {
        let rate = Rate {
            burst: u32::MAX,
            per_minute: u32::MAX,
        };
        Self {
            login_per_addr: rate,
            login_per_email: rate,
            signup_per_addr: rate,
            signup_per_email: rate,
            ..Self::default()
        }
    }
}

/// The largest sandbox a create may ask for, and its longest idle timeout; a request outside
/// them (or below [`limits::MIN_VCPUS`] / [`limits::MIN_MEMORY_MB`]) is a 400. Each may be
/// lowered, never raised above the fixed ceiling in [`limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxBounds {
    pub max_vcpus: i64,
    pub max_memory_mb: i64,
    /// Longest idle auto-pause timeout, in seconds.
    pub max_timeout_sec: i64,
}

impl Default for SandboxBounds {
    /// The ceilings of [`limits`]: 8 vCPUs, 8192 MiB, one day.
    fn default() -> Self {
        Self {
            max_vcpus: limits::MAX_VCPUS,
            max_memory_mb: limits::MAX_MEMORY_MB,
            max_timeout_sec: limits::MAX_TIMEOUT_SEC,
        }
    }
}

/// Per-team limits, checked atomically in the store when a sandbox is created or resumed and
/// when a snapshot name is reserved, so concurrent requests cannot overshoot them. A sandbox
/// counts against the running limits while it is pending or running, or being created or
/// resumed; a paused, stopped or failed one does not. Over a limit is `429 quota_exceeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Sandboxes running (or being created or resumed) at once.
    pub running_sandboxes: i64,
    /// Sum of the vCPUs of those sandboxes.
    pub vcpus: i64,
    /// Sum of their memory, in MiB.
    pub memory_mb: i64,
    /// Snapshot templates the team keeps (names being taken included).
    pub templates: i64,
    /// Creates under way at once.
    pub concurrent_creates: i64,
}

impl Default for Quotas {
    /// 20 running sandboxes, 32 vCPUs, 32 GiB, 50 snapshot templates, 5 creates at once.
    fn default() -> Self {
        Self {
            running_sandboxes: 20,
            vcpus: 32,
            memory_mb: 32 * 1024,
            templates: 50,
            concurrent_creates: 5,
        }
    }
}

impl Quotas {
    /// No limit at all (for tests and single-tenant installs).
    pub const UNLIMITED: Quotas = Quotas {
        running_sandboxes: i64::MAX,
        vcpus: i64::MAX,
        memory_mb: i64::MAX,
        templates: i64::MAX,
        concurrent_creates: i64::MAX,
    };
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The JWT secret and database credentials are never printed.
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("database", &self.database_url.as_ref().map(|_| "<set>"))
            .field("data_dir", &self.data_dir)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("max_stream_upload_bytes", &self.max_stream_upload_bytes)
            .field("public_url", &self.public_url)
            .field("oauth", &self.oauth)
            .field("reaper_interval", &self.reaper_interval)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("orphan_grace", &self.orphan_grace)
            .field("op_stale_after", &self.op_stale_after)
            .field("failpoints", &self.failpoints)
            .field("quotas", &self.quotas)
            .field("sandbox_bounds", &self.sandbox_bounds)
            .field("signup", &self.signup)
            .field("auth_limits", &self.auth_limits)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_connections", &self.max_connections)
            .field("request_timeout", &self.request_timeout)
            .field("exec_limits", &self.exec_limits)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A configuration with the defaults, for the given data dir and JWT secret.
    pub fn new(data_dir: impl Into<PathBuf>, jwt_secret: impl Into<Vec<u8>>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            data_dir: data_dir.into(),
            jwt_secret: jwt_secret.into(),
            max_upload_bytes: limits::DEFAULT_MAX_UPLOAD_BYTES,
            max_stream_upload_bytes: limits::DEFAULT_MAX_STREAM_UPLOAD_BYTES,
            public_url: None,
            oauth: OAuthConfig::default(),
            reaper_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            orphan_grace: Duration::from_secs(60),
            op_stale_after: Duration::from_secs(15 * 60),
            failpoints: None,
            quotas: Quotas::default(),
            sandbox_bounds: SandboxBounds::default(),
            signup: SignupMode::Open,
            auth_limits: AuthLimits::default(),
            trusted_proxies: Vec::new(),
            max_connections: crate::listener::DEFAULT_MAX_CONNECTIONS,
            request_timeout: Duration::from_secs(30),
            exec_limits: ExecLimits::default(),
            proxy: ProxyConfig::default(),
        }
    }

    /// Checks the configuration before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.len() < limits::MIN_JWT_SECRET {
            return Err(ConfigError::WeakJwtSecret {
                len: self.jwt_secret.len(),
            });
        }
        if self.max_upload_bytes == 0 || self.max_stream_upload_bytes == 0 {
            return Err(ConfigError::ZeroUploadLimit);
        }
        if self.reaper_interval.is_zero() {
            return Err(ConfigError::ZeroReaperInterval);
        }
        if self.reconcile_interval.is_zero() || self.heartbeat_interval.is_zero() {
            return Err(ConfigError::ZeroReconcileInterval);
        }
        let b = &self.sandbox_bounds;
        if !(limits::MIN_VCPUS..=limits::MAX_VCPUS).contains(&b.max_vcpus)
            || !(limits::MIN_MEMORY_MB..=limits::MAX_MEMORY_MB).contains(&b.max_memory_mb)
            || !(0..=limits::MAX_TIMEOUT_SEC).contains(&b.max_timeout_sec)
        {
            return Err(ConfigError::SandboxBounds);
        }
        let e = &self.exec_limits;
        if !(1..=ExecLimits::MAX_OUTPUT_BYTES).contains(&e.max_output_bytes)
            || e.per_sandbox == 0
            || e.per_team == 0
            || e.stream_stall.is_zero()
            || e.stream_stall > ExecLimits::MAX_STREAM_STALL
        {
            return Err(ConfigError::ExecLimits);
        }
        let p = &self.proxy;
        let domain_ok = match p.domain.as_deref() {
            None => true,
            Some(d) => ProxyConfig::normalize_domain(d).as_deref() == Some(d),
        };
        if !domain_ok || p.per_capsule == 0 || p.per_team == 0 {
            return Err(ConfigError::Proxy);
        }
        self.oauth.validate(self.public_url.as_deref())?;
        Ok(())
    }

    /// Reads the OAuth settings from the environment into `self.oauth`
    /// ([`OAuthConfig::from_env`]) and, unless `public_url` is already set, `CP_PUBLIC_URL`
    /// into `public_url`.
    pub fn apply_oauth_env(&mut self) -> Result<(), ConfigError> {
        self.oauth = OAuthConfig::from_env()?;
        if self.public_url.is_none() {
            self.public_url = std::env::var("CP_PUBLIC_URL")
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty());
        }
        Ok(())
    }

    /// The database URL to open: the configured one, or the SQLite file in the data dir.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(u) if !u.is_empty() => u.clone(),
            _ => self.data_dir.join("wrenn.db").display().to_string(),
        }
    }
}

/// A configuration the control plane refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JWT secret is shorter than [`limits::MIN_JWT_SECRET`] bytes.
    #[error(
        "JWT secret is {len} bytes; at least {} are required",
        limits::MIN_JWT_SECRET
    )]
    WeakJwtSecret { len: usize },
    /// An upload limit of zero would refuse every upload.
    #[error("upload limits must be greater than zero")]
    ZeroUploadLimit,
    /// The reaper cannot run every zero seconds.
    #[error("reaper interval must be greater than zero")]
    ZeroReaperInterval,
    /// Nor can the reconciler.
    #[error("reconcile and heartbeat intervals must be greater than zero")]
    ZeroReconcileInterval,
    /// A sandbox bound is below the smallest sandbox or above the fixed ceiling.
    #[error(
        "sandbox bounds must be within {}..={} vCPUs, {}..={} MiB and 0..={} s",
        limits::MIN_VCPUS,
        limits::MAX_VCPUS,
        limits::MIN_MEMORY_MB,
        limits::MAX_MEMORY_MB,
        limits::MAX_TIMEOUT_SEC
    )]
    SandboxBounds,
    /// An exec limit is zero, or the output cap is above its ceiling.
    #[error(
        "exec limits must be above zero, the output cap at most {} bytes and the stream \
         stall at most {:?}",
        ExecLimits::MAX_OUTPUT_BYTES,
        ExecLimits::MAX_STREAM_STALL
    )]
    ExecLimits,
    /// The proxy domain is no lowercase host name, or a proxy limit is zero.
    #[error(
        "the proxy domain must be a lowercase host name without a port, and the proxy's \
         connection limits above zero"
    )]
    Proxy,
    /// `WRENN_FAILPOINTS` (or `failpoints`) names an unknown point or action.
    #[error(transparent)]
    Failpoints(#[from] crate::failpoints::FailpointError),
    /// The OAuth settings are incomplete or inconsistent (e.g. a provider without
    /// `CP_PUBLIC_URL`).
    #[error(transparent)]
    OAuth(#[from] OAuthConfigError),
}
