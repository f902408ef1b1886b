//! The guest image builder: the kernel (`vmlinux` for PVH boot), the initramfs and the base
//! template root filesystems, all built from Debian packages of the configured mirror and kept
//! under `<data>/images`. It owns that directory and nothing else: it never starts VMs, never
//! touches sandbox disks and never installs packages on the host.
//!
//! Layout:
//! - `images/kernel/vmlinux`, `images/kernel/initrd.img`
//! - `images/templates/<name>/rootfs.ext4`
//! - `images/cache/base-<key>/`: the debootstrap tree of `minimal`, reused while its inputs stay;
//!   `images/cache/code-runner-<key>/`: a copy of it with the code runner's packages (apt)
//! - `images/tmp/`: work space of the running build; whatever is left there is removed
//!
//! Every artifact has a `<file>.key` stamp: a hash of all its inputs (package versions as apt
//! resolves them, the recipe and script texts, the envd binary). A step whose stamp matches is
//! skipped, so a rebuild with nothing changed only costs the apt look-up. Artifacts are built
//! in `tmp/` and renamed into place when complete, so a reader never sees half of one.
//!
//! Replacing a template's `rootfs.ext4` changes the file that existing qcow2 overlays use as
//! their backing file: callers rebuild images only when no sandbox uses the old ones.

mod apt;
mod cache;
pub mod code_runner;
mod initramfs;
mod kernel;
mod progress;
mod rootfs;
mod template;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use progress::{NoProgress, Progress, StderrProgress, Step, StepOutcome};

use crate::cmd::CmdError;
use cache::{KeyBuilder, Layout};
use template::{build_template, recipes, BaseTree};

/// Debian packages whose programs the builder runs on the host: `debootstrap`, `mkfs.ext4`
/// (e2fsprogs), `lz4`, `depmod` (kmod), `gzip`, `cp`/`du`/`chroot` (coreutils), `umount`
/// (mount). `apt-get`, `apt-cache` and `dpkg-deb` come with every Debian system. The builder
/// itself must run as root (debootstrap and `chroot`).
pub const REQUIRED_PACKAGES: &[&str] = &[
    "debootstrap",
    "e2fsprogs",
    "lz4",
    "kmod",
    "gzip",
    "coreutils",
    "mount",
];

/// Name of the default template.
pub const MINIMAL_TEMPLATE: &str = "minimal";

/// Bump when the kernel extraction changes in a way the key does not already see.
const KERNEL_RECIPE: &str = "vmlinux-from-lz4-bzimage/1";
/// Bump when the initramfs layout changes in a way the key does not already see.
const INITRD_RECIPE: &str = "initramfs-newc-gzip/1";
/// Bump when the base tree recipe changes in a way the key does not already see.
const BASE_RECIPE: &str = "debootstrap-base/1";
/// Bump when the way a template's tree is made from another's changes in a way the key does
/// not already see.
const EXTEND_RECIPE: &str = "apt-install-on-copy/1";
/// Bump when the image assembly changes in a way the key does not already see.
const ROOTFS_RECIPE: &str = "mkfs-ext4-d/1";

/// What to build and where.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The data directory (default `/var/lib/wrenn`); images go to `<data_dir>/images`.
    pub data_dir: PathBuf,
    /// The static `wrenn-envd` binary to install in templates (see [`locate_envd`]).
    pub envd_bin: PathBuf,
    /// Rebuild every artifact, cached or not.
    pub force: bool,
}

/// The built images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Uncompressed kernel, booted with `-kernel` (PVH).
    pub kernel: PathBuf,
    /// gzip'd cpio initramfs, passed with `-initrd`.
    pub initrd: PathBuf,
    /// Base templates: [`MINIMAL_TEMPLATE`], and the code runner's under each of its names.
    pub templates: Vec<BaseTemplate>,
}

/// A base template's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseTemplate {
    /// Template name, e.g. `minimal`.
    pub name: String,
    /// The raw ext4 image; sandboxes put a qcow2 overlay on it (`-F raw`).
    pub rootfs: PathBuf,
    /// Size of the image file in bytes (the file is sparse).
    pub size_bytes: u64,
}

/// Why an image build failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation on the host failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external program failed; the message has its command line and stderr.
    #[error(transparent)]
    Command(#[from] CmdError),
    /// An external program failed, with more context than its stderr.
    #[error("{what}: {source}")]
    Step {
        what: String,
        #[source]
        source: CmdError,
    },
    /// apt could not tell which package version to use.
    #[error("cannot resolve Debian packages: {0}")]
    Resolve(String),
    /// The kernel package did not give a usable uncompressed kernel.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The initramfs could not be assembled from the kernel package.
    #[error("initramfs: {0}")]
    Initramfs(String),
    /// The template image could not be assembled.
    #[error("rootfs: {0}")]
    Rootfs(String),
    /// The envd binary to install is missing or not an executable.
    #[error("envd binary {}: {why} (build it with: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p wrenn-envd --target x86_64-unknown-linux-gnu, or set WRENN_ENVD_BIN)", path.display())]
    Envd { path: PathBuf, why: String },
}

