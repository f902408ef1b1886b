//! Directory operations on guest paths (`POST /files/list`, `/files/mkdir`, `/files/remove`):
//! listing a directory some levels deep, creating a directory with its parents, removing a
//! file, link or directory tree. Symbolic links are reported, never followed. Listings are
//! bounded ([`MAX_LIST_DEPTH`], [`MAX_LIST_ENTRIES`]). This module touches only the path it is
//! given (and, for a removal, what is under it).

use crate::files::{io_err, FileError};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wrenn_types::fs::{EntryType, FileEntry, ListDirResponse, MAX_LIST_DEPTH, MAX_LIST_ENTRIES};

/// Longest path accepted (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

/// Checks a path from a request: absolute, no NUL, bounded. Unlike a file path it may name
/// a directory (`/`, a trailing `/`).
pub fn parse_any_path(raw: &str) -> Result<PathBuf, FileError> {
    if raw.contains('\0') {
        return Err(FileError::InvalidPath("path contains a NUL byte".into()));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(FileError::InvalidPath(format!(
            "path longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if !raw.starts_with('/') {
        return Err(FileError::InvalidPath(format!("{raw} is not absolute")));
    }
    Ok(PathBuf::from(raw))
}

/// Owner and group names, read once per request from `/etc/passwd` and `/etc/group`.
struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn load() -> Self {
        Self {
            users: id_names(Path::new("/etc/passwd")),
            groups: id_names(Path::new("/etc/group")),
        }
    }

    fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// `name:x:id:…` lines of a passwd or group file, by id; an unreadable file gives none.
fn id_names(file: &Path) -> HashMap<u32, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        })
        .collect()
}

