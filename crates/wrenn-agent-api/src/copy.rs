//! A snapshot template's copy between two agents, declared once: the [`TemplateCopy`]
//! operations (the source's manifest and ranged reads, the receiver's begin, write at an
//! offset, commit and abort), reached through [`HostAgent::template_copy`], and their routes
//! ([`paths::TEMPLATE_MANIFEST`] and the five beside it), merged into [`crate::router`].
//!
//! The agents never talk to each other: the control plane reads from one and writes to the
//! other, so only it holds credentials to agents. File bodies are streams both ways.

use crate::paths;
use crate::router::Operations;
use crate::{AgentApiError, AgentResult, ByteStream, FileBody, HostAgent};
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use std::sync::Arc;
use wrenn_types::agent::{AgentErrorCode, TemplateInfo};
use wrenn_types::copy::{CopyHeld, CopyStatus, OffsetQuery, TemplateManifest};

/// The copy operations of an agent. A copy under way is never a template: only
/// [`TemplateCopy::commit_copy`] publishes it, once every file's size and SHA-256 match the
/// manifest, in one step.
#[async_trait]
pub trait TemplateCopy: Send + Sync {
    /// [`paths::TEMPLATE_MANIFEST`]: every file of the snapshot template `name` with its
    /// size and digest.
    async fn template_manifest(&self, name: &str) -> AgentResult<TemplateManifest>;
    /// [`paths::TEMPLATE_FILE`]: the file `file` of the template from byte `offset` on.
    async fn read_template_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
    ) -> AgentResult<FileBody>;
    /// [`paths::BEGIN_COPY`]: starts, or continues, receiving the template of `manifest`;
    /// what is already held. A copy held under another manifest is started over.
    async fn begin_copy(&self, manifest: &TemplateManifest) -> AgentResult<CopyStatus>;
    /// [`paths::RECEIVE_COPY_FILE`]: `body` appended to `file` of the copy, which must hold
    /// exactly `offset` bytes (`conflict` otherwise); the bytes held after.
    async fn receive_copy_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
        body: ByteStream,
    ) -> AgentResult<CopyHeld>;
    /// [`paths::COMMIT_COPY`]: checks every file against the manifest and publishes the
    /// template. A file whose digest differs is `conflict` and is dropped, so it is sent again.
    async fn commit_copy(&self, name: &str) -> AgentResult<TemplateInfo>;
    /// [`paths::ABORT_COPY`]: removes what a copy holds (nothing published is touched).
    async fn abort_copy(&self, name: &str) -> AgentResult<()>;
}

/// The answer of an agent that does not copy templates.
pub(crate) fn no_copies() -> AgentApiError {
    AgentApiError::new(
        AgentErrorCode::NotFound,
        "this agent does not copy templates",
    )
}

type Agent = State<Arc<dyn HostAgent>>;

/// The copy routes, to be merged before the router's auth layer.
pub(crate) fn routes() -> Router<Arc<dyn HostAgent>> {
    Router::new()
        .operation(paths::TEMPLATE_MANIFEST, manifest)
        .operation(paths::TEMPLATE_FILE, read_file)
        .operation(paths::BEGIN_COPY, begin)
        .operation(paths::RECEIVE_COPY_FILE, receive)
        .operation(paths::COMMIT_COPY, commit)
        .operation(paths::ABORT_COPY, abort)
}

fn bad(message: impl Into<String>) -> AgentApiError {
    AgentApiError::new(AgentErrorCode::BadRequest, message)
}

fn copier(a: &Arc<dyn HostAgent>) -> AgentResult<&dyn TemplateCopy> {
    a.template_copy().ok_or_else(no_copies)
}

fn offset(q: Result<Query<OffsetQuery>, QueryRejection>) -> AgentResult<u64> {
    q.map(|Query(q)| q.offset).map_err(|e| bad(e.body_text()))
}

async fn manifest(State(a): Agent, Path(name): Path<String>) -> AgentResult<impl IntoResponse> {
    Ok(Json(copier(&a)?.template_manifest(&name).await?))
}

async fn read_file(
    State(a): Agent,
    Path((name, file)): Path<(String, String)>,
    q: Result<Query<OffsetQuery>, QueryRejection>,
) -> AgentResult<Response> {
    let body = copier(&a)?
        .read_template_file(&name, &file, offset(q)?)
        .await?;
    let mut resp = Body::from_stream(body.stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = body.len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

async fn begin(
    State(a): Agent,
    Path(name): Path<String>,
    body: Result<Json<TemplateManifest>, JsonRejection>,
) -> AgentResult<impl IntoResponse> {
    let Json(m) = body.map_err(|e| bad(e.body_text()))?;
    if m.name != name {
        return Err(bad("the manifest names another template"));
    }
    Ok(Json(copier(&a)?.begin_copy(&m).await?))
}

async fn receive(
    State(a): Agent,
    Path((name, file)): Path<(String, String)>,
    q: Result<Query<OffsetQuery>, QueryRejection>,
    body: Body,
) -> AgentResult<impl IntoResponse> {
    let at = offset(q)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    Ok(Json(
        copier(&a)?
            .receive_copy_file(&name, &file, at, Box::pin(stream))
            .await?,
    ))
}

async fn commit(State(a): Agent, Path(name): Path<String>) -> AgentResult<Response> {
    let info = copier(&a)?.commit_copy(&name).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn abort(State(a): Agent, Path(name): Path<String>) -> AgentResult<StatusCode> {
    copier(&a)?.abort_copy(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The status of a copy of `manifest` from the bytes held of each file.
pub fn status_of(manifest: &TemplateManifest, held: impl Fn(&str) -> u64) -> CopyStatus {
    CopyStatus {
        name: manifest.name.clone(),
        files: manifest
            .files
            .iter()
            .map(|f| CopyHeld {
                name: f.name.clone(),
                held: held(&f.name).min(f.size),
            })
            .collect(),
    }
}
