//! The entry points for the `wrenn` binary: [`build`] a [`Server`] from a [`ServerConfig`]
//! (opens the store, loads known hosts, arms failure points, starts the heartbeat, the
//! leader lock, the auto-pause reaper, the reconciler and the usage meter), register host agents, get the [`axum::Router`], and [`serve`] it on
//! a listener.

use crate::agent::HostAgent;
use crate::app::{App, ReconcileReport};
use crate::config::{ConfigError, ServerConfig};
use crate::error::ApiError;
use crate::failpoints::Failpoints;
use crate::store::{self, HostRecord, Store, StoreError};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid (e.g. a weak JWT secret).
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// Known hosts could not be loaded.
    #[error("loading hosts: {0}")]
    Hosts(ApiError),
}

/// A running control plane (without its listener).
pub struct Server {
    app: Arc<App>,
    reaper: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    meter: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    leader: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Operations under way finish in their own tasks.
        self.reaper.abort();
        self.reconciler.abort();
        self.meter.abort();
        self.heartbeat.abort();
        // Closes the leader lock's connection: another control plane takes over.
        self.leader.abort();
    }
}

/// Validates the config, opens the store (SQLite in `data_dir` unless `database_url` says
/// PostgreSQL), loads registered hosts, arms the failure points of `cfg.failpoints` (else of
/// `WRENN_FAILPOINTS`), and starts the reaper and the reconciler (whose first pass is at
/// once).
pub async fn build(cfg: ServerConfig) -> Result<Server, BuildError> {
    cfg.validate()?;
    // `https://` hosts are spoken to with a control-plane identity from this data dir's CA.
    crate::pki::client::use_data_dir(&cfg.data_dir);
    if cfg
        .database_url
        .as_deref()
        .is_none_or(|u| !u.contains("://"))
    {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| BuildError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
    }
    let oauth =
        crate::auth::oauth::OAuth::new(&cfg.oauth, cfg.public_url.as_deref(), &cfg.jwt_secret)
            .map_err(ConfigError::from)?;
    let spec = match &cfg.failpoints {
        Some(s) => s.clone(),
        None => std::env::var("WRENN_FAILPOINTS").unwrap_or_default(),
    };
    let failpoints = Failpoints::parse(&spec).map_err(ConfigError::from)?;
    let store = store::open(&cfg.effective_database_url()).await?;
    let app = Arc::new(App::new(store, cfg, oauth, failpoints));
    app.hosts.load().await.map_err(BuildError::Hosts)?;
    let heartbeat = tokio::spawn(crate::heartbeat::run(Arc::downgrade(&app)));
    let leader = tokio::spawn(crate::leader::run(
        Arc::downgrade(&app),
        app.cfg.effective_database_url(),
    ));
    let reaper = tokio::spawn(crate::reaper::run(Arc::downgrade(&app)));
    let reconciler = tokio::spawn(crate::reconciler::run(Arc::downgrade(&app)));
    let meter = tokio::spawn(crate::app::run_meter(Arc::downgrade(&app)));
    Ok(Server {
        app,
        reaper,
        reconciler,
        meter,
        heartbeat,
        leader,
    })
}

impl Server {
    /// Registers (or updates, by URL) a host agent at `url` that accepts `token`.
    pub async fn register_host(&self, url: &str, token: &str) -> Result<HostRecord, ApiError> {
        self.app.hosts.register(url, token).await
    }

    /// Registers a host with a given client, e.g. a simulated agent; `label` is stored as
    /// the host's URL.
    pub async fn register_agent(
        &self,
        label: &str,
        agent: Arc<dyn HostAgent>,
    ) -> Result<HostRecord, ApiError> {
        self.app.hosts.register_agent(label, "", agent).await
    }

