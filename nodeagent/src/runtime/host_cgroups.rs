//! The one host cgroup setting the built-in runtime changes: `favordynmods` on the
//! cgroup2 hierarchy.
//!
//! Every container start moves a process into a cgroup (libcontainer writes
//! `cgroup.procs`). The kernel guards such moves with one global lock,
//! `cgroup_threadgroup_rwsem`, built to make forks cheap and moves expensive: taking it
//! for a move waits for an RCU grace period, 8 to 20 ms on a small machine and more
//! than half of a container's whole start. The cgroup2 mount option `favordynmods`
//! (Linux 6.0+, documented in the kernel's cgroup-v2 guide) flips that trade-off for the
//! whole kernel, cgroup v1 hierarchies included: a move costs about 0.1 ms, and forks and
//! exits pay a little more. A node whose job is starting containers wants that trade.
//!
//! The option lives on the cgroup2 superblock, so [`favor_dynamic_modifications`]
//! remounts every cgroup2 mount that lacks it, keeping its other mount and superblock
//! options. On a host without a cgroup2 mount (pure cgroup v1) there is nothing to
//! change; container starts are then slower, not broken.

use std::path::PathBuf;

use nix::mount::{mount, MsFlags};

/// The option this module adds.
const FAVOR_DYNMODS: &str = "favordynmods";

/// What [`favor_dynamic_modifications`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These cgroup2 mounts were remounted with `favordynmods`.
    Remounted(Vec<PathBuf>),
    /// Every cgroup2 mount already had it.
    AlreadySet,
    /// The host has no cgroup2 mount.
    NoCgroup2,
}

/// Why the remount could not be done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read /proc/self/mountinfo")]
    MountInfo(#[source] std::io::Error),
    #[error("could not remount {target} with {FAVOR_DYNMODS} (needs Linux 6.0 or later)")]
    Remount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// A remount that adds `favordynmods` to one cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Remount {
    target: PathBuf,
    /// The mount's per-mount flags (`nosuid`, `nodev`, …), which a remount replaces.
    flags: MsFlags,
    /// The superblock options to keep, plus `favordynmods`.
    data: String,
}

/// Makes moving processes between cgroups cheap on this host, as the module doc says.
///
/// # Errors
/// When mountinfo cannot be read or a remount is refused (an old kernel).
pub fn favor_dynamic_modifications() -> Result<Outcome, Error> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::MountInfo)?;
    if !mountinfo.lines().any(|line| parse_cgroup2(line).is_some()) {
        return Ok(Outcome::NoCgroup2);
    }
    let remounts = plan(&mountinfo);
    if remounts.is_empty() {
        return Ok(Outcome::AlreadySet);
    }
    let mut done = Vec::with_capacity(remounts.len());
    for remount in remounts {
        mount(
            None::<&str>,
            &remount.target,
            None::<&str>,
            MsFlags::MS_REMOUNT | remount.flags,
            Some(remount.data.as_str()),
        )
        .map_err(|source| Error::Remount {
            target: remount.target.clone(),
            source,
        })?;
        done.push(remount.target);
    }
    Ok(Outcome::Remounted(done))
}

/// The remounts needed: one per cgroup2 mount in `mountinfo` whose superblock options
/// lack `favordynmods`. Bind mounts of the same hierarchy share its superblock, so the
/// first remount covers them, and a second is harmless.
fn plan(mountinfo: &str) -> Vec<Remount> {
    let mut remounts: Vec<Remount> = Vec::new();
    for line in mountinfo.lines() {
        let Some(mount) = parse_cgroup2(line) else {
            continue;
        };
        if mount.super_options.contains(&FAVOR_DYNMODS) {
            continue;
        }
        let mut flags = MsFlags::empty();
        for option in &mount.mount_options {
            flags |= match *option {
                "ro" => MsFlags::MS_RDONLY,
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                "strictatime" => MsFlags::MS_STRICTATIME,
                _ => MsFlags::empty(),
            };
        }
        let mut data: Vec<&str> = mount
            .super_options
            .iter()
            .copied()
            .filter(|o| *o != "rw" && *o != "ro")
            .collect();
        data.push(FAVOR_DYNMODS);
        remounts.push(Remount {
            target: PathBuf::from(mount.target),
            flags,
            data: data.join(","),
        });
    }
    remounts
}

