//! A container's OCI runtime spec, built from the pod's container spec and the image
//! config: Kubernetes' command/args over Entrypoint/Cmd, env over the image's Env,
//! workingDir, user, read-only root, cgroup limits, the sandbox's namespaces and the
//! volumes as bind mounts.
//!
//! Its privileges follow containerd's CRI defaults: an unprivileged container gets the
//! [`DEFAULT_CAPABILITIES`] (changed by `capabilities.add`/`drop`, `ALL` included) in
//! its bounding, effective and permitted sets (inheritable and ambient empty), the
//! [`MASKED_PATHS`] and [`READONLY_PATHS`], `no_new_privs` when escalation is refused
//! and the RuntimeDefault seccomp profile of [`super::seccomp`] unless Unconfined. A
//! privileged container gets every capability the kernel knows, no seccomp, no masked
//! or read-only paths and a writable `/sys`; host devices are not passed in.

use std::path::{Path, PathBuf};

use std::collections::HashSet;

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, RootBuilder,
    Spec,
};

use super::image::ImageConfig;
use super::seccomp::{self, Target};
use super::{ContainerConfig, Resources, SeccompProfile, Security};

/// CFS period in µs that [`Resources::cpu_quota`] is relative to.
pub const CPU_PERIOD: u64 = 100_000;

