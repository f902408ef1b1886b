//! The settings the long-running roles share with their flags: which warm snapshots to prepare
//! (`--prewarm`), the control plane's settings (signup, quotas, bounds, proxies, limits, the
//! port proxy) and the agent's network settings. Each flag overrides its library's default only when given, and
//! maps back to its `WRENN_` variable for the service's settings file.

use clap::builder::TypedValueParser as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use wrenn_agent::net::NetConfig;
use wrenn_agent::sandbox::WarmSpec;
use wrenn_agent::sandbox::{AdmissionConfig, PoolConfig};
use wrenn_server::config::{ProxyAuth, ProxyConfig, SignupMode};
use wrenn_server::ServerConfig;

/// The warm snapshot prepared at start unless told otherwise: the control plane's default
/// create (`minimal`, 1 vCPU, 512 MB; a test checks they agree).
pub const DEFAULT_PREWARM: &str = "minimal:1:512";

/// Which warm snapshots an agent prepares at start.
#[derive(clap::Args, Clone, Debug)]
pub struct PrewarmArgs {
    /// Warm snapshots to prepare at start, as TEMPLATE:VCPUS:MEMORY_MB (repeatable; in the
    /// environment, comma-separated). The first create of each restores from it instead of
    /// cold-booting; the start is reported ready once they are made.
    #[arg(
        long = "prewarm",
        value_name = "TEMPLATE:VCPUS:MEMORY_MB",
        env = "WRENN_PREWARM",
        value_delimiter = ',',
        default_value = DEFAULT_PREWARM
    )]
    pub prewarm: Vec<WarmSpec>,
    /// Prepare no warm snapshot at start (the first create of each size cold-boots one).
    #[arg(long, env = "WRENN_NO_PREWARM", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_prewarm: bool,
}

impl PrewarmArgs {
    /// The snapshots to prepare: none with `--no-prewarm`.
    pub fn specs(&self) -> Vec<WarmSpec> {
        if self.no_prewarm {
            Vec::new()
        } else {
            self.prewarm.clone()
        }
    }
}