/// `ls -l` style permissions: the type letter and the nine permission letters, with
/// setuid, setgid and sticky shown as `ls` does.
pub fn permissions_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    let special = [
        (libc::S_ISUID, 's', 'S'),
        (libc::S_ISGID, 's', 'S'),
        (libc::S_ISVTX, 't', 'T'),
    ];
    for (i, (bit, set_x, set_no_x)) in special.into_iter().enumerate() {
        let shift = 6 - 3 * i as u32;
        let rwx = (mode >> shift) & 7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        let x = rwx & 1 != 0;
        s.push(match (mode & bit != 0, x) {
            (true, true) => set_x,
            (true, false) => set_no_x,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// The entry for `path`, whose metadata (not following a link) is `meta`.
fn entry(path: &Path, meta: &std::fs::Metadata, names: &Names) -> FileEntry {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        EntryType::Symlink
    } else if ft.is_dir() {
        EntryType::Directory
    } else {
        EntryType::File
    };
    let symlink_target = ft
        .is_symlink()
        .then(|| std::fs::read_link(path).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    let mode = meta.permissions().mode();
    FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode,
        permissions: permissions_string(mode),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_at: meta.mtime(),
        symlink_target,
    }
}

/// Lists `dir` `depth` levels deep (0 and 1: its entries only), parents before children,
/// each directory's entries by name. Stops at [`MAX_LIST_ENTRIES`] and says so.
pub async fn list(dir: PathBuf, depth: u32) -> Result<ListDirResponse, FileError> {
    if depth > MAX_LIST_DEPTH {
        return Err(FileError::InvalidPath(format!(
            "depth must be at most {MAX_LIST_DEPTH}"
        )));
    }
    tokio::task::spawn_blocking(move || list_blocking(&dir, depth.max(1)))
        .await
        .map_err(|e| FileError::Io {
            op: "list",
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// A path that is no directory (a file, or under one) has no entries to list: not found,
/// as for a missing path, so "is there an `x` in this directory?" has one "no" answer.
fn list_blocking(dir: &Path, depth: u32) -> Result<ListDirResponse, FileError> {
    let no_dir = || FileError::NotFound(format!("{} (not a directory)", dir.display()));
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(no_dir()),
        Err(e) => return Err(io_err("stat", dir, e)),
    };
    if !meta.is_dir() {
        return Err(no_dir());
    }
    let names = Names::load();
    let mut out = ListDirResponse {
        entries: Vec::new(),
        truncated: false,
    };
    walk(dir, depth, &names, &mut out, true)?;
    Ok(out)
}

/// Appends `dir`'s entries (and, `levels` > 1, theirs). A subdirectory that cannot be read
/// is listed without its contents; only the top directory's errors are the caller's.
fn walk(
    dir: &Path,
    levels: u32,
    names: &Names,
    out: &mut ListDirResponse,
    top: bool,
) -> Result<(), FileError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if top => return Err(io_err("read directory", dir, e)),
        Err(_) => return Ok(()),
    };
    let mut children: Vec<PathBuf> = read.filter_map(|d| d.ok().map(|d| d.path())).collect();
    children.sort();
    for child in children {
        if out.entries.len() >= MAX_LIST_ENTRIES {
            out.truncated = true;
            return Ok(());
        }
        let Ok(meta) = std::fs::symlink_metadata(&child) else {
            continue; // gone since the directory was read
        };
        out.entries.push(entry(&child, &meta, names));
        if levels > 1 && meta.is_dir() {
            walk(&child, levels - 1, names, out, false)?;
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents; `AlreadyExists` if something is there already.
pub async fn mkdir(dir: PathBuf) -> Result<FileEntry, FileError> {
    match tokio::fs::symlink_metadata(&dir).await {
        Ok(_) => return Err(FileError::AlreadyExists(dir.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", &dir, e)),
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| io_err("mkdir", &dir, e))?;
    let meta = tokio::fs::symlink_metadata(&dir)
        .await
        .map_err(|e| io_err("stat", &dir, e))?;
    Ok(entry(&dir, &meta, &Names::load()))
}

/// Removes the file or link at `path`, or the directory with everything in it (links
/// inside are removed, not followed). The root directory is refused.
pub async fn remove(path: PathBuf) -> Result<(), FileError> {
    if path.parent().is_none() {
        return Err(FileError::InvalidPath(
            "the root directory cannot be removed".into(),
        ));
    }
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| io_err("stat", &path, e))?;
    let removed = if meta.is_dir() {
        tokio::fs::remove_dir_all(&path).await
    } else {
        tokio::fs::remove_file(&path).await
    };
    removed.map_err(|e| io_err("remove", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn permissions_like_ls() {
        assert_eq!(permissions_string(libc::S_IFREG | 0o755), "-rwxr-xr-x");
        assert_eq!(permissions_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(permissions_string(libc::S_IFREG | 0o4644), "-rwSr--r--");
        assert_eq!(permissions_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
        assert_eq!(permissions_string(libc::S_IFREG | 0o2710), "-rwx--s---");
    }

    #[test]
    fn paths_must_be_absolute() {
        assert!(parse_any_path("/").is_ok());
        assert!(parse_any_path("/tmp/").is_ok());
        assert!(parse_any_path("tmp").is_err());
        assert!(parse_any_path("/a\0b").is_err());
        assert!(parse_any_path(&format!("/{}", "a".repeat(5000))).is_err());
    }

    #[tokio::test]
    async fn list_depth_types_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/deep.txt"), b"x").unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        symlink("a.txt", root.join("link")).unwrap();

        let one = list(root.to_path_buf(), 1).await.unwrap();
        let names: Vec<_> = one.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "d", "link"]);
        assert!(!one.truncated);
        let a = &one.entries[0];
        assert_eq!((a.kind, a.size), (EntryType::File, 5));
        assert_eq!(a.path, root.join("a.txt").to_string_lossy());
        assert!(a.permissions.starts_with('-'));
        assert!(a.modified_at > 0);
        assert_eq!(one.entries[1].kind, EntryType::Directory);
        let link = &one.entries[2];
        assert_eq!(link.kind, EntryType::Symlink);
        assert_eq!(link.symlink_target.as_deref(), Some("a.txt"));
        // depth 0 is the same as 1
        assert_eq!(list(root.to_path_buf(), 0).await.unwrap(), one);

        let three = list(root.to_path_buf(), 3).await.unwrap();
        let paths: Vec<_> = three
            .entries
            .iter()
            .map(|e| {
                e.path
                    .strip_prefix(&*root.to_string_lossy())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(paths, ["/a.txt", "/d", "/d/e", "/d/e/deep.txt", "/link"]);
        let two = list(root.to_path_buf(), 2).await.unwrap();
        assert_eq!(two.entries.len(), 4, "{:?}", two.entries);

        assert!(matches!(
            list(root.join("missing"), 1).await,
            Err(FileError::NotFound(_))
        ));
        assert!(matches!(
            list(root.join("a.txt"), 1).await,
            Err(FileError::NotFound(_))
        ));
        assert!(matches!(
            list(root.join("a.txt/under"), 1).await,
            Err(FileError::NotFound(_))
        ));
        assert!(matches!(
            list(root.to_path_buf(), MAX_LIST_DEPTH + 1).await,
            Err(FileError::InvalidPath(_))
        ));
    }

    #[tokio::test]
    async fn mkdir_with_parents_then_already_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x/y/z");
        let e = mkdir(dir.clone()).await.unwrap();
        assert_eq!((e.kind, e.name.as_str()), (EntryType::Directory, "z"));
        assert!(e.permissions.starts_with('d'));
        assert!(dir.is_dir());
        assert!(matches!(mkdir(dir).await, Err(FileError::AlreadyExists(_))));
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        assert!(matches!(
            mkdir(tmp.path().join("f/sub")).await,
            Err(FileError::NotADirectory(_))
        ));
    }

    #[tokio::test]
    async fn remove_files_links_and_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("tree/sub")).unwrap();
        std::fs::write(root.join("tree/sub/f"), b"1").unwrap();
        std::fs::write(root.join("keep"), b"k").unwrap();
        // A link inside the tree to a file outside it: removed, not followed.
        symlink(root.join("keep"), root.join("tree/to-keep")).unwrap();
        std::fs::write(root.join("file"), b"f").unwrap();

        remove(root.join("file")).await.unwrap();
        assert!(!root.join("file").exists());
        remove(root.join("tree")).await.unwrap();
        assert!(!root.join("tree").exists());
        assert_eq!(std::fs::read(root.join("keep")).unwrap(), b"k");
        assert!(matches!(
            remove(root.join("tree")).await,
            Err(FileError::NotFound(_))
        ));
        assert!(matches!(
            remove(PathBuf::from("/")).await,
            Err(FileError::InvalidPath(_))
        ));
    }
}