/// What building a spec can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container has no command: neither the pod nor the image names one")]
    NoCommand,
    #[error("image user {user:?} is not numeric; user names are not resolved yet")]
    UserName { user: String },
    #[error("unknown capability {name:?}")]
    UnknownCapability { name: String },
    #[error("cannot build the seccomp profile")]
    Seccomp(#[from] seccomp::Error),
    #[error("invalid OCI spec")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// The capabilities of an unprivileged container (containerd's CRI defaults), as
/// Kubernetes names them.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability, in the kernel's order (`CAP_CHOWN` is 0, `CAP_CHECKPOINT_RESTORE`
/// 40); a kernel knows those up to `/proc/sys/kernel/cap_last_cap`.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Paths an unprivileged container sees empty (masked by `/dev/null` or a tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths an unprivileged container sees read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The namespaces a container joins instead of creating its own (the pod sandbox's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// The process argv as Kubernetes defines it: `command` replaces the Entrypoint (and
/// drops Cmd), `args` replaces Cmd.
pub fn process_args(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The image's Env with the container's variables replacing those of the same name.
pub fn merged_env(image: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    for (key, value) in container {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid and gid: `runAsUser`/`runAsGroup`, else the image's numeric `User` (`uid[:gid]`),
/// else root.
///
/// # Errors
/// [`Error::UserName`] when the image names its user by name.
pub fn user(image: &ImageConfig, config: &ContainerConfig) -> Result<(u32, u32)> {
    let parse = |s: &str| -> Result<u32> {
        s.parse().map_err(|_| Error::UserName {
            user: image.user.clone(),
        })
    };
    let (image_uid, image_gid) = match image.user.split_once(':') {
        _ if image.user.is_empty() => (0, 0),
        Some((u, g)) => (parse(u)?, parse(g)?),
        None => (parse(&image.user)?, 0),
    };
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok((
        config.run_as_user.map(to_u32).unwrap_or(image_uid),
        config.run_as_group.map(to_u32).unwrap_or(image_gid),
    ))
}

/// The OCI spec of a container: the runtime's defaults (capabilities, masked and
/// read-only paths, mounts) with the container's process, root, limits and namespaces.
///
/// # Errors
/// When there is no command, the user is not numeric, or the spec is invalid.
pub fn oci_spec(
    config: &ContainerConfig,
    image: &ImageConfig,
    rootfs: &Path,
    hostname: &str,
    namespaces: &SandboxNamespaces,
) -> Result<Spec> {
    let args = process_args(image, &config.command, &config.args);
    if args.is_empty() {
        return Err(Error::NoCommand);
    }
    let (uid, gid) = user(image, config)?;
    let cwd = config
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_string());

    let mut spec = Spec::default();
    if let Some(process) = spec.process_mut().as_mut() {
        process.set_args(Some(args));
        process.set_env(Some(merged_env(&image.env, &config.env)));
        process.set_cwd(PathBuf::from(cwd));
        process.set_terminal(Some(false));
        process.user_mut().set_uid(uid);
        process.user_mut().set_gid(gid);
    }
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(config.read_only_root_filesystem)
            .build()?,
    ));
    spec.set_hostname(Some(hostname.to_string()));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for mount in &config.mounts {
        let access = if mount.read_only { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(&mount.container_path)
                .typ("bind")
                .source(&mount.host_path)
                .options(vec!["rbind".into(), "rprivate".into(), access.into()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    if let Some(linux) = spec.linux_mut().as_mut() {
        let joined = [
            (LinuxNamespaceType::Network, &namespaces.network),
            (LinuxNamespaceType::Ipc, &namespaces.ipc),
            (LinuxNamespaceType::Uts, &namespaces.uts),
        ];
        let mut list = linux.namespaces().clone().unwrap_or_default();
        for (typ, path) in joined {
            list.retain(|ns| ns.typ() != typ);
            let mut builder = LinuxNamespaceBuilder::default().typ(typ);
            if let Some(path) = path {
                builder = builder.path(path.clone());
            }
            list.push(builder.build()?);
        }
        linux.set_namespaces(Some(list));
        linux.set_resources(Some(resources(&config.resources)?));
    }
    apply_security(&mut spec, &config.security, host_capabilities())?;
    Ok(spec)
}

/// Kubernetes' spelling of a capability: upper case, no `CAP_` prefix.
fn kube_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// The capabilities this process may hand on (its bounding set, `CapBnd` of
/// `/proc/self/status`) as a bit mask; `None` when it cannot be read. A container can
/// hold no capability outside it: the kernel refuses to raise one (a host or an outer
/// container may lack, say, `SYS_RESOURCE`).
/// Read once: a bounding set never grows.
pub fn host_capabilities() -> Option<u64> {
    static BOUNDING: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *BOUNDING.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mask = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
        u64::from_str_radix(mask.trim(), 16).ok()
    })
}

/// The capabilities a container holds, in Kubernetes' spelling and the kernel's order:
/// every available one when privileged; otherwise the defaults (or all of them for
/// `add: [ALL]`), none left for `drop: [ALL]`, without those dropped and with those
/// added. `available` is [`host_capabilities`]: what is not in it is left out
/// (`None`: everything in [`ALL_CAPABILITIES`]).
///
/// # Errors
/// [`Error::UnknownCapability`] for a name that is no capability.
pub fn capabilities(security: &Security, available: Option<u64>) -> Result<Vec<String>> {
    let usable = |index: usize| available.is_none_or(|mask| index < 64 && mask & (1 << index) != 0);
    let check = |names: &[String]| -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| kube_capability(n))
            .map(|n| {
                if n == "ALL" || ALL_CAPABILITIES.contains(&n.as_str()) {
                    Ok(n)
                } else {
                    Err(Error::UnknownCapability { name: n })
                }
            })
            .collect()
    };
    let add = check(&security.capabilities_add)?;
    let drop = check(&security.capabilities_drop)?;
    let mut held: HashSet<String> = if security.privileged || add.iter().any(|n| n == "ALL") {
        ALL_CAPABILITIES.iter().map(|n| n.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|n| n.to_string()).collect()
    };
    if !security.privileged {
        if drop.iter().any(|n| n == "ALL") {
            held.clear();
        }
        for name in &drop {
            held.remove(name);
        }
        held.extend(add.into_iter().filter(|n| n != "ALL"));
    }
    Ok(ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(index, n)| usable(*index) && held.contains(**n))
        .map(|(_, n)| n.to_string())
        .collect())
}