impl ImageError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    fn command(e: CmdError) -> Self {
        Self::Command(e)
    }

    /// Stable machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "image_io",
            Self::Command(_) | Self::Step { .. } => "image_command_failed",
            Self::Resolve(_) => "image_packages_unresolved",
            Self::Kernel(_) => "image_kernel_invalid",
            Self::Initramfs(_) => "image_initramfs_failed",
            Self::Rootfs(_) => "image_rootfs_failed",
            Self::Envd { .. } => "image_envd_missing",
        }
    }
}

/// Finds the `wrenn-envd` binary to install, in this order:
/// 1. the path in the environment variable `WRENN_ENVD_BIN` (taken as given if set);
/// 2. `wrenn-envd` next to the current executable;
/// 3. `../x86_64-unknown-linux-gnu/release/wrenn-envd` relative to the executable's directory
///    (a `target/release/wrenn` finds the static build in `target/x86_64-unknown-linux-gnu/`);
/// 4. `../../x86_64-unknown-linux-gnu/release/wrenn-envd` (test binaries in `target/*/deps/`).
pub fn locate_envd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WRENN_ENVD_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("wrenn-envd"),
        dir.join("../x86_64-unknown-linux-gnu/release/wrenn-envd"),
        dir.join("../../x86_64-unknown-linux-gnu/release/wrenn-envd"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// True when the kernel, initramfs and every base template were built completely at least
/// once. Cheap (a few `stat`s); says nothing about whether they are up to date.
pub fn images_ready(data_dir: &Path) -> bool {
    existing_images(data_dir).is_some()
}

/// The images already built under `data_dir`, without building anything; `None` when the
/// kernel, the initramfs or the `minimal` template is missing or incomplete. The code-runner
/// template is listed (under each of its names) when it was built too: images made before it
/// existed still start an agent.
pub fn existing_images(data_dir: &Path) -> Option<Images> {
    let layout = Layout::new(data_dir);
    let (kernel, initrd) = (layout.kernel(), layout.initrd());
    let rootfs = layout.template_rootfs(MINIMAL_TEMPLATE);
    if ![&kernel, &initrd, &rootfs]
        .iter()
        .all(|p| cache::is_published(p))
    {
        return None;
    }
    let mut templates = Vec::new();
    for recipe in recipes() {
        let rootfs = layout.template_rootfs(recipe.name);
        if !cache::is_published(&rootfs) {
            continue;
        }
        let size_bytes = fs::metadata(&rootfs).ok()?.len();
        templates.extend(recipe.named(rootfs, size_bytes));
    }
    Some(Images {
        kernel,
        initrd,
        templates,
    })
}

/// Step runner: reports start and end of each step to the progress sink.
struct Steps<'a> {
    progress: &'a mut dyn Progress,
    index: usize,
    total: usize,
}

enum Ran<T> {
    Built(T),
    Cached(T),
}

impl Steps<'_> {
    fn run<T>(
        &mut self,
        label: String,
        f: impl FnOnce() -> Result<Ran<T>, ImageError>,
    ) -> Result<T, ImageError> {
        self.index += 1;
        let step = Step {
            index: self.index,
            total: self.total,
            label,
        };
        self.progress.begin(&step);
        let start = Instant::now();
        match f() {
            Ok(Ran::Built(v)) => {
                self.progress
                    .end(&step, &StepOutcome::Done(start.elapsed()));
                Ok(v)
            }
            Ok(Ran::Cached(v)) => {
                self.progress.end(&step, &StepOutcome::Cached);
                Ok(v)
            }
            Err(e) => {
                self.progress
                    .end(&step, &StepOutcome::Failed(start.elapsed()));
                Err(e)
            }
        }
    }
}

/// A fresh work directory under `<data>/images/tmp`.
fn work_dir(layout: &Layout, name: &str) -> Result<PathBuf, ImageError> {
    let dir = layout.tmp_dir().join(name);
    fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
    Ok(dir)
}

/// Unpacks the kernel package once per build, for whichever step needs it first.
struct KernelTree<'a> {
    layout: &'a Layout,
    resolved: &'a apt::Resolved,
    root: Option<PathBuf>,
}

impl KernelTree<'_> {
    fn get(&mut self) -> Result<PathBuf, ImageError> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        let dir = work_dir(self.layout, "kernel-deb")?;
        let root = apt::download_and_unpack(
            &self.resolved.kernel_package,
            &self.resolved.kernel_version,
            &dir,
        )?;
        self.root = Some(root.clone());
        Ok(root)
    }
}