/// Control-plane settings of `wrenn server` and `wrenn up`. Each one given replaces the
/// control plane's default ([`ServerConfig::new`]); one not given leaves it as it is.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerSettings {
    /// Who may create accounts: open (anyone signs up) or closed (signup and OAuth sign-ins of
    /// unknown users are refused; the administrator adds accounts with `wrenn accounts add`).
    /// Default: open.
    #[arg(
        long,
        env = "WRENN_SIGNUP",
        value_name = "MODE",
        value_parser = clap::builder::PossibleValuesParser::new(["open", "closed"])
            .try_map(|s| s.parse::<SignupMode>())
    )]
    pub signup: Option<SignupMode>,
    /// Per-team quota: sandboxes running (or being created or resumed) at once.
    #[arg(long, env = "WRENN_QUOTA_RUNNING", value_name = "N",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub quota_running: Option<i64>,
    /// Per-team quota: vCPUs of those sandboxes together.
    #[arg(long, env = "WRENN_QUOTA_VCPUS", value_name = "N",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub quota_vcpus: Option<i64>,
    /// Per-team quota: memory of those sandboxes together, in MiB.
    #[arg(long, env = "WRENN_QUOTA_MEMORY_MB", value_name = "MB",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub quota_memory_mb: Option<i64>,
    /// Per-team quota: snapshot templates kept.
    #[arg(long, env = "WRENN_QUOTA_TEMPLATES", value_name = "N",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub quota_templates: Option<i64>,
    /// Per-team quota: creates under way at once.
    #[arg(long, env = "WRENN_QUOTA_CONCURRENT_CREATES", value_name = "N",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub quota_concurrent_creates: Option<i64>,
    /// Most vCPUs one sandbox may ask for (at most the fixed ceiling, the default).
    #[arg(long, env = "WRENN_MAX_VCPUS", value_name = "N")]
    pub max_vcpus: Option<i64>,
    /// Most memory one sandbox may ask for, in MiB (at most the fixed ceiling, the default).
    #[arg(long, env = "WRENN_MAX_MEMORY_MB", value_name = "MB")]
    pub max_memory_mb: Option<i64>,
    /// Longest idle auto-pause timeout a sandbox may ask for, in seconds (at most the fixed
    /// ceiling, the default).
    #[arg(long, env = "WRENN_MAX_TIMEOUT_SEC", value_name = "SEC")]
    pub max_timeout_sec: Option<i64>,
    /// A reverse proxy in front of the public API (repeatable; in the environment,
    /// comma-separated): for its connections the client address is the last one of
    /// X-Forwarded-For. Default: none (the connection's peer is the client).
    #[arg(
        long = "trusted-proxy",
        value_name = "IP",
        env = "WRENN_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpAddr>,
    /// Connections the public API serves at once; further ones wait in the listen backlog.
    #[arg(long, env = "WRENN_MAX_CONNECTIONS", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: Option<usize>,
    /// Longest time a quick request (auth, API keys, reads, ping) may take before it is
    /// answered 504 timeout, in milliseconds.
    #[arg(long, env = "WRENN_REQUEST_TIMEOUT_MS", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: Option<u64>,
    /// How often the reconciler compares the database with every agent, in milliseconds.
    #[arg(long, env = "WRENN_RECONCILE_INTERVAL_MS", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval_ms: Option<u64>,
    /// Bytes of stdout and of stderr (each) a buffered exec answers with; the rest is read
    /// and discarded in the guest and the answer says so. Default 1 MiB, at most 4 MiB.
    #[arg(long, env = "WRENN_EXEC_MAX_OUTPUT_BYTES", value_name = "BYTES",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(1..=wrenn_server::config::ExecLimits::MAX_OUTPUT_BYTES as u64))]
    pub exec_max_output_bytes: Option<usize>,
    /// Execs, exec streams and process attaches at once on one sandbox (default 16).
    #[arg(long, env = "WRENN_EXECS_PER_SANDBOX", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub execs_per_sandbox: Option<usize>,
    /// Execs, exec streams and process attaches at once across a team's sandboxes (default 64).
    #[arg(long, env = "WRENN_EXECS_PER_TEAM", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub execs_per_team: Option<usize>,
    /// How long a stream's client may take no event before it is disconnected, in
    /// milliseconds (default 30 000, at most 60 000).
    #[arg(long, env = "WRENN_STREAM_STALL_MS", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub stream_stall_ms: Option<u64>,
    /// The port proxy's domain: `{port}-{capsule id}.{domain}` reaches a capsule's port (point
    /// a wildcard DNS name `*.{domain}` at this server). The SDK's WRENN_PROXY_DOMAIN value
    /// works as it is (a port is ignored). Default: any domain (the first label decides).
    #[arg(long, env = "WRENN_PROXY_DOMAIN", value_name = "DOMAIN",
          value_parser = parse_proxy_domain)]
    pub proxy_domain: Option<String>,
    /// Who may use the port proxy: api-key (an API key of the capsule's team, as the SDK
    /// sends it) or url (no credential: the URL is the secret). Default: api-key.
    #[arg(
        long,
        env = "WRENN_PROXY_AUTH",
        value_name = "MODE",
        value_parser = clap::builder::PossibleValuesParser::new(["api-key", "url"])
            .try_map(|s| s.parse::<ProxyAuth>())
    )]
    pub proxy_auth: Option<ProxyAuth>,
    /// Proxied requests and connections open at once to one capsule (default 64).
    #[arg(long, env = "WRENN_PROXY_PER_CAPSULE", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub proxy_per_capsule: Option<usize>,
    /// The same across a team's capsules (default 256).
    #[arg(long, env = "WRENN_PROXY_PER_TEAM", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub proxy_per_team: Option<usize>,
}

/// A proxy domain as the control plane keeps it (lowercase, no port).
fn parse_proxy_domain(s: &str) -> Result<String, String> {
    ProxyConfig::normalize_domain(s).ok_or_else(|| format!("{s:?} is not a host name"))
}

/// Replaces `field` with `value` when there is one.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