/// Capabilities, no_new_privs, masked and read-only paths, `/sys` access and seccomp
/// of `security` on `spec`; `available` as [`host_capabilities`] says.
///
/// # Errors
/// An unknown capability, or a seccomp profile that cannot be built.
pub fn apply_security(spec: &mut Spec, security: &Security, available: Option<u64>) -> Result<()> {
    let names = capabilities(security, available)?;
    let set: oci_spec::runtime::Capabilities = names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(format!("CAP_{n}")))
                .map_err(|_| Error::UnknownCapability { name: n.clone() })
        })
        .collect::<Result<_>>()?;
    if let Some(process) = spec.process_mut().as_mut() {
        process.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(set.clone())
                .effective(set.clone())
                .permitted(set)
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()?,
        ));
        // libcontainer loads seccomp late (after dropping capabilities) whenever the
        // field is present, even `false`; without no_new_privs that needs SYS_ADMIN,
        // so "escalation allowed" must be an absent field.
        process.set_no_new_privileges(security.no_new_privileges.then_some(true));
    }
    let privileged = security.privileged;
    if privileged {
        if let Some(mounts) = spec.mounts_mut().as_mut() {
            for mount in mounts.iter_mut() {
                let sys = mount.destination() == std::path::Path::new("/sys")
                    || mount.destination() == std::path::Path::new("/sys/fs/cgroup");
                if sys {
                    if let Some(options) = mount.options_mut().as_mut() {
                        options.retain(|o| o != "ro");
                        options.push("rw".into());
                    }
                }
            }
        }
    }
    let seccomp = match (&security.seccomp, privileged) {
        (SeccompProfile::RuntimeDefault, false) => {
            Some(seccomp::runtime_default(Target::native()?, &names)?)
        }
        _ => None,
    };
    if let Some(linux) = spec.linux_mut().as_mut() {
        let paths = |list: &[&str]| -> Option<Vec<String>> {
            (!privileged).then(|| list.iter().map(|p| p.to_string()).collect())
        };
        linux.set_masked_paths(paths(MASKED_PATHS));
        linux.set_readonly_paths(paths(READONLY_PATHS));
        linux.set_seccomp(seccomp);
    }
    Ok(())
}