/// The mount points of every cgroup hierarchy, v1 and v2, in `mountinfo`.
pub fn hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(parse_mount)
        .filter(|m| matches!(m.fstype, "cgroup" | "cgroup2"))
        .map(|m| PathBuf::from(m.target))
        .collect()
}

/// One mountinfo line, split into the parts this module needs.
struct MountLine<'a> {
    target: &'a str,
    mount_options: Vec<&'a str>,
    fstype: &'a str,
    super_options: Vec<&'a str>,
}

/// Parses one line of `/proc/self/mountinfo` (see proc(5)): `id parent major:minor root
/// target mount-options [optional…] - fstype source super-options`.
fn parse_mount(line: &str) -> Option<MountLine<'_>> {
    let (before, after) = line.split_once(" - ")?;
    let mut before = before.split(' ');
    let target = before.nth(4)?;
    let mount_options = before.next()?.split(',').collect();
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let super_options = after.nth(1)?.split(',').collect();
    // Targets with spaces and other odd bytes are octal-escaped in mountinfo; a cgroup
    // mount has none, and one that did would only fail its remount.
    Some(MountLine {
        target,
        mount_options,
        fstype,
        super_options,
    })
}

/// [`parse_mount`] for cgroup2 mounts only.
fn parse_cgroup2(line: &str) -> Option<MountLine<'_>> {
    parse_mount(line).filter(|m| m.fstype == "cgroup2")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn hierarchies_are_the_cgroup_mounts_of_both_versions() {
        assert_eq!(
            hierarchies(HYBRID),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }

    /// The fix vendor/libcgroups carries: every subsystem is found in one read of
    /// mountinfo, by the rules each lookup used to apply to its own read.
    #[test]
    fn vendored_libcgroups_finds_every_subsystem_in_one_mountinfo() {
        use libcgroups::v1::util::find_subsystem_mount_point;
        use libcgroups::v1::ControllerType;
        let lines = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/net_cls,net_prio rw,relatime shared:13 - cgroup cgroup rw,net_cls,net_prio";
        let mounts: Vec<_> = lines
            .lines()
            .map(|l| procfs::process::MountInfo::from_line(l).expect("a mountinfo line"))
            .filter(|m| m.fs_type == "cgroup")
            .collect();
        let cases = [
            (ControllerType::Cpu, Some("/sys/fs/cgroup/cpu,cpuacct")),
            (ControllerType::CpuAcct, Some("/sys/fs/cgroup/cpu,cpuacct")),
            (ControllerType::Memory, Some("/sys/fs/cgroup/memory")),
            (
                ControllerType::NetworkClassifier,
                Some("/sys/fs/cgroup/net_cls,net_prio"),
            ),
            (
                ControllerType::NetworkPriority,
                Some("/sys/fs/cgroup/net_cls,net_prio"),
            ),
            (ControllerType::HugeTlb, None),
            (ControllerType::Pids, None),
        ];
        for (subsystem, want) in cases {
            let found = find_subsystem_mount_point(&mounts, &subsystem).ok();
            assert_eq!(found, want.map(PathBuf::from), "{subsystem}");
        }
    }

    #[test]
    fn a_cgroup2_mount_without_the_option_is_remounted_keeping_its_options() {
        let remounts = plan(HYBRID);
        assert_eq!(
            remounts,
            vec![Remount {
                target: PathBuf::from("/sys/fs/cgroup/unified"),
                flags: MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC
                    | MsFlags::MS_RELATIME,
                data: "nsdelegate,favordynmods".to_string(),
            }]
        );
    }

    #[test]
    fn a_mount_that_has_the_option_and_v1_hierarchies_are_left_alone() {
        let set = HYBRID.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods");
        assert!(plan(&set).is_empty());
        let v1_only: String = HYBRID.lines().filter(|l| !l.contains("cgroup2")).collect();
        assert!(plan(&v1_only).is_empty());
    }

    #[test]
    fn a_read_only_cgroup2_stays_read_only() {
        let line = "40 1 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let remounts = plan(line);
        assert_eq!(remounts.len(), 1);
        assert!(remounts[0].flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(
            remounts[0].data,
            "nsdelegate,memory_recursiveprot,favordynmods"
        );
    }
}