impl ServerSettings {
    /// Puts the settings given into `cfg`.
    pub fn apply(&self, cfg: &mut ServerConfig) {
        set(&mut cfg.signup, self.signup);
        let q = &mut cfg.quotas;
        set(&mut q.running_sandboxes, self.quota_running);
        set(&mut q.vcpus, self.quota_vcpus);
        set(&mut q.memory_mb, self.quota_memory_mb);
        set(&mut q.templates, self.quota_templates);
        set(&mut q.concurrent_creates, self.quota_concurrent_creates);
        let b = &mut cfg.sandbox_bounds;
        set(&mut b.max_vcpus, self.max_vcpus);
        set(&mut b.max_memory_mb, self.max_memory_mb);
        set(&mut b.max_timeout_sec, self.max_timeout_sec);
        if !self.trusted_proxies.is_empty() {
            cfg.trusted_proxies = self.trusted_proxies.clone();
        }
        set(&mut cfg.max_connections, self.max_connections);
        set(
            &mut cfg.request_timeout,
            self.request_timeout_ms.map(Duration::from_millis),
        );
        set(
            &mut cfg.reconcile_interval,
            self.reconcile_interval_ms.map(Duration::from_millis),
        );
        let e = &mut cfg.exec_limits;
        set(&mut e.max_output_bytes, self.exec_max_output_bytes);
        set(&mut e.per_sandbox, self.execs_per_sandbox);
        set(&mut e.per_team, self.execs_per_team);
        set(
            &mut e.stream_stall,
            self.stream_stall_ms.map(Duration::from_millis),
        );
        let p = &mut cfg.proxy;
        if let Some(d) = &self.proxy_domain {
            p.domain = Some(d.clone());
        }
        set(&mut p.auth, self.proxy_auth);
        set(&mut p.per_capsule, self.proxy_per_capsule);
        set(&mut p.per_team, self.proxy_per_team);
    }

    /// The settings given, as the environment variables that give them.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if let Some(m) = self.signup {
            let mode = match m {
                SignupMode::Open => "open",
                SignupMode::Closed => "closed",
            };
            vars.push(("WRENN_SIGNUP", mode.to_string()));
        }
        let numbers = [
            ("WRENN_QUOTA_RUNNING", self.quota_running),
            ("WRENN_QUOTA_VCPUS", self.quota_vcpus),
            ("WRENN_QUOTA_MEMORY_MB", self.quota_memory_mb),
            ("WRENN_QUOTA_TEMPLATES", self.quota_templates),
            (
                "WRENN_QUOTA_CONCURRENT_CREATES",
                self.quota_concurrent_creates,
            ),
            ("WRENN_MAX_VCPUS", self.max_vcpus),
            ("WRENN_MAX_MEMORY_MB", self.max_memory_mb),
            ("WRENN_MAX_TIMEOUT_SEC", self.max_timeout_sec),
        ];
        for (k, v) in numbers {
            if let Some(v) = v {
                vars.push((k, v.to_string()));
            }
        }
        if !self.trusted_proxies.is_empty() {
            let ips: Vec<String> = self
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect();
            vars.push(("WRENN_TRUSTED_PROXIES", ips.join(",")));
        }
        let counts = [
            ("WRENN_MAX_CONNECTIONS", self.max_connections),
            ("WRENN_EXEC_MAX_OUTPUT_BYTES", self.exec_max_output_bytes),
            ("WRENN_EXECS_PER_SANDBOX", self.execs_per_sandbox),
            ("WRENN_EXECS_PER_TEAM", self.execs_per_team),
            ("WRENN_PROXY_PER_CAPSULE", self.proxy_per_capsule),
            ("WRENN_PROXY_PER_TEAM", self.proxy_per_team),
        ];
        for (k, v) in counts {
            if let Some(v) = v {
                vars.push((k, v.to_string()));
            }
        }
        if let Some(d) = &self.proxy_domain {
            vars.push(("WRENN_PROXY_DOMAIN", d.clone()));
        }
        if let Some(a) = self.proxy_auth {
            let mode = match a {
                ProxyAuth::ApiKey => "api-key",
                ProxyAuth::Url => "url",
            };
            vars.push(("WRENN_PROXY_AUTH", mode.to_string()));
        }
        let millis = [
            ("WRENN_REQUEST_TIMEOUT_MS", self.request_timeout_ms),
            ("WRENN_RECONCILE_INTERVAL_MS", self.reconcile_interval_ms),
            ("WRENN_STREAM_STALL_MS", self.stream_stall_ms),
        ];
        for (k, v) in millis {
            if let Some(v) = v {
                vars.push((k, v.to_string()));
            }
        }
        vars
    }
}

