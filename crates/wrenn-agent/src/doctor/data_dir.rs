//! The data directory: free disk where it lives, whether its filesystem reflinks, who may look
//! inside, and the guest images.

use super::{human_bytes, Check};
use crate::images;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const GIB: u64 = 1 << 30;
/// Room a first image build takes (the Debian trees, packages, the two template images, about
/// 1.6 GiB) with margin.
const IMAGE_BUILD_BYTES: u64 = 3 * GIB;
/// Below this, few sandboxes fit: each running or paused one keeps its RAM in a file here.
const LOW_DISK_BYTES: u64 = 4 * GIB;

/// The directory itself, or the nearest ancestor that exists (where it will be created).
fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

pub fn free_disk(data_dir: &Path) -> Check {
    let name = "disk";
    let at = existing_ancestor(data_dir);
    let stat = match nix::sys::statvfs::statvfs(&at) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read the free space of {}: {e}", at.display()),
                "check the data directory's file system",
            )
        }
    };
    let free = stat.blocks_available() * stat.fragment_size();
    let detail = format!("{} free at {}", human_bytes(free), at.display());
    let built = images::images_ready(data_dir);
    if !built && free < IMAGE_BUILD_BYTES {
        Check::fail(
            name,
            format!(
                "{detail}: building the guest images needs about {}",
                human_bytes(IMAGE_BUILD_BYTES)
            ),
            "free disk space, or choose another --data-dir",
        )
    } else if free < LOW_DISK_BYTES {
        Check::warning(
            name,
            format!("{detail}: each running or paused sandbox keeps its memory in a file here"),
            "free disk space, or choose another --data-dir",
        )
    } else {
        Check::ok(name, detail)
    }
}

/// Whether the data directory's filesystem can reflink, which decides whether a sandbox's
/// first pause and resume copy its RAM (see `sandbox::disk::reflink`).
pub fn reflink(data_dir: &Path) -> Check {
    let name = "RAM files";
    let at = existing_ancestor(data_dir);
    if crate::sandbox::disk::reflink_supported(&at) {
        Check::ok(
            name,
            format!(
                "{} reflinks: no pause or resume copies guest RAM",
                at.display()
            ),
        )
    } else {
        Check::warning(
            name,
            format!(
                "{} cannot reflink (ext4 cannot): a sandbox's first pause writes its whole RAM \
                 to disk and its first resume reads it back",
                at.display()
            ),
            "put the data directory on XFS (mkfs.xfs makes it reflink by default) or btrfs",
        )
    }
}

/// Mode 0700, owned by the agent's user, and no file directly in it open to others (secrets
/// and the SQLite database live there). Start-up sets the modes; a wrong owner fails.
pub fn permissions(data_dir: &Path) -> Check {
    let name = "data dir";
    let shown = data_dir.display();
    let meta = match std::fs::metadata(data_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = existing_ancestor(data_dir);
            return if nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_ok() {
                Check::ok(
                    name,
                    format!("{shown} does not exist yet; start-up creates it with mode 0700"),
                )
            } else {
                Check::fail(
                    name,
                    format!(
                        "{shown} does not exist and {} is not writable",
                        parent.display()
                    ),
                    "create it as root, or choose another --data-dir",
                )
            };
        }
        Err(e) => return Check::fail(name, format!("{shown}: {e}"), "choose another --data-dir"),
    };
    if !meta.is_dir() {
        return Check::fail(
            name,
            format!("{shown} is not a directory"),
            "choose another --data-dir",
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Check::fail(
            name,
            format!(
                "{shown} is owned by uid {}, not by the agent (uid {me})",
                meta.uid()
            ),
            format!("chown {me} {shown}, or choose another --data-dir"),
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    let open_files = files_open_to_others(data_dir);
    if mode & 0o077 != 0 || !open_files.is_empty() {
        let mut what = Vec::new();
        if mode & 0o077 != 0 {
            what.push(format!(
                "{shown} has mode {mode:04o}: other users can look inside"
            ));
        }
        if !open_files.is_empty() {
            what.push(format!(
                "readable by others: {} (secrets or the database)",
                open_files.join(", ")
            ));
        }
        return Check::warning(
            name,
            what.join("; "),
            format!(
                "start-up makes the directory 0700 and the files directly in it 0600; \
                 to close it now: chmod 700 {shown}"
            ),
        );
    }
    Check::ok(name, format!("{shown}: mode 0700, files in it 0600"))
}

/// Names of the regular files directly in `dir` that group or others may read.
fn files_open_to_others(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 != 0)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn images(data_dir: &Path, envd_bin: Option<&Path>) -> Check {
    let name = "images";
    if let Some(built) = images::existing_images(data_dir) {
        let templates: Vec<String> = built
            .templates
            .iter()
            .map(|t| format!("{} ({})", t.name, human_bytes(t.size_bytes)))
            .collect();
        let summary = format!(
            "kernel, initramfs and template {} built",
            templates.join(", ")
        );
        // Images built before the code runner's template existed still start an agent.
        if !built
            .templates
            .iter()
            .any(|t| t.name == images::code_runner::TEMPLATE)
        {
            return Check::warning(
                name,
                format!(
                    "{summary}; the code runner's template {} is not (its creates fail)",
                    images::code_runner::TEMPLATE
                ),
                "wrenn images build",
            );
        }
        return Check::ok(name, summary);
    }
    let envd = envd_bin
        .map(Path::to_path_buf)
        .or_else(images::locate_envd)
        .filter(|p| p.is_file());
    match envd {
        Some(envd) => Check::warning(
            name,
            format!(
                "not built yet: the first start builds them (several minutes), with envd from {}",
                envd.display()
            ),
            "wrenn images build (or let wrenn up / wrenn agent build them)",
        ),
        None => Check::fail(
            name,
            "not built, and no static wrenn-envd to build them with",
            "scripts/build.sh builds it beside wrenn; or set WRENN_ENVD_BIN",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn publish(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
        let mut stamp = path.as_os_str().to_owned();
        stamp.push(".key");
        std::fs::write(stamp, b"k").unwrap();
    }

    #[test]
    fn images_without_the_code_runner_template_are_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("images");
        publish(&img.join("kernel/vmlinux"));
        publish(&img.join("kernel/initrd.img"));
        publish(&img.join("templates/minimal/rootfs.ext4"));
        let c = images(dir.path(), None);
        assert_eq!(c.status, Status::Warning, "{}", c.detail);
        assert!(c.detail.contains("code-runner-beta is not"), "{}", c.detail);
        assert_eq!(c.fix.as_deref(), Some("wrenn images build"));

        publish(&img.join("templates/code-runner-beta/rootfs.ext4"));
        let c = images(dir.path(), None);
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        assert!(
            c.detail.contains("minimal (")
                && c.detail.contains("code-runner-beta (")
                && c.detail.contains("python-interpreter-v0-beta ("),
            "{}",
            c.detail
        );
    }
}