fn check_envd(path: &Path) -> Result<(), ImageError> {
    let envd_err = |why: String| ImageError::Envd {
        path: path.to_path_buf(),
        why,
    };
    let mut head = [0u8; 4];
    let mut f = fs::File::open(path).map_err(|e| envd_err(e.to_string()))?;
    std::io::Read::read_exact(&mut f, &mut head).map_err(|e| envd_err(e.to_string()))?;
    if &head != b"\x7fELF" {
        return Err(envd_err("not an ELF executable".into()));
    }
    Ok(())
}

/// Builds (or finds up to date) the kernel, the initramfs and the base templates (`minimal`,
/// the code runner's) under `cfg.data_dir`, reporting each step to `progress`. Blocking: async
/// callers use `spawn_blocking`. Concurrent builds on one data directory wait for each other.
pub fn build_all(cfg: &ImageConfig, progress: &mut dyn Progress) -> Result<Images, ImageError> {
    check_envd(&cfg.envd_bin)?;
    let layout = Layout::new(&cfg.data_dir);
    fs::create_dir_all(&layout.root).map_err(|e| ImageError::io("create", &layout.root, e))?;
    let _lock = cache::lock(&layout)?;
    cache::clean_stale(&layout)?;
    let result = build_locked(cfg, &layout, progress);
    // Work files are removed on success and on failure alike.
    let cleaned = cache::clean_stale(&layout);
    let images = result?;
    cleaned?;
    Ok(images)
}

fn build_locked(
    cfg: &ImageConfig,
    layout: &Layout,
    progress: &mut dyn Progress,
) -> Result<Images, ImageError> {
    let mut steps = Steps {
        progress,
        index: 0,
        total: 3 + 2 * recipes().len(),
    };

    let resolved = steps.run(
        format!(
            "resolve Debian packages ({}, {})",
            apt::KERNEL_METAPACKAGE,
            apt::BUSYBOX_PACKAGE
        ),
        || {
            let (resolved, memoized) = apt::resolve_memoized(&layout.apt_memo())?;
            Ok(if memoized {
                Ran::Cached(resolved)
            } else {
                Ran::Built(resolved)
            })
        },
    )?;
    let mut tree = KernelTree {
        layout,
        resolved: &resolved,
        root: None,
    };

    // Kernel.
    let kernel = layout.kernel();
    let kernel_key = KeyBuilder::new("kernel")
        .field("recipe", KERNEL_RECIPE)
        .field("package", &resolved.kernel_package)
        .field("version", &resolved.kernel_version)
        .finish();
    steps.run(
        format!(
            "kernel {} {} → vmlinux",
            resolved.kernel_package, resolved.kernel_version
        ),
        || {
            if !cfg.force && cache::is_current(&kernel, &kernel_key) {
                return Ok(Ran::Cached(()));
            }
            let root = tree.get()?;
            let vmlinuz = root
                .join("boot")
                .join(format!("vmlinuz-{}", resolved.kernel_release));
            let work = work_dir(layout, "vmlinux")?;
            let out = work.join("vmlinux");
            kernel::extract_vmlinux(&vmlinuz, &out, &work)?;
            cache::publish_file(&out, &kernel, &kernel_key)?;
            Ok(Ran::Built(()))
        },
    )?;

    // Initramfs. The module list is fixed, so the script text is known before building.
    let initrd = layout.initrd();
    let initrd_key = KeyBuilder::new("initrd")
        .field("recipe", INITRD_RECIPE)
        .field("kernel", &resolved.kernel_package)
        .field("kernel-version", &resolved.kernel_version)
        .field("busybox-version", &resolved.busybox_version)
        .field("modules", initramfs::MODULES.join(" "))
        .field("init", initramfs::init_script(&[]))
        .finish();
    steps.run(
        format!(
            "initramfs (busybox + {} virtio modules)",
            initramfs::MODULES.len()
        ),
        || {
            if !cfg.force && cache::is_current(&initrd, &initrd_key) {
                return Ok(Ran::Cached(()));
            }
            let root = tree.get()?;
            let bb_dir = work_dir(layout, "busybox-deb")?;
            let bb_root =
                apt::download_and_unpack(apt::BUSYBOX_PACKAGE, &resolved.busybox_version, &bb_dir)?;
            let work = work_dir(layout, "initrd")?;
            let out = work.join("initrd.img");
            initramfs::build(&root, &resolved.kernel_release, &bb_root, &out)?;
            cache::publish_file(&out, &initrd, &initrd_key)?;
            Ok(Ran::Built(()))
        },
    )?;

    let mirror = apt::configured_mirror(rootfs::SUITE);
    let mut templates = Vec::new();
    let mut parent: Option<BaseTree> = None;
    for recipe in recipes() {
        let (named, tree) = build_template(
            cfg,
            layout,
            &mut steps,
            &recipe,
            &mirror,
            parent.as_ref().filter(|_| recipe.extends),
        )?;
        templates.extend(named);
        parent = Some(tree);
    }
    Ok(Images {
        kernel,
        initrd,
        templates,
    })
}
