//! Applying a ruleset: [`Nft`] pipes the script to `nft -f -` (one atomic transaction);
//! [`RulesetApplier`] is the seam the proxy loop is tested through.

use std::io::Write as _;
use std::process::{Command, Stdio};

use parking_lot::Mutex;

/// What applying a ruleset can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write the ruleset to nft")]
    Write(#[source] std::io::Error),
    #[error("nft rejected the ruleset ({status}): {stderr}")]
    Rejected { status: String, stderr: String },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something that makes an nftables script the kernel's ruleset (blocking).
pub trait RulesetApplier: Send + Sync + 'static {
    /// Applies `script` as one transaction: all of it or nothing.
    ///
    /// # Errors
    /// When the script could not be applied; the previous ruleset stays.
    fn apply(&self, script: &str) -> Result<()>;
}

/// The real applier: `nft -f -`, optionally inside a named network namespace
/// (`ip netns exec <netns> nft -f -`, used by tests and benchmarks).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    /// A namespace under `/run/netns`; `None` applies in the agent's own namespace.
    pub netns: Option<String>,
}

impl Nft {
    /// The applier for the agent's own network namespace.
    pub fn new() -> Self {
        Nft::default()
    }

    /// The applier for the named network namespace.
    pub fn in_netns(name: impl Into<String>) -> Self {
        Nft {
            netns: Some(name.into()),
        }
    }

    fn command(&self) -> Command {
        match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "nft", "-f", "-"]);
                command
            }
            None => {
                let mut command = Command::new("nft");
                command.args(["-f", "-"]);
                command
            }
        }
    }
}

impl RulesetApplier for Nft {
    fn apply(&self, script: &str) -> Result<()> {
        let mut command = self.command();
        let program = format!("{:?}", command.get_program());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { program, source })?;
        let written = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(script.as_bytes()),
            None => Ok(()),
        };
        // Wait even when writing failed, so no zombie is left behind.
        let output = child.wait_with_output().map_err(Error::Write)?;
        written.map_err(Error::Write)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Rejected {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

/// A recording fake: keeps every script it was asked to apply; fails while `fail` is set.
#[derive(Debug, Default)]
pub struct RecordingApplier {
    applied: Mutex<Vec<String>>,
    fail: Mutex<bool>,
}

impl RecordingApplier {
    /// The scripts applied so far, oldest first (failed attempts included).
    pub fn applied(&self) -> Vec<String> {
        self.applied.lock().clone()
    }

    /// Makes the following applies fail (or succeed again).
    pub fn set_failing(&self, fail: bool) {
        *self.fail.lock() = fail;
    }
}

impl RulesetApplier for RecordingApplier {
    fn apply(&self, script: &str) -> Result<()> {
        self.applied.lock().push(script.to_string());
        if *self.fail.lock() {
            return Err(Error::Rejected {
                status: "exit status: 1".to_string(),
                stderr: "injected failure".to_string(),
            });
        }
        Ok(())
    }
}
