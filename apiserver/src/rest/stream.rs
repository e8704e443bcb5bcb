//! What `pods/log` and `pods/exec` share: choosing the container, checking the pod is
//! on a node, and a client of that node's agent.

use serde_json::Value;
use tonic::transport::Channel;

use rkube_api::{resource, status::Status};
use rkube_proto::node::v1::node_agent_client::NodeAgentClient;
use rkube_proto::node::v1::ContainerRef;

use super::ApiState;

/// A pod's container on a node, and a client of that node's agent.
pub(super) struct PodContainer {
    pub container: ContainerRef,
    pub node: String,
    pub client: NodeAgentClient<Channel>,
}

/// Reads the pod, picks its container, reads its node and connects to its agent.
///
/// # Errors
/// 404 for a missing pod or node; 400 for a bad container or an unscheduled pod; 503
/// when the apiserver has no client certificate for the agents.
pub(super) async fn locate(
    state: &ApiState,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<PodContainer, Box<Status>> {
    let pods = resource::find("", "v1", "pods").expect("pods are in the resource table");
    let nodes = resource::find("", "v1", "nodes").expect("nodes are in the resource table");
    let pod = state.registry.get(pods, Some(namespace), name).await?;
    let container = select_container(&pod, container)?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(Box::new(Status::bad_request(format!(
            "pod {name} does not have a host assigned"
        ))));
    }
    let node_obj = state.registry.get(nodes, None, node).await?;
    let client = state.node_proxy.client(&node_obj)?;
    Ok(PodContainer {
        container: ContainerRef {
            namespace: namespace.to_string(),
            pod: name.to_string(),
            pod_uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            container,
        },
        node: node.to_string(),
        client,
    })
}

/// The container a request means, as Kubernetes picks it: the one named (an app, init
/// or ephemeral container), else the pod's only app container.
///
/// # Errors
/// 400 when the name is not one of the pod's containers, or when none is named and the
/// pod has several.
pub(super) fn select_container(
    pod: &Value,
    requested: Option<&str>,
) -> Result<String, Box<Status>> {
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let containers = names("containers");
    match requested.filter(|c| !c.is_empty()) {
        Some(c) => {
            let known = containers.iter().any(|n| n == c)
                || names("initContainers").iter().any(|n| n == c)
                || names("ephemeralContainers").iter().any(|n| n == c);
            if known {
                Ok(c.to_string())
            } else {
                Err(Box::new(Status::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                ))))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            let init = names("initContainers");
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(Box::new(Status::bad_request(message)))
        }
    }
}

/// A boolean query parameter as Kubernetes parses it (Go's `strconv.ParseBool`);
/// absent is false.
///
/// # Errors
/// 400 naming the parameter for anything else.
pub(super) fn bool_param(value: Option<&str>, name: &str) -> Result<bool, Box<Status>> {
    match value {
        None => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(Box::new(Status::bad_request(format!(
            "{name}: Invalid value: {other:?}: must be a boolean"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_chosen_as_kubernetes_does() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main"}]}});
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "a"}, {"name": "b"}],
        }});
        type Case<'a> = (
            &'a str,
            &'a Value,
            Option<&'a str>,
            Result<&'a str, &'a str>,
        );
        let cases: [Case; 7] = [
            ("only container", &one, None, Ok("main")),
            ("empty name means none", &one, Some(""), Ok("main")),
            ("named", &two, Some("b"), Ok("b")),
            ("init container", &two, Some("setup"), Ok("setup")),
            (
                "several",
                &two,
                None,
                Err("a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [setup]"),
            ),
            (
                "unknown",
                &one,
                Some("x"),
                Err("container x is not valid for pod p"),
            ),
            (
                "unknown in several",
                &two,
                Some("c"),
                Err("container c is not valid for pod p"),
            ),
        ];
        for (name, pod, requested, want) in cases {
            let got = select_container(pod, requested);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(status), Err(want)) => {
                    assert_eq!(
                        (status.code, status.message.as_str()),
                        (400, want),
                        "{name}"
                    )
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let none = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let status = select_container(&none, None).expect_err("two containers");
        assert_eq!(
            status.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
    }

    #[test]
    fn booleans_parse_like_go() {
        for (value, want) in [
            (None, false),
            (Some("true"), true),
            (Some("1"), true),
            (Some("False"), false),
        ] {
            assert_eq!(
                bool_param(value, "follow").expect("valid"),
                want,
                "{value:?}"
            );
        }
        let status = bool_param(Some("yes"), "follow").expect_err("invalid");
        assert_eq!(status.code, 400);
        assert!(status.message.starts_with("follow: "), "{}", status.message);
    }
}
