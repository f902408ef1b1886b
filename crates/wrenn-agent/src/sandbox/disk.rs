//! Disk layers: qcow2 overlays chained by relative backing names, shared between snapshot
//! images and sandboxes by hard links. A layer is never written once something is layered on
//! it, so a link is as good as a copy, costs nothing, and keeps the file alive when the
//! template that named it is deleted or overwritten.

use crate::cmd::{self, CmdError};
use std::path::Path;

/// Longest chain kept; a snapshot deeper than this is flattened into one layer.
pub const MAX_CHAIN: usize = 6;

/// Hard-links each of `layers` from `from` into `to`.
pub fn link_layers(from: &Path, to: &Path, layers: &[String]) -> std::io::Result<()> {
    for l in layers {
        link(&from.join(l), &to.join(l))?;
    }
    Ok(())
}

/// Hard-links one file, replacing nothing: an existing target is an error.
pub fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("link {} -> {}: {e}", from.display(), to.display()),
        )
    })
}

/// Makes `to` (which must not exist) a copy of `from` that shares `from`'s blocks until either
/// is written (`FICLONE`, a reflink: XFS made with reflink, the default since xfsprogs 5.1, and
/// btrfs can; ext4 cannot). Takes no time and no space whatever the size. `Ok(false)`: this
/// filesystem (or this pair of directories) cannot, and nothing was made.
pub fn reflink(from: &Path, to: &Path) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let src = std::fs::File::open(from)?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    drop(dst);
    let _ = std::fs::remove_file(to);
    match err.raw_os_error() {
        // Not supported here, across filesystems, or not a regular file pair.
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS) => {
            Ok(false)
        }
        _ => Err(std::io::Error::new(
            err.kind(),
            format!("reflink {} -> {}: {err}", from.display(), to.display()),
        )),
    }
}

/// Whether files in `dir` can be reflinked (see [`reflink`]): tried on two scratch files.
pub fn reflink_supported(dir: &Path) -> bool {
    let a = dir.join(format!(".reflink-probe-{}", std::process::id()));
    let b = a.with_extension("copy");
    let ok = std::fs::write(&a, [0u8; 4096]).is_ok() && reflink(&a, &b).unwrap_or(false);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

/// Creates `dir/name` as a qcow2 overlay on `dir/backing` (named relatively).
pub fn create_overlay(dir: &Path, backing: &str, name: &str) -> Result<(), CmdError> {
    let fmt = if backing.ends_with(".qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let out = dir.join(name);
    let mut c = std::process::Command::new("qemu-img");
    c.current_dir(dir)
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b", backing])
        .arg(&out);
    cmd::output(c, format!("qemu-img create -b {backing} {}", out.display()))?;
    Ok(())
}

/// The guest disk's capacity in MiB: the virtual size (from the qcow2 header) of the
/// sandbox's writable layer `disk-*.qcow2` in `dir`, the same as every layer of its chain.
/// `None` when there is no such layer or its header is unreadable.
pub fn capacity_mb(dir: &Path) -> Option<u64> {
    let layer = std::fs::read_dir(dir).ok()?.flatten().find(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("disk-") && name.ends_with(".qcow2")
    })?;
    qcow2_virtual_size(&layer.path()).map(|b| b / (1024 * 1024))
}

/// Bytes 24..32 of a qcow2 header (after the magic `QFI\xfb`): the virtual size, big-endian.
fn qcow2_virtual_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 32];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if head[..4] != *b"QFI\xfb" {
        return None;
    }
    Some(u64::from_be_bytes(head[24..32].try_into().ok()?))
}

/// Writes the whole chain ending in `top` into one standalone qcow2 `out`.
pub fn flatten(top: &Path, out: &Path) -> Result<(), CmdError> {
    cmd::run(
        "qemu-img",
        [
            "convert".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            top.as_os_str(),
            out.as_os_str(),
        ],
    )?;
    Ok(())
}

/// Creates a sparse file of `mb` MiB for guest RAM.
pub fn create_mem_file(path: &Path, mb: u32) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(u64::from(mb) << 20)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_chain_links_and_flattens() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let base = a.path().join("base.ext4");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        create_overlay(a.path(), "base.ext4", "l1.qcow2").unwrap();
        // Linked into another directory, the chain still resolves (relative backing names).
        link_layers(a.path(), b.path(), &["base.ext4".into(), "l1.qcow2".into()]).unwrap();
        create_overlay(b.path(), "l1.qcow2", "l2.qcow2").unwrap();
        std::fs::remove_dir_all(a.path()).unwrap();
        let info = cmd::run(
            "qemu-img",
            [
                "info",
                "--backing-chain",
                b.path().join("l2.qcow2").to_str().unwrap(),
            ],
        )
        .unwrap();
        let info = String::from_utf8_lossy(&info);
        assert!(info.contains("base.ext4"), "{info}");
        let flat = b.path().join("flat.qcow2");
        flatten(&b.path().join("l2.qcow2"), &flat).unwrap();
        let info = String::from_utf8_lossy(
            &cmd::run("qemu-img", ["info", flat.to_str().unwrap()]).unwrap(),
        )
        .to_string();
        assert!(!info.contains("backing file"), "{info}");
        // An existing link target is refused, never overwritten.
        assert!(link(&b.path().join("l1.qcow2"), &b.path().join("l2.qcow2")).is_err());
    }

    #[test]
    fn capacity_is_the_virtual_size_of_the_writable_layer() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(capacity_mb(d.path()), None);
        let base = std::fs::File::create(d.path().join("base.ext4")).unwrap();
        base.set_len(96 << 20).unwrap();
        create_overlay(d.path(), "base.ext4", "l1.qcow2").unwrap();
        // Not the sandbox's own layer yet: no capacity to report.
        assert_eq!(capacity_mb(d.path()), None);
        create_overlay(d.path(), "l1.qcow2", "disk-1.qcow2").unwrap();
        assert_eq!(capacity_mb(d.path()), Some(96));
        // A file named like a layer that is no qcow2 is not believed.
        let e = tempfile::tempdir().unwrap();
        std::fs::write(e.path().join("disk-1.qcow2"), vec![0u8; 64]).unwrap();
        assert_eq!(capacity_mb(e.path()), None);
    }

    #[test]
    fn mem_file_is_sparse_and_sized() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mem");
        create_mem_file(&p, 64).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(m.blocks() * 512 < 1 << 20);
    }

    #[test]
    fn a_reflink_is_an_independent_copy_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, vec![5u8; 1 << 16]).unwrap();
        if reflink(&a, &b).unwrap() {
            assert_eq!(std::fs::read(&b).unwrap(), vec![5u8; 1 << 16]);
            std::fs::write(&b, b"changed").unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), vec![5u8; 1 << 16]);
            assert!(reflink_supported(d.path()));
        } else {
            assert!(!b.exists(), "a refused reflink leaves no file behind");
            assert!(!reflink_supported(d.path()));
        }
        // An existing target is never overwritten.
        std::fs::write(&b, b"mine").unwrap();
        assert!(reflink(&a, &b).is_err());
        assert_eq!(std::fs::read(&b).unwrap(), b"mine");
    }
}
