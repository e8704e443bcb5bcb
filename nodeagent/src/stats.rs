//! Resource use of containers from their cgroups, for the agent's `Stats` call (what
//! `kubectl top` shows): cumulative CPU time and its rate in nanocores since the
//! previous sample, memory usage and working set (usage minus inactive file cache).
//!
//! cgroup v2 reads `cpu.stat`, `memory.current` and `memory.stat` of the unified
//! hierarchy; v1 reads `cpuacct.usage` of the cpuacct hierarchy and
//! `memory.usage_in_bytes` and `memory.stat` of the memory one. A container's cgroup is
//! `/rkube/<container id>` in each (see [`crate::runtime::local`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;

/// What reading a cgroup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no {field}")]
    Parse { path: PathBuf, field: &'static str },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One reading of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_working_set_bytes: u64,
}

/// A container's stats: its cgroup reading and the CPU rate since the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    pub usage: CgroupUsage,
    /// 0 on the first sample of a container.
    pub cpu_usage_nanocores: u64,
}

/// Which cgroup layout the host has, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy at this path.
    V2(PathBuf),
    /// The v1 hierarchies under this path (`cpuacct`, `memory`, …).
    V1(PathBuf),
}

impl Hierarchy {
    /// The host's layout under `/sys/fs/cgroup`.
    pub fn detect() -> Self {
        let base = PathBuf::from("/sys/fs/cgroup");
        if base.join("cgroup.controllers").exists() {
            Hierarchy::V2(base)
        } else {
            Hierarchy::V1(base)
        }
    }

    /// Reads the cgroup at `cgroup` (relative to each hierarchy's root, `/rkube/<id>`).
    ///
    /// # Errors
    /// When a file is missing (the container is gone) or unreadable.
    pub fn read(&self, cgroup: &Path) -> Result<CgroupUsage> {
        let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
        match self {
            Hierarchy::V2(base) => {
                let dir = base.join(relative);
                let cpu = dir.join("cpu.stat");
                let cpu_usage_ns = stat_value(&read(&cpu)?, "usage_usec")
                    .ok_or(Error::Parse {
                        path: cpu,
                        field: "usage_usec",
                    })?
                    .saturating_mul(1000);
                let current = dir.join("memory.current");
                let memory_usage_bytes = number(&current)?;
                let stat = read(&dir.join("memory.stat"))?;
                let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
                Ok(CgroupUsage {
                    cpu_usage_ns,
                    memory_usage_bytes,
                    memory_working_set_bytes: working_set(memory_usage_bytes, inactive),
                })
            }
            Hierarchy::V1(base) => {
                let cpuacct = ["cpuacct", "cpu,cpuacct"]
                    .iter()
                    .map(|h| base.join(h).join(relative).join("cpuacct.usage"))
                    .find(|p| p.exists())
                    .unwrap_or_else(|| base.join("cpuacct").join(relative).join("cpuacct.usage"));
                let cpu_usage_ns = number(&cpuacct)?;
                let memory = base.join("memory").join(relative);
                let memory_usage_bytes = number(&memory.join("memory.usage_in_bytes"))?;
                let stat = read(&memory.join("memory.stat"))?;
                let inactive = stat_value(&stat, "total_inactive_file")
                    .or_else(|| stat_value(&stat, "inactive_file"))
                    .unwrap_or(0);
                Ok(CgroupUsage {
                    cpu_usage_ns,
                    memory_usage_bytes,
                    memory_working_set_bytes: working_set(memory_usage_bytes, inactive),
                })
            }
        }
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn number(path: &Path) -> Result<u64> {
    read(path)?.trim().parse().map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        field: "number",
    })
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Usage minus inactive file cache, never below zero (as cAdvisor computes it).
pub fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

/// The average CPU rate between two cumulative readings, in nanocores (billionths of
/// a core): CPU nanoseconds used per second of wall time, times 10⁹ / 10⁹.
pub fn nanocores(previous_cpu_ns: u64, cpu_ns: u64, elapsed_ns: u128) -> u64 {
    if elapsed_ns == 0 || cpu_ns < previous_cpu_ns {
        return 0;
    }
    let used = u128::from(cpu_ns - previous_cpu_ns);
    u64::try_from(used * 1_000_000_000 / elapsed_ns).unwrap_or(u64::MAX)
}

/// Samples containers and remembers each one's previous reading for the CPU rate.
#[derive(Debug)]
pub struct StatsCollector {
    hierarchy: Hierarchy,
    previous: Mutex<HashMap<String, (Instant, u64)>>,
}

impl StatsCollector {
    pub fn new(hierarchy: Hierarchy) -> Self {
        StatsCollector {
            hierarchy,
            previous: Mutex::new(HashMap::new()),
        }
    }

