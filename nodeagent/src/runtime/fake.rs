//! A recording fake [`ContainerRuntime`]: remembers every call in order and lets a test
//! decide how containers behave (exit at once, ignore SIGTERM, fail to pull), so pod
//! workers can be tested without root.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::chrono::Utc;
use parking_lot::Mutex;

use super::{
    ContainerConfig, ContainerId, ContainerInfo, ContainerRuntime, ContainerState, Error,
    ExecOutput, ImageRef, PullPolicy, Result, SandboxConfig, SandboxId, SandboxStatus, StopSignal,
};

/// One call the fake received, named by pod and container names so tests read well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    PullImage(String),
    CreateSandbox(String),
    RemoveSandbox(String),
    /// Container name and attempt.
    CreateContainer(String, u32),
    StartContainer(String),
    KillContainer(String, StopSignal),
    RemoveContainer(String),
    /// Container name and command.
    Exec(String, Vec<String>),
}

/// How containers of one name behave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Exit with this code as soon as started.
    pub exit_on_start: Option<i32>,
    /// Keep running after SIGTERM (only SIGKILL stops it).
    pub ignores_sigterm: bool,
}

#[derive(Debug)]
struct FakeContainer {
    sandbox: SandboxId,
    name: String,
    attempt: u32,
    state: ContainerState,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    behaviors: HashMap<String, Behavior>,
    pull_errors: HashMap<String, String>,
    /// Images not on the node yet: their pull waits until the [`Notify`] is notified.
    missing_images: HashMap<String, Arc<tokio::sync::Notify>>,
    containers: HashMap<ContainerId, FakeContainer>,
    sandboxes: HashMap<SandboxId, String>,
    /// The config of the latest container created under each name.
    configs: HashMap<String, ContainerConfig>,
    /// What `exec_sync` answers in containers of each name (default: exit 0, no output).
    exec_results: HashMap<String, ExecOutput>,
    /// IPs handed to sandboxes so far (10.88.0.N).
    next_ip: u8,
    sandbox_ips: HashMap<SandboxId, IpAddr>,
}

/// The recording fake runtime.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Containers named `name` behave as `behavior` from their next start on.
    pub fn set_behavior(&self, name: &str, behavior: Behavior) {
        self.inner
            .lock()
            .behaviors
            .insert(name.to_string(), behavior);
    }

    /// Pulling `image` fails with `message` (as a registry error would).
    pub fn fail_pull(&self, image: &str, message: &str) {
        self.inner
            .lock()
            .pull_errors
            .insert(image.to_string(), message.to_string());
    }

    /// `image` is not on the node: pulling it waits (as a registry download would)
    /// until the returned [`tokio::sync::Notify`] is notified, then it is present.
    pub fn image_missing(&self, image: &str) -> Arc<tokio::sync::Notify> {
        let download = Arc::new(tokio::sync::Notify::new());
        self.inner
            .lock()
            .missing_images
            .insert(image.to_string(), download.clone());
        download
    }

    /// Pulling `image` works again.
    pub fn allow_pull(&self, image: &str) {
        self.inner.lock().pull_errors.remove(image);
    }

    /// The running container named `name` exits with `code` (as if its process ended).
    /// Returns whether one was running.
    pub fn exit(&self, name: &str, code: i32) -> bool {
        let mut inner = self.inner.lock();
        let running = inner
            .containers
            .values_mut()
            .find(|c| c.name == name && matches!(c.state, ContainerState::Running { .. }));
        match running {
            Some(container) => {
                finish(container, code);
                true
            }
            None => false,
        }
    }

    /// `exec_sync` in containers named `name` answers `result` from now on.
    pub fn set_exec_result(&self, name: &str, result: ExecOutput) {
        self.inner
            .lock()
            .exec_results
            .insert(name.to_string(), result);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().calls.clone()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.inner.lock().calls.clear();
    }

    /// The config the latest container named `name` was created from.
    pub fn last_config(&self, name: &str) -> Option<ContainerConfig> {
        self.inner.lock().configs.get(name).cloned()
    }

    /// Containers that exist (created and not removed).
    pub fn container_count(&self) -> usize {
        self.inner.lock().containers.len()
    }

    /// Sandboxes that exist.
    pub fn sandbox_count(&self) -> usize {
        self.inner.lock().sandboxes.len()
    }

    fn name_of(inner: &Inner, id: &ContainerId) -> Result<String> {
        inner
            .containers
            .get(id)
            .map(|c| c.name.clone())
            .ok_or_else(|| Error::ContainerNotFound { id: id.0.clone() })
    }
}

fn finish(container: &mut FakeContainer, exit_code: i32) {
    let started_at = match container.state {
        ContainerState::Running { started_at } => Some(started_at),
        _ => None,
    };
    container.state = ContainerState::Exited {
        exit_code,
        reason: ContainerState::exit_reason(exit_code).to_string(),
        started_at,
        finished_at: Utc::now(),
    };
}

impl ContainerRuntime for FakeRuntime {
    async fn image_present(&self, image: &str) -> bool {
        // An image whose pull fails is not on the node either.
        let inner = self.inner.lock();
        !inner.missing_images.contains_key(image) && !inner.pull_errors.contains_key(image)
    }

