//! The simulated agent's [`TemplateCopy`]: a snapshot template travels as `info.json` (its
//! description and its guest files' names), one file per guest file, and a made-up `mem`
//! file (so a copy has enough bytes to be cut in the middle). A copy under way is held in
//! memory, is no template until its commit checks every SHA-256, and a file whose digest
//! differs is dropped. Tests can cut the next ranged read after some bytes (a broken
//! connection) or flip one byte of it (corruption on the way), and see every ranged read.

use super::sim::{SimAgent, SimTemplate};
use super::{AgentApiError, AgentResult, ByteStream, FileBody};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use wrenn_agent_api::TemplateCopy;
use wrenn_types::agent::{AgentErrorCode, TemplateInfo, TemplateKind};
use wrenn_types::copy::{CopyFile, CopyHeld, CopyStatus, TemplateManifest};

/// Size of the made-up RAM file of a simulated template.
pub const SIM_MEM_BYTES: usize = 300 * 1024;
/// Bytes per chunk of a simulated ranged read.
const CHUNK: usize = 64 * 1024;

/// How a simulated template travels: its description and guest path → file name.
#[derive(Serialize, Deserialize)]
struct Travel {
    info: TemplateInfo,
    files: BTreeMap<String, String>,
}

/// The copy side of a simulated agent: copies under way and the faults a test set.
pub(super) struct Copies {
    state: Mutex<CopyState>,
    /// Where committed copies' files are kept.
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct CopyState {
    incoming: HashMap<String, (TemplateManifest, HashMap<String, Vec<u8>>)>,
    /// The next ranged read longer than this ends with an error after this many bytes.
    cut_after: Option<u64>,
    /// This many next ranged reads have one byte flipped.
    corrupt: u32,
    /// Every ranged read served: (template, file, offset).
    reads: Vec<(String, String, u64)>,
}

impl Copies {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::new(CopyState::default()),
            dir: tempfile::Builder::new()
                .prefix("wrenn-sim-copy-")
                .tempdir()?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn err(code: AgentErrorCode, message: impl Into<String>) -> AgentApiError {
    AgentApiError::new(code, message)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

impl SimAgent {
    /// Ends the next ranged read of more than `bytes` bytes this host serves with an error
    /// (a broken connection) after `bytes` bytes.
    pub fn cut_next_template_read(&self, bytes: u64) {
        self.copies.lock().cut_after = Some(bytes);
    }

    /// Flips one byte of each of the next `reads` ranged reads this host serves.
    pub fn corrupt_template_reads(&self, reads: u32) {
        self.copies.lock().corrupt = reads;
    }

    /// Every ranged read this host served, as (template, file, offset).
    pub fn template_reads(&self) -> Vec<(String, String, u64)> {
        self.copies.lock().reads.clone()
    }

    /// Names of the copies under way on this host (none of them a template).
    pub fn copies_under_way(&self) -> Vec<String> {
        let mut v: Vec<String> = self.copies.lock().incoming.keys().cloned().collect();
        v.sort();
        v
    }

    /// The files of the snapshot template `name` as they travel.
    fn travel_files(&self, name: &str) -> AgentResult<BTreeMap<String, Vec<u8>>> {
        let (info, paths) = {
            let st = self.lock();
            let t = st
                .templates
                .get(name)
                .filter(|t| t.info.kind == TemplateKind::Snapshot)
                .ok_or_else(|| {
                    err(
                        AgentErrorCode::TemplateNotFound,
                        format!("template {name} not found"),
                    )
                })?;
            (t.info.clone(), t.files.clone())
        };
        let mut out = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (i, (guest, real)) in paths.iter().enumerate() {
            let bytes =
                std::fs::read(real).map_err(|e| err(AgentErrorCode::Internal, e.to_string()))?;
            names.insert(guest.clone(), format!("g{i}"));
            out.insert(format!("g{i}"), bytes);
        }
        let mem: Vec<u8> = name.bytes().cycle().take(SIM_MEM_BYTES).collect();
        out.insert("mem".into(), mem);
        let travel = serde_json::to_vec(&Travel { info, files: names })
            .map_err(|e| err(AgentErrorCode::Internal, e.to_string()))?;
        out.insert("info.json".into(), travel);
        Ok(out)
    }
}

#[async_trait]
impl TemplateCopy for SimAgent {
    async fn template_manifest(&self, name: &str) -> AgentResult<TemplateManifest> {
        self.faults.answering()?;
        let files = self.travel_files(name)?;
        Ok(TemplateManifest {
            name: name.to_string(),
            files: files
                .iter()
                .map(|(n, b)| CopyFile {
                    name: n.clone(),
                    size: b.len() as u64,
                    sha256: sha256_hex(b),
                })
                .collect(),
        })
    }

    async fn read_template_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
    ) -> AgentResult<FileBody> {
        self.faults.answering()?;
        let mut bytes = self
            .travel_files(name)?
            .remove(file)
            .ok_or_else(|| err(AgentErrorCode::NotFound, format!("file {file} of {name}")))?;
        let start = usize::try_from(offset)
            .ok()
            .filter(|o| *o <= bytes.len())
            .ok_or_else(|| err(AgentErrorCode::BadRequest, "offset past the end"))?;
        let mut rest = bytes.split_off(start);
        let (cut, corrupt) = {
            let mut c = self.copies.lock();
            c.reads.push((name.into(), file.into(), offset));
            let cut = match c.cut_after {
                Some(limit) if (rest.len() as u64) > limit => c.cut_after.take(),
                _ => None,
            };
            let corrupt = c.corrupt > 0;
            c.corrupt = c.corrupt.saturating_sub(1);
            (cut, corrupt)
        };
        if corrupt && !rest.is_empty() {
            let mid = rest.len() / 2;
            rest[mid] ^= 0x5a;
        }
        let len = rest.len() as u64;
        let mut chunks: Vec<std::io::Result<Bytes>> = Vec::new();
        let mut sent = 0usize;
        for c in rest.chunks(CHUNK) {
            if let Some(limit) = cut {
                let room = (limit as usize).saturating_sub(sent);
                if room < c.len() {
                    chunks.push(Ok(Bytes::copy_from_slice(&c[..room])));
                    chunks.push(Err(std::io::Error::other("simulated broken connection")));
                    break;
                }
            }
            sent += c.len();
            chunks.push(Ok(Bytes::copy_from_slice(c)));
        }
        // The break comes a moment after the bytes before it, so they are on their way (as
        // on a connection that drops in the middle of a long transfer).
        let stream = futures_util::stream::iter(chunks).then(|c| async move {
            if c.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            c
        });
        Ok(FileBody::from_stream(Some(len), stream))
    }

    async fn begin_copy(&self, manifest: &TemplateManifest) -> AgentResult<CopyStatus> {
        self.faults.answering()?;
        manifest
            .validate()
            .map_err(|m| err(AgentErrorCode::BadRequest, m))?;
        if self.lock().templates.contains_key(&manifest.name) {
            return Err(err(
                AgentErrorCode::AlreadyExists,
                format!("template {} exists", manifest.name),
            ));
        }
        let mut c = self.copies.lock();
        let entry = c
            .incoming
            .entry(manifest.name.clone())
            .or_insert_with(|| (manifest.clone(), HashMap::new()));
        if entry.0 != *manifest {
            *entry = (manifest.clone(), HashMap::new());
        }
        let held = &entry.1;
        Ok(wrenn_agent_api::status_of(manifest, |f| {
            held.get(f).map_or(0, |b| b.len() as u64)
        }))
    }

    async fn receive_copy_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
        mut body: ByteStream,
    ) -> AgentResult<CopyHeld> {
        self.faults.answering()?;
        let size = {
            let c = self.copies.lock();
            let (m, held) = c
                .incoming
                .get(name)
                .ok_or_else(|| err(AgentErrorCode::NotFound, format!("copy of {name}")))?;
            let f = m
                .file(file)
                .ok_or_else(|| err(AgentErrorCode::NotFound, format!("file {file}")))?;
            let have = held.get(file).map_or(0, |b| b.len() as u64);
            if have != offset {
                return Err(err(
                    AgentErrorCode::Conflict,
                    format!("the copy holds {have} bytes of {file}, not {offset}"),
                ));
            }
            f.size
        };
        // Every chunk is kept as it arrives, so a broken body leaves what came before it.
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| AgentApiError::Transport(e.to_string()))?;
            let mut c = self.copies.lock();
            let held = c
                .incoming
                .get_mut(name)
                .ok_or_else(|| err(AgentErrorCode::NotFound, format!("copy of {name}")))?
                .1
                .entry(file.to_string())
                .or_default();
            if held.len() as u64 + chunk.len() as u64 > size {
                return Err(err(
                    AgentErrorCode::BadRequest,
                    "more bytes than the file has",
                ));
            }
            held.extend_from_slice(&chunk);
        }
        let c = self.copies.lock();
        let held = c
            .incoming
            .get(name)
            .and_then(|(_, h)| h.get(file))
            .map_or(0, |b| b.len() as u64);
        Ok(CopyHeld {
            name: file.to_string(),
            held,
        })
    }

    async fn commit_copy(&self, name: &str) -> AgentResult<TemplateInfo> {
        self.faults.answering()?;
        let (manifest, mut files) = self
            .copies
            .lock()
            .incoming
            .get(name)
            .cloned()
            .ok_or_else(|| err(AgentErrorCode::NotFound, format!("copy of {name}")))?;
        let mut wrong = Vec::new();
        for f in &manifest.files {
            let b = files.get(&f.name).map_or(&[][..], |b| b.as_slice());
            if b.len() as u64 != f.size {
                wrong.push(format!("{} holds {} of {} bytes", f.name, b.len(), f.size));
            } else if sha256_hex(b) != f.sha256 {
                wrong.push(format!("{} does not match its SHA-256", f.name));
                if let Some((_, held)) = self.copies.lock().incoming.get_mut(name) {
                    held.remove(&f.name);
                }
            }
        }
        if !wrong.is_empty() {
            return Err(err(
                AgentErrorCode::Conflict,
                format!("the copy of {name} is not intact: {}", wrong.join("; ")),
            ));
        }
        let travel: Travel = files
            .remove("info.json")
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| err(AgentErrorCode::BadRequest, "no info.json"))?;
        let mut guest_files = HashMap::new();
        for (guest, fname) in &travel.files {
            let bytes = files
                .get(fname)
                .ok_or_else(|| err(AgentErrorCode::BadRequest, format!("no {fname}")))?;
            let path = self.copies.dir.path().join(format!("{name}-{fname}"));
            std::fs::write(&path, bytes)
                .map_err(|e| err(AgentErrorCode::Internal, e.to_string()))?;
            guest_files.insert(guest.clone(), path);
        }
        let mut st = self.lock();
        if st.templates.contains_key(name) {
            return Err(err(
                AgentErrorCode::AlreadyExists,
                format!("template {name} exists"),
            ));
        }
        st.templates.insert(
            name.to_string(),
            SimTemplate {
                info: travel.info.clone(),
                files: guest_files,
            },
        );
        drop(st);
        self.copies.lock().incoming.remove(name);
        Ok(travel.info)
    }

    async fn abort_copy(&self, name: &str) -> AgentResult<()> {
        self.faults.answering()?;
        self.copies.lock().incoming.remove(name);
        Ok(())
    }
}
