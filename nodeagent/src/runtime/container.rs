//! A container's OCI runtime spec, built from the pod's container spec and the image
//! config: Kubernetes' command/args over Entrypoint/Cmd, env over the image's Env,
//! workingDir, user, read-only root, cgroup limits, the sandbox's namespaces and the
//! volumes as bind mounts.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, MountBuilder, RootBuilder, Spec,
};

use super::image::ImageConfig;
use super::{ContainerConfig, Resources};

/// CFS period in µs that [`Resources::cpu_quota`] is relative to.
pub const CPU_PERIOD: u64 = 100_000;

/// What building a spec can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container has no command: neither the pod nor the image names one")]
    NoCommand,
    #[error("image user {user:?} is not numeric; user names are not resolved yet")]
    UserName { user: String },
    #[error("invalid OCI spec")]
    Spec(#[from] oci_spec::OciSpecError),
}

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
    Ok(spec)
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
}
