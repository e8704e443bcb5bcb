//! The files through which the agent and its `shim` helpers talk: where each sandbox and
//! container keeps its state, and the records written there.
//!
//! A helper owns its container; the agent never holds it as a child. Everything the
//! agent knows about a running container it reads from these files, which is also what
//! lets a restarted agent find its containers again.

use std::path::{Path, PathBuf};

use k8s_openapi::chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What reading or writing a state file can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds an invalid record")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} holds no process id: {text:?}")]
    Pid { path: PathBuf, text: String },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files of one container under its state directory (which is also its OCI bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPaths {
    pub dir: PathBuf,
}

impl ContainerPaths {
    /// The bundle's `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// The agent's [`ContainerMeta`].
    pub fn meta(&self) -> PathBuf {
        self.dir.join("meta.json")
    }
    /// The pid of the container's main process, written once it started.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("container.pid")
    }
    /// The pid of the helper that owns the container.
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    /// The [`Started`] record.
    pub fn started(&self) -> PathBuf {
        self.dir.join("started.json")
    }
    /// The [`Exited`] record, written by the helper when the container exited.
    pub fn exited(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The helper's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
}

/// The files of one pod sandbox under its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    pub dir: PathBuf,
}

impl SandboxPaths {
    /// The pid of the pause process that holds the pod's namespaces.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pause.pid")
    }
    /// The agent's [`SandboxMeta`].
    pub fn meta(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }
    /// The pause helper's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("pause.log")
    }
}

/// What the agent records about a sandbox when it creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxMeta {
    pub hostname: String,
}

/// What the agent records about a container when it creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub sandbox: String,
    pub name: String,
    /// Which start of the pod's container this is (0 first).
    #[serde(default)]
    pub attempt: u32,
    /// The CRI-format log file the helper writes the container's output to.
    pub log_path: PathBuf,
    /// The cgroup path relative to each hierarchy's root (`/rkube/<id>`).
    pub cgroup_path: PathBuf,
    /// The root file system's overlay mount options, when the helper mounts it in a
    /// mount namespace of its own; `None`: the agent mounted it (older agents did).
    #[serde(default)]
    pub overlay: Option<String>,
}

/// Written by the helper once the container's process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    pub started_at: DateTime<Utc>,
}

/// Written by the helper when the container's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// Whether the kernel's OOM killer ended it (the cgroup's `oom_kill` count grew).
    pub oom_killed: bool,
    pub finished_at: DateTime<Utc>,
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed over it), so a
/// reader never sees half a record.
///
/// # Errors
/// When the file cannot be written.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec(value).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &text)
}

/// Writes `bytes` to `path` through a temporary file renamed over it.
///
/// # Errors
/// When the file cannot be written or renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads the JSON record at `path`; `None` when there is no such file.
///
/// # Errors
/// When the file cannot be read or does not hold a `T`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(path)(source)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a pid file.
///
/// # Errors
/// When the file cannot be written.
pub fn write_pid(path: &Path, pid: i32) -> Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

/// Reads a pid file; `None` when there is no such file.
///
/// # Errors
/// When the file cannot be read or holds no positive number.
pub fn read_pid(path: &Path) -> Result<Option<i32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(path)(source)),
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => Err(Error::Pid {
            path: path.to_path_buf(),
            text,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_absent_files_are_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = ContainerPaths {
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(read_json::<Exited>(&paths.exited()).expect("read"), None);
        assert_eq!(read_pid(&paths.pid()).expect("read"), None);
        let exited = Exited {
            exit_code: 137,
            oom_killed: true,
            finished_at: Utc::now(),
        };
        write_json(&paths.exited(), &exited).expect("write");
        assert_eq!(
            read_json::<Exited>(&paths.exited()).expect("read"),
            Some(exited)
        );
        write_pid(&paths.pid(), 4242).expect("write");
        assert_eq!(read_pid(&paths.pid()).expect("read"), Some(4242));
        std::fs::write(paths.shim_pid(), "x").expect("write");
        assert!(matches!(
            read_pid(&paths.shim_pid()),
            Err(Error::Pid { .. })
        ));
        std::fs::write(paths.started(), "{").expect("write");
        assert!(matches!(
            read_json::<Started>(&paths.started()),
            Err(Error::Decode { .. })
        ));
    }
}
