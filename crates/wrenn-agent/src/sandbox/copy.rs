//! A snapshot template's copy between hosts, both ends (the control plane relays the bytes):
//! as the source, the template's manifest (every file with its size and SHA-256) and ranged
//! reads of its files; as the receiver, a copy under way in `incoming/<name>/` (its manifest
//! and the bytes held of each file, kept across restarts so an interrupted copy continues),
//! writes at an offset, and the commit that checks every digest and publishes the template in
//! one rename ([`publish_dir`]). Nothing under `incoming/` is a template; a file whose digest
//! differs is dropped so it is sent again. It must not change a published template.

use super::records::{self, ImageMeta};
use super::templates::{publish_dir, template_info, FROM_SANDBOX_FILE};
use super::{blocking, io, valid_name, Manager, SandboxError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::Digest;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use wrenn_types::agent::TemplateInfo;
use wrenn_types::copy::{
    CopyFile, CopyHeld, CopyStatus, TemplateManifest, MAX_COPY_BYTES, MAX_COPY_FILES,
};

/// A copy under way that nobody continued for this long is removed by the next copy begun.
const STALE_COPY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Bytes read per chunk of a ranged read.
const READ_CHUNK: usize = 256 * 1024;

/// One copy under way: `incoming/<name>/` with `manifest.json`, `lock` and `files/`.
struct Incoming {
    dir: PathBuf,
}

impl Incoming {
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    fn files(&self) -> PathBuf {
        self.dir.join("files")
    }
    fn held(&self, file: &str) -> u64 {
        std::fs::metadata(self.files().join(file)).map_or(0, |m| m.len())
    }
    fn manifest(&self, name: &str) -> Result<TemplateManifest, SandboxError> {
        records::read_json(&self.manifest_path())
            .map_err(|_| SandboxError::NotFound(format!("copy of template {name}")))
    }
}

/// An exclusive hold of one copy under way (an advisory lock on its `lock` file): a second
/// operation on the same copy at once is refused, not interleaved.
struct CopyLock(#[allow(dead_code)] std::fs::File);

fn lock_copy(dir: &Path, name: &str) -> Result<CopyLock, SandboxError> {
    std::fs::create_dir_all(dir).map_err(io("create copy dir"))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(io("open copy lock"))?;
    // SAFETY: flock on a descriptor this function owns; released when it is closed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(SandboxError::Conflict(format!(
            "the copy of template {name} is busy with another request"
        )));
    }
    Ok(CopyLock(f))
}