    /// The public API router.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.app.clone())
    }

    /// Serves the public API on `listener` with the configured connection limit
    /// (`cfg.max_connections`) until the process ends.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        serve_limited(listener, self.router(), self.app.cfg.max_connections).await
    }

    /// The store (for tools and tests).
    pub fn store(&self) -> Arc<dyn Store> {
        self.app.store.clone()
    }

    /// Runs one reaper pass now; returns the ids of the sandboxes it paused.
    pub async fn reap_idle_now(&self) -> Result<Vec<String>, ApiError> {
        self.app.reap_idle().await
    }

    /// Runs one reconciler pass now.
    pub async fn reconcile_now(&self) -> Result<ReconcileReport, ApiError> {
        self.app.reconcile().await
    }

    /// Runs one usage meter pass now; false when another control plane holds its lease.
    pub async fn meter_usage_now(&self) -> Result<bool, ApiError> {
        self.app.meter_usage().await
    }

    /// Whether this control plane leads (runs the reaper and the reconciler; `crate::leader`).
    pub fn is_leader(&self) -> bool {
        self.app.leader.leads()
    }

    /// Reaper passes this control plane ran as leader.
    pub fn reaper_passes(&self) -> u64 {
        self.app.leader.reaper_passes()
    }

    /// Background reconciler passes this control plane ran as leader (the first comes as soon
    /// as it leads).
    pub fn reconcile_passes(&self) -> u64 {
        self.app.leader.reconcile_passes()
    }

    /// Runs one heartbeat pass now (`crate::heartbeat`).
    pub async fn heartbeat_now(&self) {
        self.app.hosts.beat().await
    }

    /// The failure points (`crate::failpoints`), to arm and disarm in tests.
    pub fn failpoints(&self) -> &Failpoints {
        &self.app.failpoints
    }
}

/// Serves `router` on `listener` until the process ends, with at most
/// [`DEFAULT_MAX_CONNECTIONS`](crate::listener::DEFAULT_MAX_CONNECTIONS) connections open
/// ([`Server::serve`] uses the configured limit). Each request knows its connection's peer
/// address (the client address of login and signup rate limits).
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    serve_limited(listener, router, crate::listener::DEFAULT_MAX_CONNECTIONS).await
}

/// [`serve`] with at most `max_connections` connections open at once.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    max_connections: usize,
) -> std::io::Result<()> {
    axum::serve(
        crate::listener::Limited::new(listener, max_connections),
        router.into_make_service_with_connect_info::<crate::listener::Peer>(),
    )
    .await
}

/// Opens the store of `cfg` (running its migrations) and nothing else, for administration
/// tools beside a running control plane on the same database (`wrenn hosts …`).
pub async fn open_store(cfg: &ServerConfig) -> Result<Arc<dyn Store>, ApiError> {
    if cfg
        .database_url
        .as_deref()
        .is_none_or(|u| !u.contains("://"))
    {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| ApiError::Internal(format!("cannot create the data dir: {e}")))?;
    }
    Ok(crate::store::open(&cfg.effective_database_url()).await?)
}

/// An account created by an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedAccount {
    pub user_id: String,
    pub team_id: String,
    /// As stored: trimmed and lowercase.
    pub email: String,
}

/// Creates an account (a user with a password and their own team) in the database of `cfg`,
/// whatever `cfg.signup` says: the administrator's way to add users when signup is closed
/// (`wrenn accounts add --email …`). Opens the store (running its migrations) and nothing
/// else: no agent is called and no background work starts, so it may run beside a running
/// control plane on the same database. Errors: `BadRequest` (email or password),
/// `EmailTaken`, `Store`.
pub async fn add_account(
    cfg: &ServerConfig,
    email: &str,
    password: &str,
) -> Result<AddedAccount, ApiError> {
    if cfg
        .database_url
        .as_deref()
        .is_none_or(|u| !u.contains("://"))
    {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| ApiError::Internal(format!("cannot create the data dir: {e}")))?;
    }
    let store = crate::store::open(&cfg.effective_database_url()).await?;
    let (user_id, team_id) =
        crate::app::add_password_account(store.as_ref(), None, email, password.to_string()).await?;
    let email = store
        .user_by_id(&user_id)
        .await?
        .map(|u| u.email)
        .unwrap_or_default();
    Ok(AddedAccount {
        user_id,
        team_id,
        email,
    })
}
