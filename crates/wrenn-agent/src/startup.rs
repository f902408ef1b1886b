//! Starting a host agent: data directory private, images present (built if missing),
//! accelerator chosen, sandboxes of a previous run found again, and the internal API ready to
//! serve; then, once the caller has set up what its files need, the warm snapshots it names
//! prepared in the background ([`Agent::prewarm`]), so the first create restores instead of
//! booting. The `wrenn agent` and `wrenn up` commands run the [`crate::doctor`] checks first and
//! then call [`start`]; tests call it too.

use crate::images::{self, ImageConfig, Progress};
use crate::net::NetConfig;
use crate::sandbox::{
    AdmissionConfig, Manager, ManagerConfig, PoolConfig, SandboxError, WarmOutcome, WarmSpec,
};
use crate::vmm::{self, Accel, AccelChoice};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
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
    /// Admission against committed memory and free disk.
    pub admission: AdmissionConfig,
    /// Warm pools' sizes.
    pub pool: PoolConfig,
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
            admission: AdmissionConfig::default(),
            pool: PoolConfig::default(),
        }
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The data directory could not be created or made private.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Building the guest images failed.
    #[error("building images: {0}")]
    Images(#[from] images::ImageError),
    /// Recovering sandboxes or setting up networking failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A warm snapshot named to be prepared at start could not be made.
    #[error("{0}")]
    Prewarm(String),
}

/// A started agent: its manager and its internal API.
pub struct Agent {
    pub manager: Arc<Manager>,
    pub router: axum::Router,
}

impl Agent {
    /// Prepares the warm snapshots of `specs`, one after the other, in a task of its own, and
    /// returns at once; [`Prewarm::done`] waits for the end. Progress goes to the log: each
    /// snapshot's start, its cold boot, envd ready, the warm-up commands, saved (or found
    /// already there). A create of the same template and size arriving meanwhile waits for
    /// its snapshot instead of booting a second time. Stops at the first failure.
    pub fn prewarm(&self, specs: Vec<WarmSpec>) -> Prewarm {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let manager = self.manager.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut result = Ok(());
            for spec in &specs {
                tracing::info!("preparing the warm snapshot of {spec}");
                match manager.prepare_warm(spec).await {
                    Ok(WarmOutcome::Found) => {
                        tracing::info!("warm snapshot of {spec}: ready (made before)")
                    }
                    Ok(WarmOutcome::Made(took)) => tracing::info!(
                        "warm snapshot of {spec}: ready (made in {:.1}s)",
                        took.as_secs_f64()
                    ),
                    Err(e) => {
                        tracing::error!("warm snapshot of {spec}: {e}");
                        result = Err(format!("preparing the warm snapshot of {spec}: {e}"));
                        break;
                    }
                }
            }
            if result.is_ok() && !specs.is_empty() {
                tracing::info!(
                    "warm snapshots prepared in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            let _ = tx.send(Some(result));
        });
        Prewarm(rx)
    }
}

/// The preparation started by [`Agent::prewarm`]; clones watch the same one.
#[derive(Clone)]
pub struct Prewarm(tokio::sync::watch::Receiver<Option<Result<(), String>>>);

impl Prewarm {
    /// Waits until every warm snapshot is prepared; the first failure, if one failed.
    pub async fn done(&self) -> Result<(), StartError> {
        let mut rx = self.0.clone();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => Some(Err("the warm-up task ended without an answer".into())),
        };
        outcome.unwrap_or(Ok(())).map_err(StartError::Prewarm)
    }

    /// True once every warm snapshot is prepared (false while under way or after a failure).
    pub fn is_ready(&self) -> bool {
        matches!(*self.0.borrow(), Some(Ok(())))
    }
}

/// Starts an agent; builds missing images first, reporting progress to `progress`.
pub async fn start(
    cfg: AgentConfig,
    mut progress: Box<dyn Progress + Send>,
) -> Result<Agent, StartError> {
    if cfg.token.len() < 16 {
        return Err(StartError::Config(
            "the agent token must be at least 16 characters".into(),
        ));
    }
    cfg.admission.validate().map_err(StartError::Config)?;
    secure_data_dir(&cfg.data_dir).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let built = match images::existing_images(&cfg.data_dir) {
        Some(i) => i,
        None => {
            let envd_bin = cfg
                .envd_bin
                .clone()
                .or_else(images::locate_envd)
                .ok_or_else(|| {
                    StartError::Config(
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
                .map_err(|e| StartError::Config(format!("image build task: {e}")))??
        }
    };
    let accel = vmm::choose_accel(cfg.accel);
    if accel == Accel::Tcg {
        tracing::warn!(
            "no usable hardware virtualisation (KVM with vmx/svm): guests run under TCG \
             emulation, which is much slower; TCG is not a security boundary by QEMU's own \
             account, so the VM jail (own uid, mount namespace, seccomp, cgroup) is what \
             contains a guest that escapes into QEMU"
        );
    }
    if !vmm::jail::config().enabled {
        tracing::warn!("WRENN_JAIL=off: QEMU runs as root, unjailed (for measurements only)");
    }
    // Finds the per-VM cgroups now, so a host without them is told at start.
    let _ = vmm::cgroup::cgroups();
    if crate::sandbox::disk::reflink_supported(&cfg.data_dir) {
        tracing::info!("clones' RAM: reflinks of their template's RAM file (no pause copies RAM)");
    } else {
        tracing::info!(
            "clones' RAM: the template's RAM file, copy-on-write; the data directory's \
             filesystem cannot reflink, so a clone's first pause saves its RAM and its first \
             resume reads it back (a data directory on XFS or btrfs avoids both)"
        );
    }
    let manager = Manager::start(
        ManagerConfig {
            data_dir: cfg.data_dir.clone(),
            qemu_bin: cfg.qemu_bin.clone(),
            accel,
            images: built,
            admission: cfg.admission,
            pool: cfg.pool,
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

/// Makes the data directory private: created if missing, mode 0700, so no other user reaches
/// anything in it (sandbox disks and memory files, snapshots, images), and every file directly
/// in it (secrets, the SQLite database) without group or other access. Run at every start, so
/// a directory made by an older version or loosened by hand is put right.
pub fn secure_data_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let mode = meta.permissions().mode();
        if meta.is_file() && mode & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & 0o7700))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_data_dir_and_its_files_become_private() {
        let tmp = tempfile::tempdir().unwrap();
        // Other users may pass through the parent, as through /var/lib.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("data");
        secure_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "a new directory");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("wrenn.db");
        std::fs::write(&db, "secret").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let disk = dir.join("sandboxes/sb-1/disk.qcow2");
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        std::fs::write(&disk, "guest data").unwrap();
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644)).unwrap();

        let root = nix::unistd::geteuid().is_root();
        if root {
            assert!(
                read_as_nobody(&disk).is_ok(),
                "before: a world-readable disk"
            );
        }

        secure_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&disk), 0o644, "files deeper down keep their mode");
        // Another user reaches neither: the directory stops them.
        if root {
            for file in [&db, &disk] {
                let err = read_as_nobody(file).unwrap_err();
                assert!(err.contains("Permission denied"), "{err}");
            }
        }
    }

    /// `cat path` as the user nobody: its output, or its error.
    fn read_as_nobody(path: &Path) -> Result<String, String> {
        let out = std::process::Command::new("cat")
            .arg(path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