/// SHA-256 of a file, lowercase hex, read in chunks.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The manifest of the template directory `dir`: its regular files (not the host's own
/// record of the sandbox it came from), each hashed.
fn manifest_of(name: &str, dir: &Path) -> Result<TemplateManifest, SandboxError> {
    let mut files = Vec::new();
    let mut total: u64 = 0;
    for e in std::fs::read_dir(dir).map_err(io("list template"))? {
        let e = e.map_err(io("list template"))?;
        let fname = e.file_name().to_string_lossy().into_owned();
        if fname == FROM_SANDBOX_FILE {
            continue;
        }
        let meta = e
            .path()
            .symlink_metadata()
            .map_err(io("stat template file"))?;
        if !meta.is_file() || !valid_name(&fname) {
            return Err(SandboxError::Internal(format!(
                "template {name} holds {fname:?}, which is not a plain file and cannot be copied"
            )));
        }
        total = total.saturating_add(meta.len());
        files.push(CopyFile {
            sha256: sha256_file(&e.path()).map_err(io("hash template file"))?,
            name: fname,
            size: meta.len(),
        });
        if files.len() > MAX_COPY_FILES || total > MAX_COPY_BYTES {
            return Err(SandboxError::BadRequest(format!(
                "template {name} is over the limits of a copy ({MAX_COPY_FILES} files, \
                 {MAX_COPY_BYTES} bytes)"
            )));
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TemplateManifest {
        name: name.to_string(),
        files,
    })
}

impl Manager {
    fn incoming(&self, name: &str) -> Result<Incoming, SandboxError> {
        if !valid_name(name) {
            return Err(SandboxError::BadRequest(format!(
                "invalid template name {name:?}"
            )));
        }
        Ok(Incoming {
            dir: self.cfg.data_dir.join("incoming").join(name),
        })
    }

    /// A published snapshot template's directory (never a base template's).
    fn snapshot_template_dir(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let dir = self.template_dir(name);
        if !valid_name(name)
            || self.base_template(name).is_some()
            || !dir.join("meta.json").exists()
        {
            return Err(SandboxError::TemplateNotFound(name.to_string()));
        }
        Ok(dir)
    }

    /// Every file of the snapshot template `name` with its size and SHA-256.
    pub async fn template_manifest(&self, name: &str) -> Result<TemplateManifest, SandboxError> {
        let dir = self.snapshot_template_dir(name)?;
        let name = name.to_string();
        blocking("hash template", move || manifest_of(&name, &dir)).await
    }

    /// The file `file` of the snapshot template `name` from byte `offset` on: its length
    /// and its bytes, read as they are sent.
    pub async fn read_template_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
    ) -> Result<(u64, impl Stream<Item = std::io::Result<Bytes>>), SandboxError> {
        let dir = self.snapshot_template_dir(name)?;
        let path = dir.join(file);
        let plain = valid_name(file)
            && file != FROM_SANDBOX_FILE
            && path.symlink_metadata().is_ok_and(|m| m.is_file());
        if !plain {
            return Err(SandboxError::NotFound(format!(
                "file {file} of template {name}"
            )));
        }
        let mut f = std::fs::File::open(&path).map_err(io("open template file"))?;
        let len = f.metadata().map_err(io("stat template file"))?.len();
        if offset > len {
            return Err(SandboxError::BadRequest(format!(
                "offset {offset} is past the end of {file} ({len} bytes)"
            )));
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(io("seek template file"))?;
        let reader = tokio::fs::File::from_std(f);
        Ok((
            len - offset,
            tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK),
        ))
    }

    /// Starts or continues receiving the template of `manifest`: what is held of each file.
    pub async fn begin_copy(
        &self,
        manifest: &TemplateManifest,
    ) -> Result<CopyStatus, SandboxError> {
        manifest.validate().map_err(SandboxError::BadRequest)?;
        let name = &manifest.name;
        if self.base_template(name).is_some() || self.template_dir(name).exists() {
            return Err(SandboxError::AlreadyExists(format!(
                "template {name} already exists on this host"
            )));
        }
        self.remove_stale_copies(name);
        let inc = self.incoming(name)?;
        let _l = lock_copy(&inc.dir, name)?;
        let same = inc.manifest(name).is_ok_and(|m| &m == manifest);
        if !same {
            let _ = std::fs::remove_dir_all(inc.files());
            records::write_json(&inc.manifest_path(), manifest).map_err(io("write manifest"))?;
        }
        std::fs::create_dir_all(inc.files()).map_err(io("create copy dir"))?;
        // Anything the manifest does not name has no place here.
        if let Ok(rd) = std::fs::read_dir(inc.files()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if manifest.file(&n).is_none() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(wrenn_agent_api::status_of(manifest, |f| inc.held(f)))
    }

    /// Appends `body` to `file` of the copy of `name`, which must hold exactly `offset`
    /// bytes of it. What arrived before a broken body is kept, so the copy continues from it.
    pub async fn receive_copy_file<S>(
        &self,
        name: &str,
        file: &str,
        offset: u64,
        mut body: S,
    ) -> Result<CopyHeld, SandboxError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        let inc = self.incoming(name)?;
        if !inc.dir.exists() {
            return Err(SandboxError::NotFound(format!("copy of template {name}")));
        }
        let _l = lock_copy(&inc.dir, name)?;
        let manifest = inc.manifest(name)?;
        let size = manifest
            .file(file)
            .ok_or_else(|| SandboxError::NotFound(format!("file {file} of the copy of {name}")))?
            .size;
        let path = inc.files().join(file);
        let mut held = inc.held(file);
        if held != offset {
            return Err(SandboxError::Conflict(format!(
                "the copy holds {held} bytes of {file}, not {offset}"
            )));
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io("open copy file"))?;
        let mut failed = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(SandboxError::Io {
                        context: "receive copy file".into(),
                        source: e,
                    });
                    break;
                }
            };
            if held + chunk.len() as u64 > size {
                failed = Some(SandboxError::BadRequest(format!(
                    "{file} of template {name} is {size} bytes; more was sent"
                )));
                break;
            }
            if let Err(e) = out.write_all(&chunk).await {
                failed = Some(SandboxError::Io {
                    context: "write copy file".into(),
                    source: e,
                });
                break;
            }
            held += chunk.len() as u64;
        }
        // What was written stays (and is on disk) whatever happened to the body.
        let flushed = async {
            out.flush().await?;
            out.sync_data().await
        }
        .await;
        if let Some(e) = failed {
            return Err(e);
        }
        flushed.map_err(io("sync copy file"))?;
        Ok(CopyHeld {
            name: file.to_string(),
            held: inc.held(file),
        })
    }

    /// Checks every file of the copy of `name` against its manifest and publishes the
    /// template in one rename. A file whose digest differs is removed (to be sent again) and
    /// the commit is a conflict.
    pub async fn commit_copy(&self, name: &str) -> Result<TemplateInfo, SandboxError> {
        let inc = self.incoming(name)?;
        if !inc.dir.exists() {
            return Err(SandboxError::NotFound(format!("copy of template {name}")));
        }
        let _l = lock_copy(&inc.dir, name)?;
        let manifest = inc.manifest(name)?;
        let files = inc.files();
        let checked = {
            let (m, files) = (manifest.clone(), files.clone());
            blocking("check copy", move || check_files(&m, &files)).await?
        };
        if !checked.is_empty() {
            return Err(SandboxError::Conflict(format!(
                "the copy of template {name} is not complete or not intact: {}",
                checked.join("; ")
            )));
        }
        let meta: ImageMeta = records::read_json(&files.join("meta.json"))
            .map_err(|_| SandboxError::BadRequest(format!("the copy of {name} has no record")))?;
        let complete = meta.name == *name
            && meta.layers.iter().all(|l| manifest.file(l).is_some())
            && ["mem", "state"].iter().all(|f| manifest.file(f).is_some());
        if !complete {
            return Err(SandboxError::BadRequest(format!(
                "the copy of {name} is not a snapshot template of that name"
            )));
        }
        let _g = self.template_lock.lock().await;
        let target = self.template_dir(name);
        if target.exists() {
            return Err(SandboxError::AlreadyExists(format!(
                "template {name} already exists on this host"
            )));
        }
        std::fs::create_dir_all(self.cfg.data_dir.join("templates"))
            .map_err(io("create templates dir"))?;
        publish_dir(&files, &target)?;
        drop(_l);
        let _ = std::fs::remove_dir_all(&inc.dir);
        Ok(template_info(&meta, &target))
    }

    /// Removes what the copy of `name` holds; nothing published is touched.
    pub async fn abort_copy(&self, name: &str) -> Result<(), SandboxError> {
        let inc = self.incoming(name)?;
        if !inc.dir.exists() {
            return Ok(());
        }
        let _l = lock_copy(&inc.dir, name)?;
        let aside = self
            .cfg
            .data_dir
            .join("incoming")
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::rename(&inc.dir, &aside).map_err(io("retire copy"))?;
        let _ = std::fs::remove_dir_all(aside);
        Ok(())
    }

    /// Removes copies under way (other than `keep`) that nobody continued for a day.
    fn remove_stale_copies(&self, keep: &str) {
        let Ok(rd) = std::fs::read_dir(self.cfg.data_dir.join("incoming")) else {
            return;
        };
        for e in rd.flatten() {
            let stale = e
                .path()
                .join("manifest.json")
                .metadata()
                .or_else(|_| e.metadata())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age > STALE_COPY);
            if e.file_name() != keep && stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// What is wrong with the files of a copy: a file short of its size, or one whose digest
/// differs (removed, so it is sent again). Empty when all is well.
fn check_files(m: &TemplateManifest, dir: &Path) -> Result<Vec<String>, SandboxError> {
    let mut wrong = Vec::new();
    for f in &m.files {
        let path = dir.join(&f.name);
        let len = std::fs::metadata(&path).map_or(0, |x| x.len());
        if len != f.size {
            wrong.push(format!("{} holds {len} of {} bytes", f.name, f.size));
            continue;
        }
        if sha256_file(&path).map_err(io("hash copy file"))? != f.sha256 {
            let _ = std::fs::remove_file(&path);
            wrong.push(format!("{} does not match its SHA-256", f.name));
        }
    }
    Ok(wrong)
}
