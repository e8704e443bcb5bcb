//! What the host is: CPUs, memory, disk, kernel, OS image and addresses, read from
//! `/proc`, `/etc` and the system calls that describe them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// What inspecting the machine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no MemTotal line in /proc/meminfo")]
    NoMemTotal,
    #[error("failed to stat the filesystem of {path}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the hostname")]
    Hostname(#[source] nix::Error),
    #[error("the hostname is not valid UTF-8")]
    HostnameNotUtf8,
    #[error("invalid quantity {value:?}: {reason}")]
    Quantity { value: String, reason: &'static str },
}

/// A capacity this node reports instead of the machine's own (a lab node given its
/// share of one machine, so scheduling behaves as on separate machines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityOverride {
    /// Whole CPUs.
    pub cpus: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
}

static CAPACITY_OVERRIDE: std::sync::OnceLock<CapacityOverride> = std::sync::OnceLock::new();

/// Makes every later [`MachineInfo::detect`] of this process report `capacity`
/// (`--node-cpu`/`--node-memory`); only the first call counts.
pub fn set_capacity_override(capacity: CapacityOverride) {
    let _ = CAPACITY_OVERRIDE.set(capacity);
}

/// Parses a Kubernetes CPU quantity that is a whole number of CPUs (`2`, `4000m`).
///
/// # Errors
/// When it is not a quantity, not positive or not whole.
pub fn parse_cpu_quantity(value: &str) -> Result<u64> {
    let invalid = |reason| Error::Quantity {
        value: value.to_string(),
        reason,
    };
    let millis = match value.strip_suffix('m') {
        Some(millis) => millis
            .parse::<u64>()
            .map_err(|_| invalid("not a number of millicores"))?,
        None => value
            .parse::<u64>()
            .map_err(|_| invalid("not a whole number of CPUs"))?
            .checked_mul(1000)
            .ok_or_else(|| invalid("too large"))?,
    };
    if millis == 0 || millis % 1000 != 0 {
        return Err(invalid(
            "the node capacity must be a positive whole number of CPUs",
        ));
    }
    Ok(millis / 1000)
}

/// Parses a Kubernetes memory quantity (`4Gi`, `512Mi`, `2G`, `1000000`) into bytes.
///
/// # Errors
/// When it is not a quantity with a known suffix, or is zero.
pub fn parse_memory_quantity(value: &str) -> Result<u64> {
    let invalid = |reason| Error::Quantity {
        value: value.to_string(),
        reason,
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid("not a number"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(invalid(
                "unknown suffix (want k, M, G, T, Ki, Mi, Gi or Ti)",
            ))
        }
    };
    match number.checked_mul(unit) {
        Some(0) => Err(invalid("must be positive")),
        Some(bytes) => Ok(bytes),
        None => Err(invalid("too large")),
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The facts about the host that the Node object reports.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineInfo {
    pub hostname: String,
    /// Online CPUs.
    pub cpus: u64,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Size in bytes of the filesystem holding the agent's state directory.
    pub ephemeral_storage_bytes: u64,
    pub internal_ip: IpAddr,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os_image: String,
    /// The Kubernetes name of the architecture (`amd64`, `arm64`…).
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
}

impl MachineInfo {
    /// Inspects this machine; `root_dir` (created if missing) is where ephemeral storage
    /// lives, `node_ip` overrides address detection.
    ///
    /// # Errors
    /// When `/proc/meminfo` or the state directory cannot be read.
    pub fn detect(root_dir: &Path, node_ip: Option<IpAddr>) -> Result<Self> {
        std::fs::create_dir_all(root_dir).map_err(|source| Error::CreateDir {
            path: root_dir.to_path_buf(),
            source,
        })?;
        let meminfo = read("/proc/meminfo")?;
        let memory_bytes = parse_mem_total(&meminfo).ok_or(Error::NoMemTotal)?;
        let stat = nix::sys::statvfs::statvfs(root_dir).map_err(|source| Error::Statvfs {
            path: root_dir.to_path_buf(),
            source,
        })?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let ephemeral_storage_bytes =
            u64::from(stat.blocks()).saturating_mul(u64::from(stat.fragment_size()));
        let uname = nix::sys::utsname::uname().ok();
        let kernel_version = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let os_image = read("/etc/os-release")
            .ok()
            .and_then(|text| parse_pretty_name(&text))
            .unwrap_or_else(|| "Linux".to_string());
        let detected_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let capacity = CAPACITY_OVERRIDE.get().copied().unwrap_or_default();
        let cpus = capacity.cpus.unwrap_or(detected_cpus);
        let memory_bytes = capacity.memory_bytes.unwrap_or(memory_bytes);
        Ok(MachineInfo {
            hostname: hostname()?,
            cpus,
            memory_bytes,
            ephemeral_storage_bytes,
            internal_ip: node_ip.unwrap_or_else(detect_ip),
            kernel_version,
            os_image,
            architecture: kubernetes_arch(std::env::consts::ARCH).to_string(),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        })
    }
}

/// The machine's hostname.
///
/// # Errors
/// When the system call fails or the name is not UTF-8.
pub fn hostname() -> Result<String> {
    nix::unistd::gethostname()
        .map_err(Error::Hostname)?
        .into_string()
        .map_err(|_| Error::HostnameNotUtf8)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })
}

/// The file's content without surrounding whitespace, or "" when it cannot be read
/// (these identifiers are informative only).
fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// `PRETTY_NAME` from `/etc/os-release`, unquoted.
fn parse_pretty_name(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    Some(value.trim().trim_matches('"').to_string())
}

/// Go's GOARCH name for a Rust target architecture.
fn kubernetes_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The address the kernel would use to reach the outside world, or the first
/// non-loopback IPv4 address of an interface that is up, or 127.0.0.1.
fn detect_ip() -> IpAddr {
    let routed = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    if let Ok(addr) = routed {
        if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
            return addr.ip();
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_os_release_and_arch() {
        let meminfo = "MemTotal:       24683520 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24683520 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(kubernetes_arch("x86_64"), "amd64");
        assert_eq!(kubernetes_arch("aarch64"), "arm64");
        assert_eq!(kubernetes_arch("riscv64"), "riscv64");
    }

    #[test]
    fn parses_capacity_quantities() {
        assert_eq!(parse_cpu_quantity("2").expect("2"), 2);
        assert_eq!(parse_cpu_quantity("3000m").expect("3000m"), 3);
        for bad in ["0", "1500m", "x", "-1", "1.5"] {
            assert!(parse_cpu_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_memory_quantity("4Gi").expect("4Gi"), 4 << 30);
        assert_eq!(parse_memory_quantity("512Mi").expect("Mi"), 512 << 20);
        assert_eq!(parse_memory_quantity("2G").expect("G"), 2_000_000_000);
        assert_eq!(parse_memory_quantity("1024").expect("bytes"), 1024);
        for bad in ["0", "Gi", "4Xi", "4 Gi", ""] {
            assert!(parse_memory_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn detects_this_machine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = MachineInfo::detect(dir.path(), None).expect("detect");
        assert!(info.cpus >= 1);
        assert!(info.memory_bytes > 0);
        assert!(info.ephemeral_storage_bytes > 0);
        assert!(!info.hostname.is_empty());
        assert!(!info.kernel_version.is_empty());
    }
}
