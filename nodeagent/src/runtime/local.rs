//! The built-in runtime: images from OCI registries into a content-addressed store
//! ([`super::image`]). Sandboxes and containers are not wired yet: the pieces exist
//! ([`super::rootfs`] mounts the overlay, [`super::container`] builds the OCI spec) but
//! the libcontainer `shim` helper that would run them does not, so those methods answer
//! [`Error::Unsupported`] instead of pretending to run anything.

use std::path::PathBuf;

use super::image::ImageStore;
use super::{
    ContainerConfig, ContainerId, ContainerRuntime, ContainerState, Error, ImageRef, PullPolicy,
    Result, SandboxConfig, SandboxId, StopSignal,
};

const NAME: &str = "built-in";

/// Where the built-in runtime keeps its state and which registries it trusts over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRuntimeConfig {
    pub root_dir: PathBuf,
    pub insecure_registries: Vec<String>,
}

/// The built-in runtime.
#[derive(Debug)]
pub struct LocalRuntime {
    images: ImageStore,
}

impl LocalRuntime {
    /// Prepares the state directories under `config.root_dir`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn new(config: LocalRuntimeConfig) -> Result<Self> {
        let images = ImageStore::open(config.root_dir.join("images"), config.insecure_registries)
            .map_err(|source| Error::Failed {
            operation: "open image store",
            id: config.root_dir.display().to_string(),
            source: Box::new(source),
        })?;
        Ok(LocalRuntime { images })
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }
}

fn unsupported(operation: &'static str) -> Error {
    Error::Unsupported {
        runtime: NAME,
        operation,
    }
}

impl ContainerRuntime for LocalRuntime {
    async fn pull_image(&self, image: &str, policy: PullPolicy) -> Result<ImageRef> {
        self.images.ensure(image, policy).await
    }

    async fn create_sandbox(&self, _config: &SandboxConfig) -> Result<SandboxId> {
        Err(unsupported("create_sandbox"))
    }

    async fn remove_sandbox(&self, _id: &SandboxId) -> Result<()> {
        Err(unsupported("remove_sandbox"))
    }

    async fn create_container(
        &self,
        _sandbox: &SandboxId,
        _config: &ContainerConfig,
    ) -> Result<ContainerId> {
        Err(unsupported("create_container"))
    }

    async fn start_container(&self, _id: &ContainerId) -> Result<()> {
        Err(unsupported("start_container"))
    }

    async fn kill_container(&self, _id: &ContainerId, _signal: StopSignal) -> Result<()> {
        Err(unsupported("kill_container"))
    }

    async fn remove_container(&self, _id: &ContainerId) -> Result<()> {
        Err(unsupported("remove_container"))
    }

    async fn container_status(&self, _id: &ContainerId) -> Result<ContainerState> {
        Err(unsupported("container_status"))
    }
}
