//! Node-local pod address management: hands out addresses of the node's podCIDR to
//! sandboxes and remembers them in one JSON file (`<network dir>/ipam.json`), written
//! atomically before an address is used, so a restarted agent never hands out an
//! address in use.
//!
//! The first host address of the range is the bridge's (the pods' gateway); the network
//! and broadcast addresses are never given out. Allocation goes round-robin from the
//! last address handed out, so a released address is not reused at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// What can go wrong with the allocation file or the range.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid allocation file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free address left in {cidr}")]
    Exhausted { cidr: Ipv4Network },
    #[error("pod CIDR {cidr} is too small for pods (needs at least a /30)")]
    RangeTooSmall { cidr: Ipv4Network },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The persisted state: the range and who holds which address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// The range, as text (`10.244.1.0/24`).
    cidr: Option<String>,
    /// Address → sandbox id.
    allocations: BTreeMap<Ipv4Addr, String>,
    /// The address handed out last; the next search starts after it.
    last: Option<Ipv4Addr>,
}

/// The allocator of one node's pod range, backed by a file.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    cidr: Ipv4Network,
    state: State,
}

impl Ipam {
    /// Opens (or starts) the allocation file `path` for `cidr`. Allocations recorded
    /// for another range (the node got a new podCIDR) are dropped with a warning.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or the range holds no pod address.
    pub fn open(path: impl Into<PathBuf>, cidr: Ipv4Network) -> Result<Self> {
        let path = path.into();
        if cidr.prefix() > 30 {
            return Err(Error::RangeTooSmall { cidr });
        }
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<State>(&bytes).map_err(|source| Error::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => return Err(Error::Read { path, source }),
        };
        if state
            .cidr
            .as_ref()
            .is_some_and(|old| *old != cidr.to_string())
        {
            warn!(old = ?state.cidr, new = %cidr, dropped = state.allocations.len(), "pod CIDR changed; dropping old allocations");
            state = State::default();
        }
        state.cidr = Some(cidr.to_string());
        let ipam = Ipam { path, cidr, state };
        ipam.save()?;
        Ok(ipam)
    }

    /// The pods' gateway: the first host address of the range.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.cidr)
    }

    /// The range.
    pub fn cidr(&self) -> Ipv4Network {
        self.cidr
    }

    /// The address of `sandbox`, if it holds one.
    pub fn get(&self, sandbox: &str) -> Option<Ipv4Addr> {
        self.state
            .allocations
            .iter()
            .find(|(_, holder)| holder.as_str() == sandbox)
            .map(|(ip, _)| *ip)
    }

    /// Every allocation, address → sandbox id.
    pub fn allocations(&self) -> &BTreeMap<Ipv4Addr, String> {
        &self.state.allocations
    }

    /// The address of `sandbox`: the one it holds, else a free one, recorded on disk
    /// before it is returned.
    ///
    /// # Errors
    /// When the range is full or the file cannot be written.
    pub fn allocate(&mut self, sandbox: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.get(sandbox) {
            return Ok(ip);
        }
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.cidr.broadcast()) - 1;
        let size = last - first + 1;
        let start = match self.state.last.map(u32::from) {
            Some(prev) if (first..=last).contains(&prev) => prev - first + 1,
            _ => 0,
        };
        let free = (0..size)
            .map(|step| Ipv4Addr::from(first + (start + step) % size))
            .find(|ip| !self.state.allocations.contains_key(ip))
            .ok_or(Error::Exhausted { cidr: self.cidr })?;
        self.state.allocations.insert(free, sandbox.to_string());
        self.state.last = Some(free);
        if let Err(err) = self.save() {
            self.state.allocations.remove(&free);
            return Err(err);
        }
        info!(sandbox, ip = %free, "allocated pod address");
        Ok(free)
    }

    /// Releases the address of `sandbox`; returns it, or `None` when it held none.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn release(&mut self, sandbox: &str) -> Result<Option<Ipv4Addr>> {
        let Some(ip) = self.get(sandbox) else {
            return Ok(None);
        };
        self.state.allocations.remove(&ip);
        self.save()?;
        info!(sandbox, ip = %ip, "released pod address");
        Ok(Some(ip))
    }

    /// Releases every address whose sandbox `is_live` says is gone; returns how many.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn sweep(&mut self, is_live: impl Fn(&str) -> bool) -> Result<usize> {
        let before = self.state.allocations.len();
        self.state.allocations.retain(|ip, sandbox| {
            let keep = is_live(sandbox);
            if !keep {
                info!(sandbox = %sandbox, ip = %ip, "released address of a sandbox that is gone");
            }
            keep
        });
        let released = before - self.state.allocations.len();
        if released > 0 {
            self.save()?;
        }
        Ok(released)
    }

    /// Writes the state to a temporary file, syncs it and renames it over the old one.
    fn save(&self) -> Result<()> {
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            let bytes = serde_json::to_vec_pretty(&self.state).map_err(std::io::Error::other)?;
            {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, path)
        };
        write(&self.path).map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// The first host address of `cidr`: the bridge's address, the pods' gateway.
