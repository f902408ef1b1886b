//! Snapshot templates on more than one host: where a create from a team's snapshot runs
//! (a host that holds it, or another one it is copied to first, see `placement/snapshot.rs`),
//! the copy itself, and the deletion of every copy with the template.
//!
//! The copy is relayed by the control plane: it reads each file from the source agent and
//! streams it into the receiving agent, so agents never need credentials for each other. The
//! receiver checks each file's SHA-256 against the source's manifest before it publishes the
//! template in one step; a digest that differs is refused and the copy is tried once more;
//! an interrupted file continues from the bytes the receiver already holds. A copy that
//! fails is aborted on the receiver (nothing of it stays), and a finished one is recorded in
//! the store (`template_copies`) so later creates can use it and a delete removes it.

use super::App;
use crate::agent::{AgentApiError, ByteStream, HostAgent};
use crate::error::ApiError;
use crate::placement::NoPlacement;
use crate::store::{self, TemplateRecord};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wrenn_agent_api::TemplateCopy;
use wrenn_types::agent::{codes, AgentErrorCode};
use wrenn_types::copy::TemplateManifest;

/// Interrupted transfers continued before a copy gives up.
const MAX_RESUMES: u32 = 5;
/// Pause before continuing an interrupted transfer (times the number of interruptions).
const RESUME_PAUSE: Duration = Duration::from_millis(300);
/// Time a copy may take: this much, plus one second per [`MIN_RATE`] bytes.
const COPY_BASE_TIME: Duration = Duration::from_secs(120);
/// The slowest rate a copy is allowed, bytes per second.
const MIN_RATE: u64 = 4 * 1024 * 1024;

/// What one copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Bytes sent to the receiver (a file sent again counts again).
    pub bytes_sent: u64,
    /// Transfers continued after an interruption.
    pub resumes: u32,
    /// Commits refused because a digest differed (then tried once more).
    pub digest_retries: u32,
    /// The receiver already held the template; nothing was sent.
    pub already_there: bool,
}

/// Copies the snapshot template `name` from `src` to `dst` (see the module doc); on failure
/// the receiver's partial copy is removed.
pub async fn relay_template(
    src: &dyn TemplateCopy,
    dst: &dyn TemplateCopy,
    name: &str,
) -> Result<CopyReport, AgentApiError> {
    let manifest = src.template_manifest(name).await?;
    relay_manifest(src, dst, name, &manifest).await
}

/// [`relay_template`] with the source's manifest already read.
async fn relay_manifest(
    src: &dyn TemplateCopy,
    dst: &dyn TemplateCopy,
    name: &str,
    manifest: &TemplateManifest,
) -> Result<CopyReport, AgentApiError> {
    if manifest.name != name {
        return Err(AgentApiError::Protocol(
            "the source listed another template".into(),
        ));
    }
    manifest.validate().map_err(AgentApiError::Protocol)?;
    let mut report = CopyReport::default();
    let res = relay_files(src, dst, manifest, &mut report).await;
    if res.is_err() && !report.already_there {
        if let Err(e) = dst.abort_copy(name).await {
            tracing::warn!(template = %name, error = %e, "removing a failed copy failed");
        }
    }
    res.map(|()| report)
}

