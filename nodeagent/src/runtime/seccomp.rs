//! The runtime's default seccomp profile (`seccompProfile.type: RuntimeDefault`), in
//! the spirit of the container engines' defaults: every system call returns `EPERM`
//! unless it is on an allow list of what ordinary programs need. Calls that only a
//! capability makes useful (mounting, namespaces, module loading, the clock, tracing
//! other processes…) are allowed only when the container holds that capability, and a
//! few are allowed only with harmless arguments (`personality`, `clone` without new
//! namespaces, `socket` without `AF_VSOCK`).
//!
//! The lists are data: names as the kernel's syscall table spells them, one list shared
//! by x86_64 and aarch64 and the older calls only x86_64 has. The filter covers the
//! native architecture only; 32-bit compat calls hit the filter's bad-architecture
//! action and are refused.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// What building the profile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no RuntimeDefault seccomp profile for architecture {arch}")]
    UnsupportedArch { arch: &'static str },
    #[error("invalid seccomp profile")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The architectures a profile can be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    X86_64,
    Aarch64,
}

impl Target {
    /// The architecture this binary was built for.
    ///
    /// # Errors
    /// [`Error::UnsupportedArch`] on anything but x86_64 and aarch64.
    pub fn native() -> Result<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Target::X86_64),
            "aarch64" => Ok(Target::Aarch64),
            arch => Err(Error::UnsupportedArch { arch }),
        }
    }

    fn scmp_arch(self) -> Arch {
        match self {
            Target::X86_64 => Arch::ScmpArchX86_64,
            Target::Aarch64 => Arch::ScmpArchAarch64,
        }
    }
}

/// Allowed for everyone on both architectures.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "adjtimex",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "dup",
    "dup3",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "get_robust_list",
    "getcpu",
    "getcwd",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lgetxattr",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdirat",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "openat",
    "openat2",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd4",
    "socketpair",
    "splice",
    "statfs",
    "statx",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlinkat",
    "utimensat",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// The older calls only x86_64 has (aarch64 has just their `*at` successors).
const ALLOWED_X86_64: &[&str] = &[
    "access",
    "alarm",
    "arch_prctl",
    "chmod",
    "chown",
    "creat",
    "dup2",
    "epoll_create",
    "epoll_wait",
    "eventfd",
    "fork",
    "futimesat",
    "get_thread_area",
    "getdents",
    "getpgrp",
    "inotify_init",
    "lchown",
    "link",
    "lstat",
    "map_shadow_stack",
    "mkdir",
    "mknod",
    "modify_ldt",
    "open",
    "pause",
    "pipe",
    "poll",
    "readlink",
    "rename",
    "rmdir",
    "select",
    "set_thread_area",
    "signalfd",
    "stat",
    "symlink",
    "time",
    "unlink",
    "utime",
    "utimes",
    "vfork",
];

