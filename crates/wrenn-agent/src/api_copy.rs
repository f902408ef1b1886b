//! The real agent's [`TemplateCopy`]: one [`crate::sandbox::Manager`] call per operation of a
//! snapshot template's copy between hosts (see `sandbox/copy.rs`); errors map as in
//! [`crate::api`].

use crate::api::ManagerAgent;
use async_trait::async_trait;
use wrenn_agent_api::{AgentResult, ByteStream, FileBody, TemplateCopy};
use wrenn_types::agent::TemplateInfo;
use wrenn_types::copy::{CopyHeld, CopyStatus, TemplateManifest};

#[async_trait]
impl TemplateCopy for ManagerAgent {
    async fn template_manifest(&self, name: &str) -> AgentResult<TemplateManifest> {
        Ok(self.0.template_manifest(name).await?)
    }

    async fn read_template_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
    ) -> AgentResult<FileBody> {
        let (len, stream) = self.0.read_template_file(name, file, offset).await?;
        Ok(FileBody::from_stream(Some(len), stream))
    }

    async fn begin_copy(&self, manifest: &TemplateManifest) -> AgentResult<CopyStatus> {
        Ok(self.0.begin_copy(manifest).await?)
    }

    async fn receive_copy_file(
        &self,
        name: &str,
        file: &str,
        offset: u64,
        body: ByteStream,
    ) -> AgentResult<CopyHeld> {
        Ok(self.0.receive_copy_file(name, file, offset, body).await?)
    }

    async fn commit_copy(&self, name: &str) -> AgentResult<TemplateInfo> {
        Ok(self.0.commit_copy(name).await?)
    }

    async fn abort_copy(&self, name: &str) -> AgentResult<()> {
        Ok(self.0.abort_copy(name).await?)
    }
}
