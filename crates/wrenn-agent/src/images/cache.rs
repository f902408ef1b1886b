//! The on-disk layout of built images and the cache rules around it: cache keys (a hash of
//! every input of an artifact), key stamps beside published artifacts, atomic publication by
//! rename, the build lock, and removal of temporary directories left by a crashed build.
//! It knows nothing about what the artifacts contain.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageError;

/// Paths of everything the builder keeps under `<data>/images`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data>/images`
    pub root: PathBuf,
}

impl Layout {
    /// The layout under the data directory `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("images"),
        }
    }
    /// `<data>/images/kernel/vmlinux`
    pub fn kernel(&self) -> PathBuf {
        self.root.join("kernel").join("vmlinux")
    }
    /// `<data>/images/kernel/initrd.img`
    pub fn initrd(&self) -> PathBuf {
        self.root.join("kernel").join("initrd.img")
    }
    /// `<data>/images/templates/<name>/rootfs.ext4`
    pub fn template_rootfs(&self, name: &str) -> PathBuf {
        self.root.join("templates").join(name).join("rootfs.ext4")
    }
    /// `<data>/images/cache`: intermediate results (the debootstrap base trees).
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// `<data>/images/tmp`: work directories of the build in progress, nothing else.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// `<data>/images/apt-resolved`: the package versions apt resolved last, with the
    /// fingerprint of apt's state they were resolved in.
    pub fn apt_memo(&self) -> PathBuf {
        self.root.join("apt-resolved")
    }
    /// `<data>/images/.lock`: held by the one build running.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }
}

/// Builds a cache key: SHA-256 over named, length-framed fields, so no two different
/// field lists give the same key.
#[derive(Clone)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// A key for the artifact `kind` (`kernel`, `initrd`, …).
    pub fn new(kind: &str) -> Self {
        let mut b = Self(Sha256::new());
        b.push(b"wrenn-image-key/1");
        b.push(kind.as_bytes());
        b
    }

    fn push(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Adds one named input.
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.push(name.as_bytes());
        self.push(value.as_ref());
        self
    }

    /// The key as 64 hex digits.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// SHA-256 of a file's contents, as hex.
pub fn file_sha256(path: &Path) -> Result<String, ImageError> {
    let mut f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| ImageError::io("read", path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// The stamp file that records the key of a published artifact.
pub fn stamp_path(artifact: &Path) -> PathBuf {
    let mut s = artifact.as_os_str().to_owned();
    s.push(".key");
    PathBuf::from(s)
}

/// True when `artifact` exists and was published with exactly `key`.
pub fn is_current(artifact: &Path, key: &str) -> bool {
    artifact.exists() && fs::read_to_string(stamp_path(artifact)).is_ok_and(|s| s.trim() == key)
}

/// True when `artifact` exists and has a stamp (it was published completely).
pub fn is_published(artifact: &Path) -> bool {
    artifact.exists() && stamp_path(artifact).exists()
}

/// Moves the finished file `built` (inside the tmp dir, same filesystem) to `artifact` and
/// stamps it with `key`. The old stamp goes first, so a crash in between leaves an artifact
/// without a stamp, which the next run rebuilds.
pub fn publish_file(built: &Path, artifact: &Path, key: &str) -> Result<(), ImageError> {
    let parent = artifact.parent().expect("artifact paths have a parent");
    fs::create_dir_all(parent).map_err(|e| ImageError::io("create", parent, e))?;
    let stamp = stamp_path(artifact);
    match fs::remove_file(&stamp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("remove", &stamp, e)),
    }
    fs::rename(built, artifact).map_err(|e| ImageError::io("rename into", artifact, e))?;
    let tmp_stamp = built.with_extension("key-tmp");
    write_synced(&tmp_stamp, key.as_bytes())?;
    fs::rename(&tmp_stamp, &stamp).map_err(|e| ImageError::io("rename into", &stamp, e))
}

/// Writes `bytes` to `path` and flushes it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut f = File::create(path).map_err(|e| ImageError::io("create", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ImageError::io("write", path, e))
}

/// Exclusive lock on the image directory, held for the whole build and released on drop.
pub struct BuildLock {
    _lock: nix::fcntl::Flock<File>,
}

/// Takes the build lock, waiting for another build to finish first.
pub fn lock(layout: &Layout) -> Result<BuildLock, ImageError> {
    let path = layout.lock_file();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ImageError::io("open", &path, e))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| ImageError::io("lock", &path, io::Error::from(errno)))?;
    Ok(BuildLock { _lock: lock })
}