/// Calls allowed only to a container that holds the capability (Kubernetes' name).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_CHROOT", &["chroot"]),
    (
        "SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("SYS_PACCT", &["acct"]),
    (
        "SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
        ],
    ),
    ("SYS_TIME", &["settimeofday", "clock_settime"]),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    (
        "SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("SYSLOG", &["syslog"]),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Capability-gated calls only x86_64 has.
const BY_CAPABILITY_X86_64: &[(&str, &[&str])] = &[("SYS_RAWIO", &["iopl", "ioperm"])];

/// `personality` values that only select the Linux ABI or query: the plain Linux
/// personality, `PER_LINUX32`, `UNAME26`, both, and the query `0xffffffff`.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags of `clone`: `CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC |
/// NEWUSER | NEWPID | NEWNET` (and `CLONE_NEWTIME`'s bit shares `CSIGNAL`, so it is
/// left to `unshare`).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`, the one socket family the profile refuses.
const AF_VSOCK: u64 = 40;

/// `ENOSYS`: `clone3` answers this without `SYS_ADMIN` so that libc falls back to
/// `clone`, whose flags the filter can inspect.
const ENOSYS: u32 = 38;

/// Strips a `CAP_` prefix and upper-cases: Kubernetes' spelling.
fn kube_name(capability: &str) -> String {
    let upper = capability.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// The RuntimeDefault profile for a container holding `capabilities` (their names in
/// any spelling: `NET_ADMIN` or `CAP_NET_ADMIN`).
///
/// # Errors
/// When the profile does not validate as an OCI seccomp section.
pub fn runtime_default(target: Target, capabilities: &[String]) -> Result<LinuxSeccomp> {
    let held: Vec<String> = capabilities.iter().map(|c| kube_name(c)).collect();
    let holds = |cap: &str| held.iter().any(|h| h == cap);

    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    if target == Target::X86_64 {
        allowed.extend_from_slice(ALLOWED_X86_64);
    }
    let gated = BY_CAPABILITY.iter().chain(if target == Target::X86_64 {
        BY_CAPABILITY_X86_64
    } else {
        &[]
    });
    for (cap, names) in gated {
        if holds(cap) {
            allowed.extend_from_slice(names);
        }
    }
    allowed.sort_unstable();
    allowed.dedup();

    let mut syscalls = vec![allow(&allowed)?];
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["personality".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(
                PERSONALITIES
                    .iter()
                    .map(|value| {
                        LinuxSeccompArgBuilder::default()
                            .index(0usize)
                            .value(*value)
                            .op(LinuxSeccompOperator::ScmpCmpEq)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .build()?,
    );
    if !holds("SYS_ADMIN") {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(0u64)
                    .value_two(CLONE_NAMESPACE_FLAGS)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["socket".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(AF_VSOCK)
                .op(LinuxSeccompOperator::ScmpCmpNe)
                .build()?])
            .build()?,
    );

    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(nix::libc::EPERM as u32)
        .architectures(vec![target.scmp_arch()])
        .syscalls(syscalls)
        .build()?)
}

fn allow(names: &[&str]) -> Result<LinuxSyscall> {
    Ok(LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &LinuxSeccomp, name: &str) -> bool {
        profile.syscalls().iter().flatten().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().as_ref().is_none_or(|a| a.is_empty())
                && s.names().iter().any(|n| n == name)
        })
    }

    fn conditional(profile: &LinuxSeccomp, name: &str) -> Option<LinuxSyscall> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .find(|s| {
                s.names().iter().any(|n| n == name)
                    && s.args().as_ref().is_some_and(|a| !a.is_empty())
            })
            .cloned()
    }

    #[test]
    fn default_denies_with_eperm_and_allows_ordinary_calls() {
        let profile = runtime_default(Target::X86_64, &[]).expect("profile");
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(profile.default_errno_ret(), Some(1));
        assert_eq!(
            profile.architectures().clone(),
            Some(vec![Arch::ScmpArchX86_64])
        );
        for name in ["read", "execve", "openat", "open", "arch_prctl", "wait4"] {
            assert!(allowed(&profile, name), "{name} allowed");
        }
        for name in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "init_module",
            "keyctl",
            "add_key",
            "kexec_load",
            "bpf",
            "clone",
            "ptrace_nonexistent",
        ] {
            assert!(!allowed(&profile, name), "{name} denied");
        }
        let clone = conditional(&profile, "clone").expect("clone without namespaces");
        let arg = clone.args().clone().expect("args")[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.value_two(), arg.op()),
            (
                0,
                0,
                Some(CLONE_NAMESPACE_FLAGS),
                LinuxSeccompOperator::ScmpCmpMaskedEq
            )
        );
        let clone3 = profile
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names().iter().any(|n| n == "clone3"))
            .expect("clone3 rule");
        assert_eq!(
            (clone3.action(), clone3.errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(ENOSYS))
        );
        assert!(conditional(&profile, "socket").is_some());
        let personality = conditional(&profile, "personality").expect("personality");
        assert_eq!(personality.args().as_ref().map(Vec::len), Some(5));
    }

    #[test]
    fn capabilities_unlock_their_calls() {
        let profile = runtime_default(
            Target::X86_64,
            &[
                "CAP_SYS_ADMIN".into(),
                "sys_time".into(),
                "SYS_RAWIO".into(),
            ],
        )
        .expect("profile");
        for name in [
            "mount",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "clock_settime",
            "iopl",
        ] {
            assert!(allowed(&profile, name), "{name} allowed");
        }
        assert!(conditional(&profile, "clone").is_none());
        assert!(!allowed(&profile, "reboot"));
        assert!(!allowed(&profile, "init_module"));
    }

    #[test]
    fn aarch64_leaves_out_x86_only_calls() {
        let profile = runtime_default(Target::Aarch64, &["SYS_RAWIO".into()]).expect("profile");
        assert_eq!(
            profile.architectures().clone(),
            Some(vec![Arch::ScmpArchAarch64])
        );
        assert!(allowed(&profile, "openat"));
        for name in ["open", "arch_prctl", "fork", "iopl"] {
            assert!(!allowed(&profile, name), "{name} not on aarch64");
        }
    }
}
