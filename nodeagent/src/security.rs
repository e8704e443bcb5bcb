//! A container's privileges from its pod's and its own `securityContext`, as the
//! runtime's [`Security`]: `privileged`, `capabilities.add`/`drop`,
//! `allowPrivilegeEscalation` and `seccompProfile` (the container's, else the pod's).
//!
//! Kubernetes' rules: `no_new_privs` is set only when `allowPrivilegeEscalation` is
//! `false` and the container is not privileged; a privileged container runs without
//! seccomp. Where neither the container nor the pod names a seccomp profile the
//! runtime's default applies (as a kubelet started with `--seccomp-default` does).
//! `Localhost` profiles are refused: this node has no profile directory to load them
//! from.

use k8s_openapi::api::core::v1::{
    PodSecurityContext, SeccompProfile as KubeSeccomp, SecurityContext,
};

use crate::runtime::{SeccompProfile, Security};

/// A securityContext this node cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("seccomp profile Localhost/{profile:?} cannot be loaded: this node has no local seccomp profiles")]
    LocalhostProfile { profile: String },
    #[error("unknown seccomp profile type {kind:?} (RuntimeDefault, Unconfined or Localhost)")]
    UnknownProfileType { kind: String },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The privileges of a container whose pod has `pod` and which has `container` as
/// `securityContext`.
///
/// # Errors
/// A `Localhost` or unknown seccomp profile type.
pub fn of(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
) -> Result<Security> {
    let privileged = container.and_then(|c| c.privileged).unwrap_or(false);
    let capabilities = container.and_then(|c| c.capabilities.as_ref());
    let profile = container
        .and_then(|c| c.seccomp_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.seccomp_profile.as_ref()));
    let seccomp = match profile {
        // Checked even for privileged containers: a pod that cannot run anywhere
        // should say so.
        Some(profile) => seccomp(profile)?,
        None => SeccompProfile::RuntimeDefault,
    };
    Ok(Security {
        privileged,
        capabilities_add: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: capabilities
            .and_then(|c| c.drop.clone())
            .unwrap_or_default(),
        no_new_privileges: !privileged
            && container.and_then(|c| c.allow_privilege_escalation) == Some(false),
        seccomp: if privileged {
            SeccompProfile::Unconfined
        } else {
            seccomp
        },
    })
}

fn seccomp(profile: &KubeSeccomp) -> Result<SeccompProfile> {
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
        "Unconfined" => Ok(SeccompProfile::Unconfined),
        "Localhost" => Err(Error::LocalhostProfile {
            profile: profile.localhost_profile.clone().unwrap_or_default(),
        }),
        other => Err(Error::UnknownProfileType {
            kind: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Capabilities;

    use super::*;

    fn profile(kind: &str) -> Option<KubeSeccomp> {
        Some(KubeSeccomp {
            type_: kind.into(),
            localhost_profile: (kind == "Localhost").then(|| "profiles/audit.json".into()),
        })
    }

    fn pod(kind: &str) -> PodSecurityContext {
        PodSecurityContext {
            seccomp_profile: profile(kind),
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_set_means_runtime_defaults() {
        let security = of(None, None).expect("security");
        assert_eq!(security, Security::default());
        assert_eq!(security.seccomp, SeccompProfile::RuntimeDefault);
        assert!(!security.no_new_privileges);
    }

    #[test]
    fn container_overrides_the_pods_profile() {
        let cases = [
            (
                "pod only",
                Some(pod("Unconfined")),
                None,
                SeccompProfile::Unconfined,
            ),
            (
                "container wins",
                Some(pod("Unconfined")),
                profile("RuntimeDefault"),
                SeccompProfile::RuntimeDefault,
            ),
            (
                "container only",
                None,
                profile("Unconfined"),
                SeccompProfile::Unconfined,
            ),
            (
                "container wins over Localhost",
                Some(pod("Localhost")),
                profile("Unconfined"),
                SeccompProfile::Unconfined,
            ),
        ];
        for (name, pod, container, want) in cases {
            let container = SecurityContext {
                seccomp_profile: container,
                ..Default::default()
            };
            let security = of(pod.as_ref(), Some(&container)).expect(name);
            assert_eq!(security.seccomp, want, "{name}");
        }
    }

    #[test]
    fn localhost_and_unknown_profiles_are_refused() {
        assert_eq!(
            of(Some(&pod("Localhost")), None),
            Err(Error::LocalhostProfile {
                profile: "profiles/audit.json".into()
            })
        );
        let container = SecurityContext {
            seccomp_profile: profile("Strict"),
            ..Default::default()
        };
        assert_eq!(
            of(None, Some(&container)),
            Err(Error::UnknownProfileType {
                kind: "Strict".into()
            })
        );
    }

    #[test]
    fn privileges_capabilities_and_escalation() {
        let container = SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(strings(&["NET_ADMIN"])),
                drop: Some(strings(&["ALL"])),
            }),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        };
        let security = of(Some(&pod("RuntimeDefault")), Some(&container)).expect("security");
        assert_eq!(security.capabilities_add, strings(&["NET_ADMIN"]));
        assert_eq!(security.capabilities_drop, strings(&["ALL"]));
        assert!(security.no_new_privileges);
        assert!(!security.privileged);

        let escalate = SecurityContext {
            allow_privilege_escalation: Some(true),
            ..Default::default()
        };
        assert!(
            !of(None, Some(&escalate))
                .expect("security")
                .no_new_privileges
        );

        let privileged = SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            seccomp_profile: profile("RuntimeDefault"),
            ..Default::default()
        };
        let security = of(None, Some(&privileged)).expect("security");
        assert!(security.privileged);
        assert!(!security.no_new_privileges);
        assert_eq!(security.seccomp, SeccompProfile::Unconfined);
    }
}