fn resources(r: &Resources) -> Result<oci_spec::runtime::LinuxResources> {
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(limit) = r.memory_limit {
        builder = builder.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if r.cpu_shares.is_some() || r.cpu_quota.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = r.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(quota) = r.cpu_quota {
            cpu = cpu.quota(quota).period(CPU_PERIOD);
        }
        builder = builder.cpu(cpu.build()?);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::super::ImageRef;
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: strings(&["/bin/entry"]),
            cmd: strings(&["default"]),
            env: strings(&["PATH=/bin", "A=image"]),
            working_dir: "/srv".into(),
            user: "1000:1001".into(),
        }
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "app".into(),
            image: ImageRef {
                image: "busybox".into(),
                image_id: "busybox@sha256:x".into(),
            },
            command: vec![],
            args: vec![],
            env: vec![("A".into(), "pod".into()), ("B".into(), "2".into())],
            working_dir: None,
            run_as_user: None,
            run_as_group: None,
            read_only_root_filesystem: true,
            security: Default::default(),
            resources: Resources {
                cpu_shares: Some(256),
                cpu_quota: Some(50_000),
                memory_limit: Some(64 << 20),
            },
            mounts: vec![
                super::super::Mount {
                    host_path: "/pods/u/volumes/cfg".into(),
                    container_path: "/etc/cfg".into(),
                    read_only: true,
                },
                super::super::Mount {
                    host_path: "/pods/u/volumes/scratch".into(),
                    container_path: "/scratch".into(),
                    read_only: false,
                },
            ],
            attempt: 0,
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = image();
        let cases = [
            ("neither", vec![], vec![], vec!["/bin/entry", "default"]),
            ("args only", vec![], vec!["x"], vec!["/bin/entry", "x"]),
            ("command only", vec!["/bin/sh"], vec![], vec!["/bin/sh"]),
            (
                "both",
                vec!["/bin/sh"],
                vec!["-c", "true"],
                vec!["/bin/sh", "-c", "true"],
            ),
        ];
        for (name, command, args, want) in cases {
            assert_eq!(
                process_args(&img, &strings(&command), &strings(&args)),
                strings(&want),
                "{name}"
            );
        }
    }

    #[test]
    fn spec_carries_process_root_limits_and_sandbox_namespaces() {
        let namespaces = SandboxNamespaces {
            network: Some("/run/netns/pod".into()),
            ipc: Some("/proc/42/ns/ipc".into()),
            uts: Some("/proc/42/ns/uts".into()),
        };
        let spec = oci_spec(
            &config(),
            &image(),
            Path::new("/c/rootfs"),
            "web",
            &namespaces,
        )
        .expect("spec");
        let process = spec.process().clone().expect("process");
        assert_eq!(
            process.args().clone(),
            Some(strings(&["/bin/entry", "default"]))
        );
        assert_eq!(
            process.env().clone(),
            Some(strings(&["PATH=/bin", "A=pod", "B=2"]))
        );
        assert_eq!(process.cwd(), Path::new("/srv"));
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1001));
        let root = spec.root().clone().expect("root");
        assert_eq!(root.path(), Path::new("/c/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        let mounts = spec.mounts().clone().expect("mounts");
        let binds: Vec<(String, String, bool)> = mounts
            .iter()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .map(|m| {
                (
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                    m.destination().display().to_string(),
                    m.options()
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|o| o == "ro")),
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                ("/pods/u/volumes/cfg".into(), "/etc/cfg".into(), true),
                ("/pods/u/volumes/scratch".into(), "/scratch".into(), false),
            ]
        );
        let linux = spec.linux().clone().expect("linux");
        let namespaces = linux.namespaces().clone().expect("namespaces");
        let net = namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .expect("network namespace");
        assert_eq!(net.path().as_deref(), Some(Path::new("/run/netns/pod")));
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Mount && n.path().is_none()));
        let resources = linux.resources().clone().expect("resources");
        assert_eq!(resources.memory().and_then(|m| m.limit()), Some(64 << 20));
        let cpu = resources.cpu().clone().expect("cpu");
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(256), Some(50_000), Some(CPU_PERIOD))
        );
    }

    #[test]
    fn run_as_user_overrides_and_names_are_refused() {
        let mut c = config();
        c.run_as_user = Some(7);
        assert_eq!(user(&image(), &c).expect("user"), (7, 1001));
        let named = ImageConfig {
            user: "nobody".into(),
            ..image()
        };
        assert!(matches!(
            user(&named, &config()),
            Err(Error::UserName { .. })
        ));
        let empty = ImageConfig {
            entrypoint: vec![],
            cmd: vec![],
            ..image()
        };
        assert!(matches!(
            oci_spec(
                &config(),
                &empty,
                Path::new("/r"),
                "h",
                &SandboxNamespaces::default()
            ),
            Err(Error::NoCommand)
        ));
    }

    fn secured(security: Security) -> Spec {
        let mut c = config();
        c.security = security;
        oci_spec(
            &c,
            &image(),
            Path::new("/r"),
            "h",
            &SandboxNamespaces::default(),
        )
        .expect("spec")
    }

    fn names(set: Option<&oci_spec::runtime::Capabilities>) -> Vec<String> {
        let mut names: Vec<String> = set
            .into_iter()
            .flatten()
            .map(|c| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .map(|n| n.trim_start_matches("CAP_").to_string())
            .collect();
        names.sort();
        names
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v = strings(v);
        v.sort();
        v
    }

    #[test]
    fn security_table() {
        let default_caps = sorted(DEFAULT_CAPABILITIES);
        let mut with_net_admin = default_caps.clone();
        with_net_admin.push("NET_ADMIN".into());
        with_net_admin.sort();
        let without_raw: Vec<String> = default_caps
            .iter()
            .filter(|c| *c != "NET_RAW" && *c != "MKNOD")
            .cloned()
            .collect();
        // What this kernel knows: privileged containers get exactly that.
        let available = host_capabilities();
        let all_caps: Vec<String> = sorted(ALL_CAPABILITIES)
            .into_iter()
            .filter(|name| {
                let index = ALL_CAPABILITIES
                    .iter()
                    .position(|c| c == name)
                    .unwrap_or(64);
                available.is_none_or(|mask| mask & (1 << index) != 0)
            })
            .collect();
        let default_caps: Vec<String> = default_caps
            .into_iter()
            .filter(|name| all_caps.contains(name))
            .collect();
        struct Case {
            name: &'static str,
            security: Security,
            caps: Vec<String>,
            no_new_privs: Option<bool>,
            seccomp: bool,
            masked: bool,
            sys_ro: bool,
        }
        let base = || Case {
            name: "default",
            security: Security::default(),
            caps: default_caps.clone(),
            no_new_privs: None,
            seccomp: true,
            masked: true,
            sys_ro: true,
        };
        let cases = vec![
            Case {
                name: "privileged",
                security: Security {
                    privileged: true,
                    capabilities_drop: strings(&["ALL"]),
                    no_new_privileges: false,
                    ..Default::default()
                },
                caps: all_caps.clone(),
                seccomp: false,
                masked: false,
                sys_ro: false,
                ..base()
            },
            Case {
                name: "add NET_ADMIN (CAP_ prefix, lower case)",
                security: Security {
                    capabilities_add: strings(&["cap_net_admin"]),
                    ..Default::default()
                },
                caps: with_net_admin,
                ..base()
            },
            Case {
                name: "drop two",
                security: Security {
                    capabilities_drop: strings(&["NET_RAW", "CAP_MKNOD"]),
                    ..Default::default()
                },
                caps: without_raw,
                ..base()
            },
            Case {
                name: "drop ALL",
                security: Security {
                    capabilities_drop: strings(&["ALL"]),
                    ..Default::default()
                },
                caps: vec![],
                ..base()
            },
            Case {
                name: "drop ALL, add one",
                security: Security {
                    capabilities_add: strings(&["NET_BIND_SERVICE"]),
                    capabilities_drop: strings(&["ALL"]),
                    ..Default::default()
                },
                caps: strings(&["NET_BIND_SERVICE"]),
                ..base()
            },
            Case {
                name: "add ALL",
                security: Security {
                    capabilities_add: strings(&["ALL"]),
                    ..Default::default()
                },
                caps: all_caps,
                ..base()
            },
            Case {
                name: "no_new_privs",
                security: Security {
                    no_new_privileges: true,
                    ..Default::default()
                },
                no_new_privs: Some(true),
                ..base()
            },
            Case {
                name: "Unconfined",
                security: Security {
                    seccomp: SeccompProfile::Unconfined,
                    ..Default::default()
                },
                seccomp: false,
                ..base()
            },
            base(),
        ];
        for case in cases {
            let name = case.name;
            let spec = secured(case.security);
            let process = spec.process().clone().expect("process");
            let caps = process.capabilities().clone().expect("capabilities");
            assert_eq!(
                names(caps.bounding().as_ref()),
                case.caps,
                "{name}: bounding"
            );
            assert_eq!(
                names(caps.effective().as_ref()),
                case.caps,
                "{name}: effective"
            );
            assert_eq!(
                names(caps.permitted().as_ref()),
                case.caps,
                "{name}: permitted"
            );
            assert!(names(caps.inheritable().as_ref()).is_empty(), "{name}");
            assert!(names(caps.ambient().as_ref()).is_empty(), "{name}");
            assert_eq!(process.no_new_privileges(), case.no_new_privs, "{name}");
            let linux = spec.linux().clone().expect("linux");
            let seccomp = linux.seccomp().clone();
            assert_eq!(seccomp.is_some(), case.seccomp, "{name}: seccomp");
            if let Some(profile) = seccomp {
                assert_eq!(
                    profile.default_action(),
                    oci_spec::runtime::LinuxSeccompAction::ScmpActErrno,
                    "{name}"
                );
                // Capability-gated calls follow the capabilities.
                let mount_allowed = profile
                    .syscalls()
                    .iter()
                    .flatten()
                    .any(|s| s.names().iter().any(|n| n == "mount"));
                assert_eq!(
                    mount_allowed,
                    case.caps.iter().any(|c| c == "SYS_ADMIN"),
                    "{name}: mount"
                );
            }
            let masked = linux.masked_paths().clone().unwrap_or_default();
            let readonly = linux.readonly_paths().clone().unwrap_or_default();
            if case.masked {
                assert_eq!(masked, strings(MASKED_PATHS), "{name}");
                assert_eq!(readonly, strings(READONLY_PATHS), "{name}");
            } else {
                assert!(masked.is_empty() && readonly.is_empty(), "{name}");
            }
            let sys = spec
                .mounts()
                .iter()
                .flatten()
                .find(|m| m.destination() == Path::new("/sys"))
                .cloned()
                .expect("/sys mount");
            let ro = sys
                .options()
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o == "ro"));
            assert_eq!(ro, case.sys_ro, "{name}: /sys read-only");
        }
    }

    #[test]
    fn capabilities_stay_within_the_bounding_set_and_unknown_names_fail() {
        let privileged = Security {
            privileged: true,
            ..Default::default()
        };
        // A kernel that knows 38 capabilities and a bounding set without SYS_RESOURCE.
        let mask = ((1u64 << 38) - 1) & !(1 << 24);
        let known = capabilities(&privileged, Some(mask)).expect("capabilities");
        assert_eq!(known.len(), 37);
        assert!(!known.iter().any(|c| c == "PERFMON" || c == "SYS_RESOURCE"));
        let defaults = capabilities(&Security::default(), Some(mask & !1)).expect("defaults");
        assert_eq!(defaults.len(), DEFAULT_CAPABILITIES.len() - 1);
        assert!(!defaults.iter().any(|c| c == "CHOWN"));
        let unknown = Security {
            capabilities_add: strings(&["FLY"]),
            ..Default::default()
        };
        assert!(matches!(
            capabilities(&unknown, None),
            Err(Error::UnknownCapability { name }) if name == "FLY"
        ));
    }
}
