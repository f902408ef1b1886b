//! Starting a host agent: images present (built if missing), accelerator chosen, sandboxes of a
//! previous run found again, and the internal API ready to serve. The `wrenn agent` and
//! `wrenn up` commands call [`start`]; tests call it too.

use crate::images::{self, ImageConfig, Progress};
use crate::net::NetConfig;
use crate::sandbox::{Manager, ManagerConfig, SandboxError};
use crate::vmm::{self, Accel, AccelChoice};
use std::path::PathBuf;
use std::sync::Arc;

/// Everything an agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub accel: AccelChoice,
    pub qemu_bin: PathBuf,
    pub net: NetConfig,
    /// Bearer token of the internal API.
    pub token: String,
    /// Static envd for building templates; found by [`images::locate_envd`] when `None`.
    pub envd_bin: Option<PathBuf>,
}

impl AgentConfig {
    /// Defaults for a data directory: auto accelerator, Debian's QEMU, the default slot plan.
    pub fn new(data_dir: PathBuf, token: String) -> Self {
        Self {
            data_dir,
            accel: AccelChoice::Auto,
            qemu_bin: "qemu-system-x86_64".into(),
            net: NetConfig::default(),
            token,
            envd_bin: None,
        }
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// Building the guest images failed.
    #[error("building images: {0}")]
    Images(#[from] images::ImageError),
    /// Recovering sandboxes or setting up networking failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// A started agent: its manager and its internal API.
pub struct Agent {
    pub manager: Arc<Manager>,
    pub router: axum::Router,
}

/// Starts an agent; builds missing images first, reporting progress to `progress`.
pub async fn start(
    cfg: AgentConfig,
    mut progress: Box<dyn Progress + Send>,
) -> Result<Agent, AgentError> {
    if cfg.token.len() < 16 {
        return Err(AgentError::Config(
            "the agent token must be at least 16 characters".into(),
        ));
    }
    let built = match images::existing_images(&cfg.data_dir) {
        Some(i) => i,
        None => {
            let envd_bin = cfg
                .envd_bin
                .clone()
                .or_else(images::locate_envd)
                .ok_or_else(|| {
                    AgentError::Config(
                    "guest images are missing and no static wrenn-envd was found to build them \
                     (set WRENN_ENVD_BIN)"
                        .into(),
                )
                })?;
            let icfg = ImageConfig {
                data_dir: cfg.data_dir.clone(),
                envd_bin,
                force: false,
            };
            tokio::task::spawn_blocking(move || images::build_all(&icfg, progress.as_mut()))
                .await
                .map_err(|e| AgentError::Config(format!("image build task: {e}")))??
        }
    };
    let accel = vmm::choose_accel(cfg.accel);
    if accel == Accel::Tcg {
        tracing::warn!(
            "no usable hardware virtualisation (KVM with vmx/svm): guests run under TCG \
             emulation, which is much slower"
        );
    }
    let manager = Manager::start(
        ManagerConfig {
            data_dir: cfg.data_dir.clone(),
            qemu_bin: cfg.qemu_bin.clone(),
            accel,
            images: built,
        },
        cfg.net.clone(),
    )
    .await?;
    let router = crate::api::router(crate::api::ApiState {
        manager: manager.clone(),
        token: Arc::new(cfg.token.clone()),
    });
    Ok(Agent { manager, router })
}