    async fn pull_image(&self, image: &str, _policy: PullPolicy) -> Result<ImageRef> {
        let download = {
            let mut inner = self.inner.lock();
            inner.calls.push(Call::PullImage(image.to_string()));
            inner.missing_images.get(image).cloned()
        };
        if let Some(download) = download {
            download.notified().await;
            self.inner.lock().missing_images.remove(image);
        }
        let inner = self.inner.lock();
        if let Some(message) = inner.pull_errors.get(image) {
            return Err(Error::ImagePull {
                image: image.to_string(),
                message: message.clone(),
            });
        }
        Ok(ImageRef {
            image: image.to_string(),
            image_id: format!("{image}@sha256:fake"),
        })
    }

    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxId> {
        let mut inner = self.inner.lock();
        inner.calls.push(Call::CreateSandbox(config.name.clone()));
        let id = SandboxId(config.pod_uid.clone());
        inner.sandboxes.insert(id.clone(), config.name.clone());
        if !inner.sandbox_ips.contains_key(&id) {
            inner.next_ip = inner.next_ip.wrapping_add(1);
            let ip = IpAddr::V4(Ipv4Addr::new(10, 88, 0, inner.next_ip));
            inner.sandbox_ips.insert(id.clone(), ip);
        }
        Ok(id)
    }

    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus> {
        let inner = self.inner.lock();
        if !inner.sandboxes.contains_key(id) {
            return Err(Error::SandboxNotFound { id: id.0.clone() });
        }
        Ok(SandboxStatus {
            netns: None,
            ip: inner.sandbox_ips.get(id).copied(),
        })
    }

    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        let mut inner = self.inner.lock();
        let name = inner
            .sandboxes
            .remove(id)
            .ok_or_else(|| Error::SandboxNotFound { id: id.0.clone() })?;
        inner.calls.push(Call::RemoveSandbox(name));
        inner.sandbox_ips.remove(id);
        Ok(())
    }

    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: &ContainerConfig,
    ) -> Result<ContainerId> {
        let mut inner = self.inner.lock();
        if !inner.sandboxes.contains_key(sandbox) {
            return Err(Error::SandboxNotFound {
                id: sandbox.0.clone(),
            });
        }
        inner
            .calls
            .push(Call::CreateContainer(config.name.clone(), config.attempt));
        inner.configs.insert(config.name.clone(), config.clone());
        let id = ContainerId(format!("{}-{}-{}", sandbox.0, config.name, config.attempt));
        inner.containers.insert(
            id.clone(),
            FakeContainer {
                sandbox: sandbox.clone(),
                name: config.name.clone(),
                attempt: config.attempt,
                state: ContainerState::Created,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &ContainerId) -> Result<()> {
        let mut inner = self.inner.lock();
        let name = Self::name_of(&inner, id)?;
        inner.calls.push(Call::StartContainer(name.clone()));
        let exit = inner.behaviors.get(&name).and_then(|b| b.exit_on_start);
        if let Some(container) = inner.containers.get_mut(id) {
            container.state = ContainerState::Running {
                started_at: Utc::now(),
            };
            if let Some(code) = exit {
                finish(container, code);
            }
        }
        Ok(())
    }

    async fn kill_container(&self, id: &ContainerId, signal: StopSignal) -> Result<()> {
        let mut inner = self.inner.lock();
        let name = Self::name_of(&inner, id)?;
        inner.calls.push(Call::KillContainer(name.clone(), signal));
        let ignores = inner
            .behaviors
            .get(&name)
            .is_some_and(|b| b.ignores_sigterm);
        if let Some(container) = inner.containers.get_mut(id) {
            let running = matches!(container.state, ContainerState::Running { .. });
            match signal {
                StopSignal::Term if running && !ignores => finish(container, 143),
                StopSignal::Kill if running => finish(container, 137),
                _ => {}
            }
        }
        Ok(())
    }

    async fn remove_container(&self, id: &ContainerId) -> Result<()> {
        let mut inner = self.inner.lock();
        let name = Self::name_of(&inner, id)?;
        inner.calls.push(Call::RemoveContainer(name));
        inner.containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self, sandbox: &SandboxId) -> Result<Vec<ContainerInfo>> {
        let inner = self.inner.lock();
        Ok(inner
            .containers
            .iter()
            .filter(|(_, c)| c.sandbox == *sandbox)
            .map(|(id, c)| ContainerInfo {
                id: id.clone(),
                name: c.name.clone(),
                attempt: c.attempt,
            })
            .collect())
    }

    async fn container_status(&self, id: &ContainerId) -> Result<ContainerState> {
        let inner = self.inner.lock();
        inner
            .containers
            .get(id)
            .map(|c| c.state.clone())
            .ok_or_else(|| Error::ContainerNotFound { id: id.0.clone() })
    }

    async fn exec_sync(
        &self,
        id: &ContainerId,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut inner = self.inner.lock();
        let name = Self::name_of(&inner, id)?;
        inner.calls.push(Call::Exec(name.clone(), command.to_vec()));
        Ok(inner.exec_results.get(&name).cloned().unwrap_or_default())
    }
}
