//! The scheduler's configuration file: a subset of Kubernetes'
//! `KubeSchedulerConfiguration` (profiles with enabled/disabled plugins and weights,
//! `percentageOfNodesToScore`, backoff, leader election), with Kubernetes' defaults.
//!
//! ```yaml
//! apiVersion: kubescheduler.config.k8s.io/v1
//! kind: KubeSchedulerConfiguration
//! percentageOfNodesToScore: 0          # 0: adaptive
//! podInitialBackoffSeconds: 1
//! podMaxBackoffSeconds: 10
//! leaderElection: {leaderElect: true, resourceName: rkube-scheduler}
//! profiles:
//! - schedulerName: default-scheduler
//!   plugins:
//!     multiPoint:
//!       enabled: [{name: NodeAffinity, weight: 5}]   # changes a weight (or adds)
//!       disabled: [{name: PodTopologySpread}]        # `*` disables all defaults
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::plugins;

/// What went wrong reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse the scheduler configuration")]
    Parse(#[source] serde_yaml::Error),
    #[error("percentageOfNodesToScore must be between 0 and 100, got {0}")]
    Percentage(u32),
    #[error("profile {0:?} appears twice")]
    DuplicateProfile(String),
    #[error("no profile is configured")]
    NoProfiles,
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A plugin switched on, with its score weight.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginRef {
    pub name: String,
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PluginSet {
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plugins {
    #[serde(default)]
    pub multi_point: PluginSet,
}

/// One scheduling profile: the pods with this `schedulerName` and the plugins that
/// place them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub scheduler_name: String,
    #[serde(default)]
    pub plugins: Plugins,
}

/// A plugin the profile runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnabledPlugin {
    pub name: String,
    pub weight: i64,
}

impl Profile {
    /// The default plugins for `scheduler_name`.
    pub fn new(scheduler_name: &str) -> Profile {
        Profile {
            scheduler_name: scheduler_name.to_string(),
            plugins: Plugins::default(),
        }
    }

    /// The defaults minus `disabled` (`*` = all), then `enabled` (a weight change for a
    /// default plugin, or an addition at the end).
    pub fn enabled_plugins(&self) -> Vec<EnabledPlugin> {
        let set = &self.plugins.multi_point;
        let all_disabled = set.disabled.iter().any(|p| p.name == "*");
        let mut out: Vec<EnabledPlugin> = plugins::default_plugins()
            .into_iter()
            .filter(|(name, _)| !all_disabled && !set.disabled.iter().any(|d| d.name == *name))
            .map(|(name, weight)| EnabledPlugin {
                name: name.to_string(),
                weight,
            })
            .collect();
        for e in &set.enabled {
            match out.iter_mut().find(|p| p.name == e.name) {
                Some(p) => p.weight = e.weight.unwrap_or(p.weight),
                None => out.push(EnabledPlugin {
                    name: e.name.clone(),
                    weight: e.weight.unwrap_or(1),
                }),
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderElection {
    #[serde(default = "yes")]
    pub leader_elect: bool,
    #[serde(default = "default_lease_name")]
    pub resource_name: String,
    #[serde(default = "default_lease_namespace")]
    pub resource_namespace: String,
    /// Seconds a lease is valid without renewal.
    #[serde(default = "default_lease_duration")]
    pub lease_duration_seconds: u64,
    /// Seconds between renewals.
    #[serde(default = "default_retry_period")]
    pub retry_period_seconds: u64,
}

fn yes() -> bool {
    true
}
fn default_lease_name() -> String {
    "rkube-scheduler".to_string()
}
fn default_lease_namespace() -> String {
    "kube-system".to_string()
}
fn default_lease_duration() -> u64 {
    15
}
fn default_retry_period() -> u64 {
    2
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            leader_elect: true,
            resource_name: default_lease_name(),
            resource_namespace: default_lease_namespace(),
            lease_duration_seconds: default_lease_duration(),
            retry_period_seconds: default_retry_period(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// 0: Kubernetes' adaptive percentage.
    #[serde(default)]
    pub percentage_of_nodes_to_score: u32,
    #[serde(default = "default_initial_backoff")]
    pub pod_initial_backoff_seconds: u64,
    #[serde(default = "default_max_backoff")]
    pub pod_max_backoff_seconds: u64,
    #[serde(default = "default_profiles")]
    pub profiles: Vec<Profile>,
    #[serde(default)]
    pub leader_election: LeaderElection,
}

fn default_initial_backoff() -> u64 {
    1
}
fn default_max_backoff() -> u64 {
    10
}
fn default_profiles() -> Vec<Profile> {
    vec![Profile::new(DEFAULT_SCHEDULER_NAME)]
}

/// The scheduler name of pods that do not choose one.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            percentage_of_nodes_to_score: 0,
            pod_initial_backoff_seconds: default_initial_backoff(),
            pod_max_backoff_seconds: default_max_backoff(),
            profiles: default_profiles(),
            leader_election: LeaderElection::default(),
        }
    }
}

impl SchedulerConfig {
    /// Parses and checks a YAML configuration.
    ///
    /// # Errors
    /// Invalid YAML, a percentage above 100, duplicate or no profiles.
    pub fn from_yaml(yaml: &str) -> Result<Self> {
        let config: SchedulerConfig = serde_yaml::from_str(yaml).map_err(Error::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads [`from_yaml`](Self::from_yaml) from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Checks ranges and profile names.
    pub fn validate(&self) -> Result<()> {
        if self.percentage_of_nodes_to_score > 100 {
            return Err(Error::Percentage(self.percentage_of_nodes_to_score));
        }
        if self.profiles.is_empty() {
            return Err(Error::NoProfiles);
        }
        for (i, p) in self.profiles.iter().enumerate() {
            if self.profiles[..i]
                .iter()
                .any(|q| q.scheduler_name == p.scheduler_name)
            {
                return Err(Error::DuplicateProfile(p.scheduler_name.clone()));
            }
        }
        Ok(())
    }

    pub fn initial_backoff(&self) -> Duration {
        Duration::from_secs(self.pod_initial_backoff_seconds)
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs(
            self.pod_max_backoff_seconds
                .max(self.pod_initial_backoff_seconds),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = SchedulerConfig::from_yaml("{}").expect("empty config");
        assert_eq!(c, SchedulerConfig::default());
        let names: Vec<_> = c.profiles[0]
            .enabled_plugins()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names.len(), plugins::default_plugins().len());

        let c = SchedulerConfig::from_yaml(
            "percentageOfNodesToScore: 30\nprofiles:\n- schedulerName: a\n  plugins:\n    multiPoint:\n      enabled: [{name: NodeAffinity, weight: 7}]\n      disabled: [{name: PodTopologySpread}]\n- schedulerName: b\n  plugins: {multiPoint: {disabled: [{name: '*'}], enabled: [{name: NodeName}]}}\n",
        )
        .expect("config");
        assert_eq!(c.percentage_of_nodes_to_score, 30);
        let a = c.profiles[0].enabled_plugins();
        assert!(a.iter().any(|p| p.name == "NodeAffinity" && p.weight == 7));
        assert!(!a.iter().any(|p| p.name == "PodTopologySpread"));
        assert_eq!(
            c.profiles[1].enabled_plugins(),
            vec![EnabledPlugin {
                name: "NodeName".into(),
                weight: 1
            }]
        );
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(matches!(
            SchedulerConfig::from_yaml("percentageOfNodesToScore: 101"),
            Err(Error::Percentage(101))
        ));
        assert!(matches!(
            SchedulerConfig::from_yaml("profiles: [{schedulerName: a}, {schedulerName: a}]"),
            Err(Error::DuplicateProfile(_))
        ));
        assert!(matches!(
            SchedulerConfig::from_yaml("profiles: []"),
            Err(Error::NoProfiles)
        ));
        assert!(matches!(
            SchedulerConfig::from_yaml("profiles: 3"),
            Err(Error::Parse(_))
        ));
    }
}
