//! The long-running roles of the binary: image building, the agent (and, with the control
//! plane, `up`). The agent's roles run the host checks ([`crate::doctor`]) first and refuse to
//! start on a failing one; then they prepare the warm snapshots of `--prewarm` while their APIs
//! already answer, and say they are ready only once those are made (a create arriving earlier
//! waits for its snapshot). Errors end here as one clear line.

use anyhow::{anyhow, bail, Context, Result};
use std::future::IntoFuture;
use std::path::PathBuf;
use std::time::Duration;
use wrenn_agent::doctor;
use wrenn_agent::images::{self, ImageConfig, StderrProgress};
use wrenn_agent::net::NetConfig;
use wrenn_agent::startup::{self, AgentConfig};
use wrenn_server::config::SignupMode;
use wrenn_server::ServerConfig;

pub use crate::settings::{NetArgs, PrewarmArgs, ServerSettings};

pub mod agent_tls;

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn build_images(data_dir: PathBuf, envd_bin: Option<PathBuf>, force: bool) -> Result<()> {
    secure_data_dir(&data_dir)?;
    let envd_bin = envd_bin.or_else(images::locate_envd).ok_or_else(|| {
        anyhow!("no static wrenn-envd found; pass --envd-bin or set WRENN_ENVD_BIN")
    })?;
    let cfg = ImageConfig {
        data_dir,
        envd_bin,
        force,
    };
    let built = tokio::task::spawn_blocking(move || {
        let mut progress = StderrProgress::new();
        images::build_all(&cfg, &mut progress)
    })
    .await??;
    println!("kernel:   {}", built.kernel.display());
    println!("initrd:   {}", built.initrd.display());
    for t in &built.templates {
        println!("template: {} ({})", t.name, t.rootfs.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Data directory (images, sandboxes, templates).
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// Address of the internal API.
    #[arg(long, env = "WRENN_AGENT_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Bearer token the control plane uses (at least 16 characters); not needed once the
    /// agent joined (mutual TLS). With --join, the join token if no other is given.
    #[arg(long, env = "WRENN_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "WRENN_ACCEL", default_value = "auto")]
    pub accel: String,
    /// QEMU binary.
    #[arg(long, env = "WRENN_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Prefix of network namespaces and devices (distinct per agent on one host).
    #[arg(long, env = "WRENN_NET_PREFIX", default_value = "wr")]
    pub net_prefix: String,
    /// First network slot index of this agent.
    #[arg(long, env = "WRENN_FIRST_SLOT", default_value_t = 0)]
    pub first_slot: u32,
    /// Number of network slots (the most sandboxes running at once).
    #[arg(long, default_value_t = 1024)]
    pub max_slots: u32,
    /// Static wrenn-envd for building missing images.
    #[arg(long, env = "WRENN_ENVD_BIN")]
    pub envd_bin: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub prewarm: PrewarmArgs,
    #[command(flatten)]
    pub join: agent_tls::JoinArgs,
}

impl AgentArgs {
    pub fn config(&self) -> Result<AgentConfig> {
        let token = self.token.clone().unwrap_or_default();
        let mut cfg = AgentConfig::new(self.data_dir.clone(), token);
        cfg.accel = self.accel.parse().map_err(|e: String| anyhow!(e))?;
        cfg.qemu_bin = self.qemu.clone();
        cfg.net = NetConfig {
            prefix: self.net_prefix.clone(),
            first_slot: self.first_slot,
            max_slots: self.max_slots,
            ..NetConfig::default()
        };
        self.net.apply(&mut cfg.net);
        self.net.apply_admission(&mut cfg.admission);
        self.net.apply_pool(&mut cfg.pool);
        cfg.envd_bin = self.envd_bin.clone();
        Ok(cfg)
    }
}

pub async fn run_agent(mut args: AgentArgs) -> Result<()> {
    let tls = agent_tls::prepare(
        &args.data_dir,
        &args.join,
        args.token.as_deref(),
        &args.listen,
    )
    .await?;
    match &tls {
        // Mutual TLS authenticates the control plane; the router's token is internal.
        Some(_) => args.token = Some(random_hex(24)),
        None if args.token.is_none() => bail!(
            "--token (or WRENN_AGENT_TOKEN) is needed unless the agent joins a control plane \
             (--join URL)"
        ),
        None => {}
    }
    let cfg = args.config()?;
    crate::doctor::check_before_start(doctor::Options::from(&cfg)).await?;
    let agent = startup::start(cfg, Box::new(StderrProgress::new())).await?;
    create_files_owner_only();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "agent listening on {scheme}://{addr} ({:?} guests)",
        agent.manager.accel()
    );
    // The API answers while the warm snapshots are made: a create waits for its snapshot.
    let prewarm = agent.prewarm(args.prewarm.specs());
    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> =
        match &tls {
            Some((id, config)) => {
                tracing::info!(host = %id.host_id, "serving the agent API over mutual TLS only");
                let token = args.token.clone().unwrap_or_default();
                let router =
                    wrenn_server::pki::tls::authenticated_by_tls(agent.router.clone(), &token);
                Box::pin(wrenn_server::pki::tls::serve_tls(
                    listener,
                    config.clone(),
                    router,
                    shutdown_signal(),
                ))
            }
            None => Box::pin(
                axum::serve(listener, agent.router.clone())
                    .with_graceful_shutdown(shutdown_signal())
                    .into_future(),
            ),
        };
    tokio::pin!(serve);
    let outcome = tokio::select! {
        r = &mut serve => Some(r),
        r = prewarm.done() => match r {
            Ok(()) => None,
            Err(e) => Some(Err(std::io::Error::other(e))),
        },
    };
    let served = match outcome {
        // Stopped, or failed, before the warm snapshots were ready.
        Some(r) => r,
        None => {
            tracing::info!("agent ready at {scheme}://{addr}");
            serve.await
        }
    };
    // Running VMs stay up: the next agent finds them again.
    release_agent(&agent).await;
    served.context("agent")
}

/// A clean agent stop: running VMs stay up (the next agent finds them again) with their
/// network; idle pooled network slots are removed.
async fn release_agent(agent: &startup::Agent) {
    agent.manager.detach_all().await;
    let pool = agent.manager.slot_pool().clone();
    match tokio::task::spawn_blocking(move || pool.close_idle()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("removing idle network slots: {e}"),
        Err(e) => tracing::warn!("removing idle network slots: {e}"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Creates the data directory if missing and makes it private (see
/// [`startup::secure_data_dir`]): mode 0700, the secrets and the database in it 0600.
pub fn secure_data_dir(dir: &std::path::Path) -> Result<()> {
    startup::secure_data_dir(dir)
        .with_context(|| format!("making the data directory {} private", dir.display()))
}

/// From here on, files this process and the programs it starts (QEMU, `qemu-img`) create are
/// readable by their owner only (umask 077): sandbox disks, memory and state files, snapshot
/// templates. Set once the guest images are ready, since their trees keep ordinary modes.
fn create_files_owner_only() {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
}

/// Reads a secret kept in the data directory, creating it (random, mode 0600) on first use.
pub fn persistent_secret(path: &std::path::Path, bytes: usize) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let secret = random_hex(bytes);
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(secret)
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Data directory: database, secrets, images, sandboxes, templates.
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// Address of the public API.
    #[arg(long, env = "WRENN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of the embedded agent's internal API (loopback; keep it stable across restarts).
    #[arg(long, env = "WRENN_AGENT_LISTEN", default_value = "127.0.0.1:8081")]
    pub agent_listen: String,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "WRENN_ACCEL", default_value = "auto")]
    pub accel: String,
    /// Prefix of network namespaces and devices.
    #[arg(long, env = "WRENN_NET_PREFIX", default_value = "wr")]
    pub net_prefix: String,
    /// First network slot index.
    #[arg(long, env = "WRENN_FIRST_SLOT", default_value_t = 0)]
    pub first_slot: u32,
    /// Static wrenn-envd for building missing images.
    #[arg(long, env = "WRENN_ENVD_BIN")]
    pub envd_bin: Option<PathBuf>,
    /// How often idle sandboxes are looked for and auto-paused, in milliseconds.
    #[arg(long, env = "WRENN_REAPER_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reaper_interval_ms: u64,
    /// Write a systemd unit running `wrenn up` with these options (to /etc/systemd/system/,
    /// the options to /etc/wrenn/wrenn.env) instead of running now.
    #[arg(long)]
    pub install_service: bool,
    /// Root the service files go under (for tests).
    #[arg(long, default_value = "/", hide = true)]
    pub install_root: PathBuf,
    #[command(flatten)]
    pub settings: ServerSettings,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub prewarm: PrewarmArgs,
}

/// `wrenn up`: the control plane and one agent in this process, SQLite in the data directory.
pub async fn run_up(args: UpArgs) -> Result<()> {
    if args.install_service {
        return crate::service::install_up(&args);
    }
    let agent_args = AgentArgs {
        data_dir: args.data_dir.clone(),
        listen: args.agent_listen.clone(),
        token: None,
        accel: args.accel.clone(),
        qemu: "qemu-system-x86_64".into(),
        net_prefix: args.net_prefix.clone(),
        first_slot: args.first_slot,
        max_slots: 1024,
        envd_bin: args.envd_bin.clone(),
        net: args.net.clone(),
        prewarm: args.prewarm.clone(),
        join: Default::default(),
    };
    crate::doctor::check_before_start(doctor::Options::from(&agent_args.config()?)).await?;
    secure_data_dir(&args.data_dir)?;
    let agent_token = persistent_secret(&args.data_dir.join("agent_token"), 24)?;
    let jwt_secret = match std::env::var("WRENN_JWT_SECRET") {
        Ok(s) => s,
        Err(_) => persistent_secret(&args.data_dir.join("jwt_secret"), 32)?,
    };

    let agent_args = AgentArgs {
        token: Some(agent_token.clone()),
        ..agent_args
    };
    eprintln!("==> preparing the host agent (guest images are built on first start)");
    let agent = startup::start(agent_args.config()?, Box::new(StderrProgress::new())).await?;
    create_files_owner_only();
    let agent_listener = tokio::net::TcpListener::bind(&args.agent_listen)
        .await
        .with_context(|| format!("listen on {} (agent)", args.agent_listen))?;
    let agent_url = format!("http://{}", agent_listener.local_addr()?);
    let agent_router = agent.router.clone();
    let agent_task = tokio::spawn(async move { axum::serve(agent_listener, agent_router).await });

    let mut cfg = ServerConfig::new(args.data_dir.clone(), jwt_secret.into_bytes());
    cfg.listen = args
        .listen
        .parse()
        .with_context(|| format!("--listen {}", args.listen))?;
    cfg.database_url = std::env::var("DATABASE_URL").ok();
    cfg.apply_oauth_env()?;
    cfg.reaper_interval = Duration::from_millis(args.reaper_interval_ms);
    args.settings.apply(&mut cfg);
    let signup = cfg.signup;
    let server = wrenn_server::build(cfg).await?;
    server.register_host(&agent_url, &agent_token).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    let serve = server.serve(listener);
    tokio::pin!(serve);
    let mut agent_task = agent_task;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    // The API answers from here on; "running" is said once the default create would restore
    // from a warm snapshot. A create arriving meanwhile waits for that snapshot.
    let specs = args.prewarm.specs();
    if !specs.is_empty() {
        let names: Vec<String> = specs.iter().map(ToString::to_string).collect();
        eprintln!(
            "==> preparing the warm snapshot of {} (one cold boot; first creates start from it)",
            names.join(", ")
        );
    }
    let prewarm = agent.prewarm(specs);
    let early: Option<Result<()>> = tokio::select! {
        r = prewarm.done() => r.err().map(|e| Err(e.into())),
        r = &mut serve => Some(r.context("public API")),
        r = &mut agent_task => Some(r.context("agent task").and_then(|r| r.context("agent API"))),
        _ = &mut shutdown => {
            eprintln!("shutting down; running sandboxes keep running");
            Some(Ok(()))
        }
    };
    if let Some(r) = early {
        release_agent(&agent).await;
        return r;
    }
    println!(
        "Wrenn is running at {url} ({:?} guests)",
        agent.manager.accel()
    );
    if signup == SignupMode::Closed {
        println!("Signup is closed. Add an account on this host, then log in and make an API key:");
        println!(
            "  wrenn accounts add --data-dir {} --email you@example.com",
            args.data_dir.display()
        );
        println!("  wrenn login --email you@example.com");
    } else {
        println!("Create an account and a first API key:");
        println!(
            "  wrenn signup --email you@example.com      (or: curl -X POST {url}/v1/auth/signup ...)"
        );
    }
    println!("  wrenn keys create --name first --save");
    tokio::select! {
        r = serve => r.context("public API")?,
        r = agent_task => r.context("agent task")?.context("agent API")?,
        _ = shutdown => eprintln!("shutting down; running sandboxes keep running"),
    }
    release_agent(&agent).await;
    Ok(())
}

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Data directory (the SQLite file when DATABASE_URL is not set).
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// Address of the public API.
    #[arg(long, env = "WRENN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Host agents to register, as URL=TOKEN (repeatable; in the environment, comma-separated).
    #[arg(
        long = "agent",
        value_name = "URL=TOKEN",
        env = "WRENN_AGENTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub agents: Vec<String>,
    #[command(flatten)]
    pub settings: ServerSettings,
}

/// Whether a `DATABASE_URL` names PostgreSQL (else the SQLite file is in the data dir).
pub fn is_postgres(database_url: Option<&str>) -> bool {
    database_url.is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
}

/// `wrenn server`: the control plane alone (several may share one PostgreSQL).
pub async fn run_server(args: ServerArgs) -> Result<()> {
    let jwt_secret = std::env::var("WRENN_JWT_SECRET")
        .map_err(|_| anyhow!("WRENN_JWT_SECRET must be set (at least 32 bytes)"))?;
    let mut cfg = ServerConfig::new(args.data_dir.clone(), jwt_secret.into_bytes());
    cfg.listen = args
        .listen
        .parse()
        .with_context(|| format!("--listen {}", args.listen))?;
    cfg.database_url = std::env::var("DATABASE_URL").ok();
    cfg.apply_oauth_env()?;
    args.settings.apply(&mut cfg);
    if !is_postgres(cfg.database_url.as_deref()) {
        // The SQLite file lives there.
        secure_data_dir(&args.data_dir)?;
    }
    let server = wrenn_server::build(cfg).await?;
    for a in &args.agents {
        let (url, token) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--agent takes URL=TOKEN, got {a:?}"))?;
        server.register_host(url, token).await?;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(
        "control plane listening on http://{}",
        listener.local_addr()?
    );
    tokio::select! {
        r = server.serve(listener) => r?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