async fn relay_files(
    src: &dyn TemplateCopy,
    dst: &dyn TemplateCopy,
    manifest: &TemplateManifest,
    report: &mut CopyReport,
) -> Result<(), AgentApiError> {
    let name = manifest.name.as_str();
    loop {
        let status = match dst.begin_copy(manifest).await {
            Ok(s) => s,
            Err(e) if e.code() == Some(AgentErrorCode::AlreadyExists) => {
                report.already_there = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut broken = None;
        for f in &manifest.files {
            let held = status.held(&f.name);
            if held >= f.size {
                continue;
            }
            let sent = async {
                let body = src.read_template_file(name, &f.name, held).await?;
                // A source that breaks off ends the upload cleanly: the receiver keeps what
                // arrived, and the file continues from there.
                let (stream, source_broke) = until_broken(body.stream);
                let h = dst.receive_copy_file(name, &f.name, held, stream).await?;
                report.bytes_sent += h.held.saturating_sub(held);
                let source_error = source_broke
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match source_error {
                    Some(e) => Err(AgentApiError::Transport(format!("source: {e}"))),
                    None if h.held < f.size => Err(AgentApiError::Transport(format!(
                        "the source sent {} of {} bytes of {}",
                        h.held, f.size, f.name
                    ))),
                    None => Ok(()),
                }
            }
            .await;
            if let Err(e) = sent {
                broken = Some(e);
                break;
            }
        }
        if let Some(e) = broken {
            // A broken connection, or the receiver still finishing the broken request
            // (`conflict`), passes; any other answer will not change by retrying.
            let transient = matches!(e, AgentApiError::Transport(_))
                || matches!(
                    e.code(),
                    Some(AgentErrorCode::Internal | AgentErrorCode::Conflict)
                );
            if !transient || report.resumes >= MAX_RESUMES {
                return Err(e);
            }
            report.resumes += 1;
            tracing::info!(template = %name, error = %e, "template copy interrupted; continuing");
            tokio::time::sleep(RESUME_PAUSE * report.resumes).await;
            continue;
        }
        match dst.commit_copy(name).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(codes::CONFLICT) && report.digest_retries == 0 => {
                // The receiver dropped the files that do not match; they are sent again.
                report.digest_retries += 1;
                tracing::warn!(template = %name, error = %e, "template copy not intact; sending again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// `stream` until its first error, which is kept in the returned slot instead of passed on.
fn until_broken(stream: ByteStream) -> (ByteStream, Arc<Mutex<Option<std::io::Error>>>) {
    let slot: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let keep = slot.clone();
    let cut = stream.scan((), move |_, item| {
        let next = match item {
            Ok(b) => Some(Ok(b)),
            Err(e) => {
                *keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        };
        std::future::ready(next)
    });
    (Box::pin(cut), slot)
}

/// One lock per (template, receiving host), so two creates needing the same copy at once
/// make it once.
fn copy_lock(key: String) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks.entry(key).or_default().clone()
}

/// A copy failure as a tenant sees it: the host's details stay in the log.
fn copy_failed(name: &str, e: &AgentApiError) -> ApiError {
    tracing::warn!(template = %name, error = %e, "copying a snapshot template failed");
    ApiError::Agent(AgentApiError::Transport(
        "the snapshot template could not be copied to the host chosen for it".into(),
    ))
}

impl App {
    /// The host for a sandbox of `memory_mb` MiB made from the snapshot template `t`: a
    /// host that holds it when one can take the create, otherwise another host, after the
    /// template is copied there from a holder that answers.
    pub(super) async fn place_from_snapshot(
        &self,
        t: &TemplateRecord,
        memory_mb: i64,
    ) -> Result<(String, Arc<dyn HostAgent>), ApiError> {
        let mut holders = vec![t.host_id.clone()];
        holders.extend(self.store.template_copy_hosts(&t.agent_name).await?);
        let (host, holds) = self
            .hosts
            .place_snapshot(&holders, memory_mb)
            .await
            .map_err(|e| match e {
                NoPlacement::NoLiveHost => ApiError::NoHost,
                NoPlacement::NoTemplate | NoPlacement::AllDraining => ApiError::NoCapacity,
            })?;
        if holds {
            return Ok((host.id, host.agent));
        }
        let Some((src_id, src)) = self.hosts.reachable_holder(&holders) else {
            // Every host that holds it is silent: nothing to copy from until one returns.
            return Err(ApiError::HostUnreachable);
        };
        self.copy_template(&t.agent_name, &src_id, &*src, &host.id, &*host.agent)
            .await?;
        Ok((host.id, host.agent))
    }

    /// Copies the template `agent_name` from host `src_id` to host `dst_id` unless it is
    /// there already, and records the copy.
    pub async fn copy_template(
        &self,
        agent_name: &str,
        src_id: &str,
        src: &dyn HostAgent,
        dst_id: &str,
        dst: &dyn HostAgent,
    ) -> Result<CopyReport, ApiError> {
        let lock = copy_lock(format!("{agent_name}@{dst_id}"));
        let _turn = lock.lock().await;
        if self
            .store
            .template_copy_hosts(agent_name)
            .await?
            .iter()
            .any(|h| h == dst_id)
        {
            return Ok(CopyReport {
                already_there: true,
                ..CopyReport::default()
            });
        }
        let (Some(from), Some(to)) = (src.template_copy(), dst.template_copy()) else {
            return Err(ApiError::NoCapacity);
        };
        let manifest = from
            .template_manifest(agent_name)
            .await
            .map_err(|e| copy_failed(agent_name, &e))?;
        let limit = COPY_BASE_TIME + Duration::from_secs(manifest.total_bytes() / MIN_RATE);
        let started = std::time::Instant::now();
        let relay = relay_manifest(from, to, agent_name, &manifest);
        let report = match tokio::time::timeout(limit, relay).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(copy_failed(agent_name, &e)),
            Err(_) => {
                let _ = to.abort_copy(agent_name).await;
                let e = AgentApiError::Transport(format!("no end after {}s", limit.as_secs()));
                return Err(copy_failed(agent_name, &e));
            }
        };
        tracing::info!(template = %agent_name, from = %src_id, to = %dst_id,
            bytes = report.bytes_sent, resumes = report.resumes,
            secs = started.elapsed().as_secs_f64(), "snapshot template copied");
        self.store
            .add_template_copy(agent_name, dst_id, store::now())
            .await?;
        Ok(report)
    }

    /// Deletes the copies of the template `agent_name` on other hosts and forgets them. A
    /// host that cannot be reached keeps its copy until the reconciler finds it unnamed.
    pub(super) async fn delete_template_copies(&self, agent_name: &str) -> Result<(), ApiError> {
        for host_id in self.store.template_copy_hosts(agent_name).await? {
            let deleted = match self.hosts.any_agent(&host_id) {
                Ok(agent) => agent.delete_template(agent_name).await,
                Err(e) => Err(AgentApiError::Transport(e.to_string())),
            };
            match deleted {
                Ok(()) => {}
                Err(e) if e.code() == Some(codes::TEMPLATE_NOT_FOUND) => {}
                Err(e) => tracing::warn!(host = %host_id, template = %agent_name, error = %e,
                    "deleting a template's copy failed; the reconciler will"),
            }
        }
        self.store.forget_template_copies(agent_name).await?;
        Ok(())
    }
}
