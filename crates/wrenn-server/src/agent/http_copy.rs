//! [`HttpAgent`]'s [`TemplateCopy`]: the copy routes of a real agent over HTTP. File bodies
//! are streamed both ways; JSON answers are read up to [`super::MAX_ANSWER_BYTES`].

use super::{error_from_response, transport, HttpAgent, LIFECYCLE_TIMEOUT, QUICK_TIMEOUT};
use crate::agent::{AgentResult, ByteStream, FileBody};
use async_trait::async_trait;
use wrenn_agent_api::paths;
use wrenn_agent_api::TemplateCopy;
use wrenn_types::agent::TemplateInfo;
use wrenn_types::copy::{CopyHeld, CopyStatus, OffsetQuery, TemplateManifest};

#[async_trait]
impl TemplateCopy for HttpAgent {
    async fn template_manifest(&self, name: &str) -> AgentResult<TemplateManifest> {
        // The source hashes every file of the template first.
        self.call(paths::TEMPLATE_MANIFEST, name, LIFECYCLE_TIMEOUT)
            .await
    }

    async fn read_template_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
    ) -> AgentResult<FileBody> {
        let url = format!("{}{}", self.base, paths::TEMPLATE_FILE.fill_two(name, file));
        let rb = self
            .client
            .request(paths::TEMPLATE_FILE.method.clone(), url)
            .bearer_auth(&self.token)
            .query(&OffsetQuery { offset });
        let resp = rb.send().await.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(error_from_response(resp).await);
        }
        Ok(FileBody::from_stream(
            resp.content_length(),
            resp.bytes_stream(),
        ))
    }

    async fn begin_copy(&self, manifest: &TemplateManifest) -> AgentResult<CopyStatus> {
        let rb = self.req(paths::BEGIN_COPY, &manifest.name).json(manifest);
        self.json(rb.timeout(QUICK_TIMEOUT)).await
    }

    async fn receive_copy_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
        body: ByteStream,
    ) -> AgentResult<CopyHeld> {
        let route = paths::RECEIVE_COPY_FILE;
        let url = format!("{}{}", self.base, route.fill_two(name, file));
        let rb = self
            .client
            .request(route.method.clone(), url)
            .bearer_auth(&self.token)
            .query(&OffsetQuery { offset })
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        self.json(rb).await
    }

    async fn commit_copy(&self, name: &str) -> AgentResult<TemplateInfo> {
        // The receiver hashes every file before it publishes the template.
        self.call(paths::COMMIT_COPY, name, LIFECYCLE_TIMEOUT).await
    }

    async fn abort_copy(&self, name: &str) -> AgentResult<()> {
        self.call_empty(paths::ABORT_COPY, name, LIFECYCLE_TIMEOUT)
            .await
    }
}
