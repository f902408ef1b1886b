//! `wrenn files put|get`: streamed file transfer through the API's streaming endpoints. Put
//! sends a multipart body (`path`, then `file`) read from disk chunk by chunk; get writes the
//! answer to a temporary file beside the destination and renames it into place only when
//! complete. Neither holds a whole file in memory.

use super::api::{Auth, Failure};
use super::output::{size, Meter};
use super::sandbox::path;
use super::{out, Ctx};
use clap::Subcommand;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use wrenn_types::api::ReadFileRequest;

/// Read size for uploads.
const CHUNK: usize = 256 * 1024;

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Upload LOCAL to REMOTE (an absolute path; ending in `/` keeps LOCAL's name).
    Put {
        /// Sandbox ID.
        id: String,
        local: PathBuf,
        remote: String,
    },
    /// Download REMOTE to LOCAL (a file, an existing directory, or `-` for stdout).
    Get {
        /// Sandbox ID.
        id: String,
        remote: String,
        local: PathBuf,
    },
}

pub async fn run(ctx: &Ctx, cmd: FilesCommand) -> Result<i32, Failure> {
    match cmd {
        FilesCommand::Put { id, local, remote } => put(ctx, &id, &local, &remote).await,
        FilesCommand::Get { id, remote, local } => get(ctx, &id, &remote, &local).await,
    }
}

fn file_name(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

async fn put(ctx: &Ctx, id: &str, local: &Path, remote: &str) -> Result<i32, Failure> {
    let local_err = |e: std::io::Error| Failure::local(format!("{}: {e}", local.display()));
    let file = tokio::fs::File::open(local).await.map_err(local_err)?;
    let meta = file.metadata().await.map_err(local_err)?;
    if !meta.is_file() {
        return Err(Failure::local(format!(
            "{} is not a regular file",
            local.display()
        )));
    }
    let name = file_name(local).unwrap_or_else(|| "file".into());
    let remote = if remote.ends_with('/') {
        format!("{remote}{name}")
    } else {
        remote.to_string()
    };
    if !remote.starts_with('/') {
        return Err(Failure::local(format!(
            "REMOTE must be an absolute path inside the sandbox, got {remote:?}"
        )));
    }
    let len = meta.len();
    let meter = Arc::new(Mutex::new(Meter::new("upload", Some(len))));
    let counted = meter.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
        if let Ok(b) = &chunk {
            if let Ok(mut m) = counted.lock() {
                m.add(b.len() as u64);
            }
        }
        chunk
    });
    let part = Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
        .file_name(name)
        .mime_str("application/octet-stream")
        .map_err(|e| Failure::local(e.to_string()))?;
    let form = Form::new().text("path", remote.clone()).part("file", part);
    let rb = ctx
        .api
        .request(Method::POST, &path(id, "/files/stream/write"), Auth::Key)?
        .multipart(form);
    let result = ctx.api.send(rb).await;
    if let Ok(m) = meter.lock() {
        if result.is_ok() {
            m.finish();
        } else if super::output::stderr_is_terminal() {
            eprintln!();
        }
    }
    result?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({"path": remote, "size_bytes": len}));
    } else {
        out(&format!("Uploaded {} to {id}:{remote}.\n", size(len)));
    }
    Ok(0)
}

async fn get(ctx: &Ctx, id: &str, remote: &str, local: &Path) -> Result<i32, Failure> {
    let rb = ctx
        .api
        .request(Method::POST, &path(id, "/files/stream/read"), Auth::Key)?
        .json(&ReadFileRequest {
            path: remote.to_string(),
        });
    let resp = ctx.api.send(rb).await?;
    let total = resp.content_length();
    let mut body = resp.bytes_stream();

    if local == Path::new("-") {
        let mut stdout = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ctx.api.transport(e))?;
            stdout
                .write_all(&chunk)
                .await
                .map_err(|e| Failure::local(format!("write stdout: {e}")))?;
        }
        stdout.flush().await.ok();
        return Ok(0);
    }

    let dest = if local.is_dir() {
        let name = Path::new(remote)
            .file_name()
            .ok_or_else(|| Failure::local(format!("{remote:?} names no file")))?;
        local.join(name)
    } else {
        local.to_path_buf()
    };
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Failure::local(format!("{what} {}: {e}", p.display()))
    };
    let tmp = tempfile::Builder::new()
        .prefix(".wrenn-download-")
        .tempfile_in(&dir)
        .map_err(|e| io("create a temporary file in", &dir, e))?;
    let std_file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| io("open", tmp.path(), e))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut meter = Meter::new("download", total);
    let mut moved = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                if super::output::stderr_is_terminal() {
                    eprintln!();
                }
                // The partial temporary file is removed when `tmp` drops.
                return Err(ctx.api.transport(e));
            }
        };
        file.write_all(&chunk)
            .await
            .map_err(|e| io("write", tmp.path(), e))?;
        moved += chunk.len() as u64;
        meter.add(chunk.len() as u64);
    }
    file.flush().await.map_err(|e| io("write", tmp.path(), e))?;
    file.sync_all()
        .await
        .map_err(|e| io("write", tmp.path(), e))?;
    meter.finish();
    if let Some(t) = total {
        if t != moved {
            return Err(Failure::local(format!(
                "download cut short: got {moved} of {t} bytes"
            )));
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(&dest)
        .map_err(|e| io("rename into", &dest, e.error))?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({"path": dest, "size_bytes": moved}));
    } else {
        out(&format!(
            "Downloaded {id}:{remote} ({}) to {}.\n",
            size(moved),
            dest.display()
        ));
    }
    Ok(0)
}