    /// Samples container `id` whose cgroup is `cgroup` (blocking file reads).
    ///
    /// # Errors
    /// When its cgroup cannot be read.
    pub fn sample(&self, id: &str, cgroup: &Path) -> Result<ContainerUsage> {
        let usage = self.hierarchy.read(cgroup)?;
        let now = Instant::now();
        let previous = self
            .previous
            .lock()
            .insert(id.to_string(), (now, usage.cpu_usage_ns));
        let cpu_usage_nanocores = previous.map_or(0, |(at, cpu)| {
            nanocores(cpu, usage.cpu_usage_ns, now.duration_since(at).as_nanos())
        });
        Ok(ContainerUsage {
            usage,
            cpu_usage_nanocores,
        })
    }

    /// Forgets containers not in `live` (removed ones).
    pub fn retain(&self, live: &[String]) {
        self.previous.lock().retain(|id, _| live.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let v2_cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(stat_value(v2_cpu, "usage_usec"), Some(1500));
        let v1_memory = "cache 100\ninactive_file 40\ntotal_inactive_file 60\n";
        assert_eq!(stat_value(v1_memory, "total_inactive_file"), Some(60));
        assert_eq!(stat_value(v1_memory, "inactive_file"), Some(40));
        assert_eq!(stat_value(v1_memory, "active_file"), None);
        assert_eq!(working_set(1000, 60), 940);
        assert_eq!(working_set(10, 60), 0);
    }

    #[test]
    fn nanocore_math() {
        // Half a core for two seconds.
        assert_eq!(nanocores(0, 1_000_000_000, 2_000_000_000), 500_000_000);
        assert_eq!(nanocores(5, 5, 1_000), 0);
        assert_eq!(nanocores(10, 5, 1_000), 0, "a reset counter");
        assert_eq!(nanocores(0, 10, 0), 0);
    }

    #[test]
    fn reads_a_v2_and_a_v1_layout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let v2 = dir.path().join("v2/rkube/c1");
        std::fs::create_dir_all(&v2).expect("mkdir");
        std::fs::write(v2.join("cpu.stat"), "usage_usec 7\n").expect("write");
        std::fs::write(v2.join("memory.current"), "1000\n").expect("write");
        std::fs::write(v2.join("memory.stat"), "anon 5\ninactive_file 300\n").expect("write");
        let usage = Hierarchy::V2(dir.path().join("v2"))
            .read(Path::new("/rkube/c1"))
            .expect("read");
        assert_eq!(
            usage,
            CgroupUsage {
                cpu_usage_ns: 7000,
                memory_usage_bytes: 1000,
                memory_working_set_bytes: 700
            }
        );
        let v1 = dir.path().join("v1");
        let cpu = v1.join("cpu,cpuacct/rkube/c1");
        let memory = v1.join("memory/rkube/c1");
        std::fs::create_dir_all(&cpu).expect("mkdir");
        std::fs::create_dir_all(&memory).expect("mkdir");
        std::fs::write(cpu.join("cpuacct.usage"), "123\n").expect("write");
        std::fs::write(memory.join("memory.usage_in_bytes"), "4096\n").expect("write");
        std::fs::write(memory.join("memory.stat"), "total_inactive_file 96\n").expect("write");
        let usage = Hierarchy::V1(v1)
            .read(Path::new("/rkube/c1"))
            .expect("read");
        assert_eq!(usage.cpu_usage_ns, 123);
        assert_eq!(usage.memory_working_set_bytes, 4000);
        assert!(Hierarchy::V2(dir.path().join("none"))
            .read(Path::new("/rkube/c1"))
            .is_err());
    }
}
