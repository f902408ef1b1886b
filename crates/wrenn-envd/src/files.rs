//! Reading and writing guest files by streaming (`GET` / `PUT /files?path=`).
//!
//! A write goes to a temporary file in the target's directory, is fsynced and then renamed
//! over the target, so an upload cut short never leaves a partial file and never replaces the
//! old one. Nothing here holds a whole file in memory. This module touches only the path it is
//! given and the directories it has to create for it.

use crate::users::{User, UserError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

/// Longest path accepted (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;
/// Mode of a newly created file (an existing file's mode is kept).
const NEW_FILE_MODE: u32 = 0o644;

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path is not absolute, contains NUL, is too long or names no file.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// Nothing exists at the path.
    #[error("no such file: {0}")]
    NotFound(String),
    /// Something exists at the path (a directory to be created).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The path names a directory where a file was expected.
    #[error("{0} is a directory")]
    IsADirectory(String),
    /// A component of the path that must be a directory is a file.
    #[error("a parent of {0} is not a directory")]
    NotADirectory(String),
    /// The daemon is not allowed to access the path.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The owner requested for the file does not exist.
    #[error(transparent)]
    User(#[from] UserError),
    /// The upload is larger than the daemon's configured limit.
    #[error("upload larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The guest's disk is full.
    #[error("no space left on the device writing {0}")]
    NoSpace(String),
    /// The request body ended with an error (the client went away mid-upload).
    #[error("upload did not complete: {0}")]
    Upload(String),
    /// Any other I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> FileError {
    let p = path.display().to_string();
    match source.raw_os_error() {
        Some(libc::ENOENT) => FileError::NotFound(p),
        Some(libc::EACCES | libc::EPERM) => FileError::PermissionDenied(p),
        Some(libc::EISDIR) => FileError::IsADirectory(p),
        Some(libc::ENOTDIR) => FileError::NotADirectory(p),
        Some(libc::ENOSPC | libc::EDQUOT) => FileError::NoSpace(p),
        _ => FileError::Io {
            op,
            path: p,
            source,
        },
    }
}

/// Checks a path from a request: absolute, no NUL, bounded, naming a file (not ending in `/`).
pub fn parse_path(raw: &str) -> Result<PathBuf, FileError> {
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
    let path = PathBuf::from(raw);
    if raw.ends_with('/') || path.file_name().is_none() {
        return Err(FileError::InvalidPath(format!(
            "{raw} does not name a file"
        )));
    }
    Ok(path)
}

/// Opens a regular file for streaming out; returns it with its length.
pub async fn open_read(path: &Path) -> Result<(tokio::fs::File, u64), FileError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_err("open", path, e))?;
    let meta = file.metadata().await.map_err(|e| io_err("stat", path, e))?;
    if meta.is_dir() {
        return Err(FileError::IsADirectory(path.display().to_string()));
    }
    Ok((file, meta.len()))
}

/// A temporary upload file that is removed unless it was renamed into place, also when the
/// request future is dropped midway.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(path = %self.path.display(), "removing unfinished upload");
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the name within NAME_MAX even for a long target name.
    let short: String = name.chars().take(128).collect();
    target.with_file_name(format!(".{short}.wrenn-upload.{}.{n}", std::process::id()))
}

fn chown(path: &Path, owner: Option<&User>) -> Result<(), FileError> {
    if let Some(u) = owner {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(|e| io_err("chown", path, e))?;
    }
    Ok(())
}

/// Creates the missing directories above `path`, owned by `owner` when given.
async fn create_parents(path: &Path, owner: Option<&User>) -> Result<(), FileError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let mut missing = Vec::new();
    let mut dir = parent;
    loop {
        match tokio::fs::metadata(dir).await {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(FileError::NotADirectory(path.display().to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                missing.push(dir.to_path_buf());
                match dir.parent() {
                    Some(p) => dir = p,
                    None => break,
                }
            }
            Err(e) => return Err(io_err("stat", dir, e)),
        }
    }
    for dir in missing.iter().rev() {
        match tokio::fs::create_dir(dir).await {
            Ok(()) => chown(dir, owner)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("mkdir", dir, e)),
        }
    }
    Ok(())
}

/// Streams `body` into `path` atomically; returns the number of bytes written.
pub async fn write<S, E>(
    path: &Path,
    body: S,
    owner: Option<&User>,
    limit: Option<u64>,
) -> Result<u64, FileError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mode = match tokio::fs::metadata(path).await {
        Ok(m) if m.is_dir() => return Err(FileError::IsADirectory(path.display().to_string())),
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == ErrorKind::NotFound => NEW_FILE_MODE,
        Err(e) => return Err(io_err("stat", path, e)),
    };
    create_parents(path, owner).await?;

    let tmp_path = temp_path(path);
    let std_file = {
        let p = tmp_path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&p)
        })
        .await
        .map_err(|e| io_err("create", &tmp_path, std::io::Error::other(e)))?
        .map_err(|e| io_err("create", &tmp_path, e))?
    };
    let mut tmp = TempFile {
        path: tmp_path,
        armed: true,
    };
    let mut file = tokio::fs::File::from_std(std_file);

    let mut written: u64 = 0;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| FileError::Upload(e.to_string()))?;
        written += chunk.len() as u64;
        if let Some(limit) = limit {
            if written > limit {
                return Err(FileError::TooLarge { limit });
            }
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| io_err("write", &tmp.path, e))?;
    }
    file.flush()
        .await
        .map_err(|e| io_err("write", &tmp.path, e))?;
    file.sync_all()
        .await
        .map_err(|e| io_err("fsync", &tmp.path, e))?;
    drop(file);
    // The mode given at creation is reduced by the umask; set it exactly.
    tokio::fs::set_permissions(&tmp.path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|e| io_err("chmod", &tmp.path, e))?;
    chown(&tmp.path, owner)?;
    tokio::fs::rename(&tmp.path, path)
        .await
        .map_err(|e| io_err("rename", path, e))?;
    tmp.armed = false;

    // Make the rename itself durable.
    if let Some(parent) = path.parent().map(Path::to_path_buf) {
        let synced =
            tokio::task::spawn_blocking(move || std::fs::File::open(&parent)?.sync_all()).await;
        if let Ok(Err(e)) = synced {
            tracing::warn!(path = %path.display(), err = %e, "fsync of directory failed");
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_file_paths() {
        assert!(parse_path("/tmp/x").is_ok());
        for bad in ["tmp/x", "", "/tmp/x/", "/", "/tmp/..", "/a\0b"] {
            assert!(
                matches!(parse_path(bad), Err(FileError::InvalidPath(_))),
                "{bad:?} accepted"
            );
        }
        assert!(parse_path(&format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn temp_name_is_hidden_beside_the_target() {
        let t = temp_path(Path::new("/srv/data/report.csv"));
        assert_eq!(t.parent(), Some(Path::new("/srv/data")));
        let name = t.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(name.starts_with(".report.csv.wrenn-upload."), "{name}");
    }
}