/// Mount points at or below `dir` in a `/proc/self/mounts` text, deepest first.
pub fn mounts_under(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|mp| PathBuf::from(unescape_mount_path(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undoes the octal escapes (`\040` for a space) of paths in `/proc/self/mounts`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount below `dir` (debootstrap mounts /proc, /sys and maybe /dev in its
/// target; a build killed mid-way leaves them). Removing a tree with a host mount inside it
/// would delete through the mount, so this runs before any removal of build directories.
pub fn unmount_under(dir: &Path) -> Result<(), ImageError> {
    let read = || {
        fs::read_to_string("/proc/self/mounts")
            .map_err(|e| ImageError::io("read", Path::new("/proc/self/mounts"), e))
    };
    for mp in mounts_under(&read()?, dir) {
        crate::cmd::run("umount", [std::ffi::OsStr::new("-l"), mp.as_os_str()])
            .map_err(ImageError::command)?;
    }
    let left = mounts_under(&read()?, dir);
    if let Some(mp) = left.first() {
        return Err(ImageError::io(
            "unmount",
            mp,
            io::Error::other("still mounted; refusing to delete below it"),
        ));
    }
    Ok(())
}

/// Removes whatever an interrupted build left in the tmp dir (unmounting anything mounted
/// inside it first). Call with the lock held.
pub fn clean_stale(layout: &Layout) -> Result<(), ImageError> {
    let tmp = layout.tmp_dir();
    if !tmp.exists() {
        return Ok(());
    }
    unmount_under(&tmp)?;
    match fs::remove_dir_all(&tmp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("remove", &tmp, e)),
    }
}

/// Removes the entries of `dir` whose names start with `prefix`, except `keep`.
pub fn remove_siblings(dir: &Path, prefix: &str, keep: &Path) -> Result<(), ImageError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("list", dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path != keep && name.to_string_lossy().starts_with(prefix) {
            let res = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.map_err(|e| ImageError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_field_and_its_framing() {
        let a = KeyBuilder::new("k")
            .field("x", "ab")
            .field("y", "c")
            .finish();
        let same = KeyBuilder::new("k")
            .field("x", "ab")
            .field("y", "c")
            .finish();
        let shifted = KeyBuilder::new("k")
            .field("x", "a")
            .field("y", "bc")
            .finish();
        let renamed = KeyBuilder::new("k")
            .field("x", "ab")
            .field("z", "c")
            .finish();
        let other_kind = KeyBuilder::new("j")
            .field("x", "ab")
            .field("y", "c")
            .finish();
        assert_eq!(a, same);
        assert_eq!(a.len(), 64);
        assert_ne!(a, shifted);
        assert_ne!(a, renamed);
        assert_ne!(a, other_kind);
    }

    #[test]
    fn published_artifact_is_current_only_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let built = dir.path().join("built");
        fs::write(&built, b"kernel").unwrap();
        let target = layout.kernel();
        assert!(!is_current(&target, "k1"));
        publish_file(&built, &target, "k1").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"kernel");
        assert!(is_current(&target, "k1"));
        assert!(!is_current(&target, "k2"));
        assert!(is_published(&target));

        // An artifact whose stamp is gone (crash between rename and stamp) is not current.
        fs::remove_file(stamp_path(&target)).unwrap();
        assert!(!is_current(&target, "k1"));
        assert!(!is_published(&target));
    }

    #[test]
    fn stale_temp_dirs_are_removed_and_artifacts_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let half_built = layout.tmp_dir().join("rootfs-123/staging/usr");
        fs::create_dir_all(&half_built).unwrap();
        fs::write(half_built.join("file"), b"x").unwrap();
        let built = dir.path().join("built");
        fs::write(&built, b"kernel").unwrap();
        publish_file(&built, &layout.kernel(), "k").unwrap();

        clean_stale(&layout).unwrap();
        assert!(!layout.tmp_dir().exists());
        assert!(is_current(&layout.kernel(), "k"));
        // Nothing to clean is fine too.
        clean_stale(&layout).unwrap();
    }

    #[test]
    fn old_cache_entries_are_removed_but_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["base-old", "base-new", "other"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        remove_siblings(dir.path(), "base-", &dir.path().join("base-new")).unwrap();
        assert!(!dir.path().join("base-old").exists());
        assert!(dir.path().join("base-new").exists());
        assert!(dir.path().join("other").exists());
    }

    #[test]
    fn mounts_below_a_dir_are_found_deepest_first() {
        let mounts = "proc /proc proc rw 0 0\n\
proc /data/images/tmp/base/root/proc proc rw 0 0\n\
sysfs /data/images/tmp/base/root/sys sysfs rw 0 0\n\
devpts /data/images/tmp/base/root/dev/pts devpts rw 0 0\n\
tmpfs /data/images/tmp/base/root/dev tmpfs rw 0 0\n\
tmpfs /data/images/tmpfoo tmpfs rw 0 0\n\
tmpfs /data/images/tmp/with\\040space tmpfs rw 0 0\n";
        let found = mounts_under(mounts, Path::new("/data/images/tmp"));
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(found[0], Path::new("/data/images/tmp/base/root/dev/pts"));
        assert!(found.contains(&PathBuf::from("/data/images/tmp/with space")));
        assert!(!found.contains(&PathBuf::from("/data/images/tmpfoo")));
        let dev = found.iter().position(|p| p.ends_with("root/dev")).unwrap();
        assert!(dev > 0, "/dev/pts must be unmounted before /dev");
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::create_dir_all(&layout.root).unwrap();
        let held = lock(&layout).unwrap();
        let f = File::options()
            .write(true)
            .open(layout.lock_file())
            .unwrap();
        let second = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock);
        assert!(second.is_err(), "a second build got the lock");
        drop(held);
        let f = File::options()
            .write(true)
            .open(layout.lock_file())
            .unwrap();
        assert!(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok());
    }
}