/// Network and admission settings of an agent (`wrenn agent`, `wrenn up`). Each one given
/// replaces the agent's default ([`NetConfig::default`], [`AdmissionConfig::default`]).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NetArgs {
    /// A DNS resolver guests may use (repeatable; in the environment, comma-separated); DNS to
    /// any other address is refused. Default: the host's name servers.
    #[arg(
        long = "dns-resolver",
        value_name = "IPV4",
        env = "WRENN_DNS_RESOLVERS",
        value_delimiter = ','
    )]
    pub dns_resolvers: Vec<Ipv4Addr>,
    /// How often the host's network rules (and some sandboxes' rules each round) are checked
    /// and put back if something flushed or changed them, in milliseconds.
    #[arg(long, env = "WRENN_RULES_CHECK_INTERVAL_MS", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rules_check_interval_ms: Option<u64>,
    /// Guest RAM the agent may commit, as a multiple of the host's memory less the reserve
    /// (1.0: no more than there is).
    #[arg(long, env = "WRENN_MEMORY_OVERCOMMIT", value_name = "RATIO")]
    pub memory_overcommit: Option<f64>,
    /// Memory kept for the host itself, never committed to sandboxes, in MiB.
    #[arg(long, env = "WRENN_MEMORY_RESERVE_MB", value_name = "MIB")]
    pub memory_reserve_mb: Option<u64>,
    /// Free disk kept in the data directory beyond what a new sandbox needs, in MiB.
    #[arg(long, env = "WRENN_DISK_RESERVE_MB", value_name = "MIB")]
    pub disk_reserve_mb: Option<u64>,
    /// Warm pools: most clones of one (template, vCPUs, memory) kept restored and stopped,
    /// ready for a create; a shape's pool grows when its creates miss and shrinks when idle.
    /// 0 (the default): no pools.
    #[arg(long, env = "WRENN_POOL_SIZE", value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=16))]
    pub pool_size: Option<u64>,
    /// Memory all pooled clones together may commit (RAM plus per-VM overhead), in MiB.
    #[arg(long, env = "WRENN_POOL_MEMORY_MB", value_name = "MIB")]
    pub pool_memory_mb: Option<u64>,
}

impl NetArgs {
    /// Puts the settings given into `net`.
    pub fn apply(&self, net: &mut NetConfig) {
        if !self.dns_resolvers.is_empty() {
            net.dns_resolvers = Some(self.dns_resolvers.clone());
        }
        set(
            &mut net.rules_check_interval,
            self.rules_check_interval_ms.map(Duration::from_millis),
        );
    }

    /// Puts the warm pool settings given into `pool`.
    pub fn apply_pool(&self, pool: &mut PoolConfig) {
        if let Some(n) = self.pool_size {
            *pool = PoolConfig::on(n as usize);
        }
        set(&mut pool.memory_budget_mb, self.pool_memory_mb);
    }

    /// Puts the admission settings given into `admission`.
    pub fn apply_admission(&self, admission: &mut AdmissionConfig) {
        set(&mut admission.memory_overcommit, self.memory_overcommit);
        set(&mut admission.memory_reserve_mb, self.memory_reserve_mb);
        set(&mut admission.disk_reserve_mb, self.disk_reserve_mb);
    }

    /// The settings given, as the environment variables that give them.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        for (name, value) in [
            (
                "WRENN_MEMORY_OVERCOMMIT",
                self.memory_overcommit.map(|v| v.to_string()),
            ),
            (
                "WRENN_MEMORY_RESERVE_MB",
                self.memory_reserve_mb.map(|v| v.to_string()),
            ),
            (
                "WRENN_DISK_RESERVE_MB",
                self.disk_reserve_mb.map(|v| v.to_string()),
            ),
            ("WRENN_POOL_SIZE", self.pool_size.map(|v| v.to_string())),
            (
                "WRENN_POOL_MEMORY_MB",
                self.pool_memory_mb.map(|v| v.to_string()),
            ),
        ] {
            if let Some(v) = value {
                vars.push((name, v));
            }
        }
        if !self.dns_resolvers.is_empty() {
            let ips: Vec<String> = self.dns_resolvers.iter().map(ToString::to_string).collect();
            vars.push(("WRENN_DNS_RESOLVERS", ips.join(",")));
        }
        if let Some(ms) = self.rules_check_interval_ms {
            vars.push(("WRENN_RULES_CHECK_INTERVAL_MS", ms.to_string()));
        }
        vars
    }
}