pub fn gateway(cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Network {
        text.parse().expect("test CIDR")
    }

    #[test]
    fn allocates_distinct_addresses_skipping_gateway_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam = Ipam::open(dir.path().join("ipam.json"), cidr("10.1.2.0/24")).expect("open");
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 1, 2, 1));
        let a = ipam.allocate("a").expect("a");
        let b = ipam.allocate("b").expect("b");
        assert_eq!(a, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(b, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(ipam.allocate("a").expect("a again"), a);
        assert_eq!(ipam.allocations().len(), 2);
    }

    #[test]
    fn a_reopened_allocator_never_hands_out_an_address_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam.json");
        let mut used = Vec::new();
        {
            let mut ipam = Ipam::open(&path, cidr("10.1.3.0/29")).expect("open");
            used.push(ipam.allocate("a").expect("a"));
            used.push(ipam.allocate("b").expect("b"));
            ipam.release("a").expect("release");
            used.remove(0);
        }
        let mut ipam = Ipam::open(&path, cidr("10.1.3.0/29")).expect("reopen");
        assert_eq!(ipam.get("b"), Some(used[0]));
        // /29: .1 gateway, .2-.6 pods; b holds one of them, four are free.
        for name in ["c", "d", "e", "f"] {
            let ip = ipam.allocate(name).expect("free address");
            assert!(!used.contains(&ip), "{ip} handed out twice");
            used.push(ip);
        }
        assert!(matches!(ipam.allocate("g"), Err(Error::Exhausted { .. })));
        assert!(used
            .iter()
            .all(|ip| *ip != Ipv4Addr::new(10, 1, 3, 1) && *ip != Ipv4Addr::new(10, 1, 3, 7)));
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam = Ipam::open(dir.path().join("ipam.json"), cidr("10.1.4.0/24")).expect("open");
        let a = ipam.allocate("a").expect("a");
        ipam.release("a").expect("release");
        assert_ne!(ipam.allocate("b").expect("b"), a);
    }

    #[test]
    fn sweep_releases_gone_sandboxes_and_a_new_cidr_resets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam.json");
        let mut ipam = Ipam::open(&path, cidr("10.1.5.0/24")).expect("open");
        ipam.allocate("live").expect("live");
        ipam.allocate("gone").expect("gone");
        assert_eq!(ipam.sweep(|id| id == "live").expect("sweep"), 1);
        assert_eq!(ipam.get("gone"), None);
        drop(ipam);
        let ipam = Ipam::open(&path, cidr("10.1.5.0/24")).expect("reopen");
        assert!(ipam.get("live").is_some());
        drop(ipam);
        let ipam = Ipam::open(&path, cidr("10.1.6.0/24")).expect("new range");
        assert!(ipam.allocations().is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(matches!(
            Ipam::open(&path, cidr("10.1.7.0/24")),
            Err(Error::Parse { .. })
        ));
    }
}
