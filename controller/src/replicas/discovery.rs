//! Which pods are v2 replicas, which policy group each belongs to, and where to ask it.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// On a v2 pod: the name of the ConfigMap it watches (BREAKER_CONFIGMAP's name).
pub const CONFIGMAP_LABEL: &str = "resilience.demo.dev/breaker-configmap";

/// The replicas in one namespace watching one ConfigMap: what one policy's status lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaGroup {
    pub namespace: String,
    pub config_map: String,
}

/// A pod by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The container port a v2 replica is asked on: its status port, or, on a v2 from before there
/// was one (chart 0.1.0, during an upgrade), its only port.
const ASKED_PORTS: [&str; 2] = ["status", "http"];

/// A labelled pod: who it is, its group, and `ip:port` once it runs with an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPod {
    pub key: PodKey,
    pub group: ReplicaGroup,
    pub address: Option<String>,
}

impl ReplicaPod {
    /// `None` for a pod without the label, a namespace, or a port named `status` or `http`.
    pub fn of(pod: &Pod) -> Option<Self> {
        let namespace = pod.namespace()?;
        let config_map = pod.labels().get(CONFIGMAP_LABEL)?.clone();
        let ports: Vec<_> = pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .collect();
        let port = ASKED_PORTS.iter().find_map(|name| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
        })?;
        let address = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|_| is_running(pod))
            .map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                }
            });
        Some(Self {
            key: PodKey {
                namespace: namespace.clone(),
                name: pod.name_any(),
            },
            group: ReplicaGroup {
                namespace,
                config_map,
            },
            address,
        })
    }
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(label: Option<&str>, phase: &str, ip: &str) -> Pod {
        with_ports(
            label,
            phase,
            ip,
            serde_json::json!([
                {"name": "http", "containerPort": 8090},
                {"name": "status", "containerPort": 8091},
                {"name": "metrics", "containerPort": 9000}
            ]),
        )
    }

    fn with_ports(label: Option<&str>, phase: &str, ip: &str, ports: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "v2-0", "namespace": "demo",
                "labels": label.map(|cm| serde_json::json!({CONFIGMAP_LABEL: cm})),
            },
            "spec": {"containers": [{"name": "gw", "ports": ports}]},
            "status": {"phase": phase, "podIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn a_labelled_pod_is_a_replica_of_its_configmaps_group_asked_on_its_status_port() {
        let replica = ReplicaPod::of(&pod(Some("gw-breaker"), "Running", "10.0.0.7")).unwrap();
        assert_eq!(replica.key.to_string(), "demo/v2-0");
        assert_eq!(
            replica.group,
            ReplicaGroup {
                namespace: "demo".into(),
                config_map: "gw-breaker".into()
            }
        );
        assert_eq!(replica.address.as_deref(), Some("10.0.0.7:8091"));
        let v6 = ReplicaPod::of(&pod(Some("gw-breaker"), "Running", "fd00::7")).unwrap();
        assert_eq!(v6.address.as_deref(), Some("[fd00::7]:8091"));
    }

    #[test]
    fn an_older_v2_without_a_status_port_is_asked_on_its_http_port_and_one_with_neither_is_no_replica(
    ) {
        let http_only = serde_json::json!([{"name": "http", "containerPort": 8090}]);
        let older = ReplicaPod::of(&with_ports(Some("gw"), "Running", "10.0.0.7", http_only));
        assert_eq!(older.unwrap().address.as_deref(), Some("10.0.0.7:8090"));
        let unnamed = serde_json::json!([{"containerPort": 8090}]);
        assert_eq!(
            ReplicaPod::of(&with_ports(Some("gw"), "Running", "10.0.0.7", unnamed)),
            None
        );
    }

    #[test]
    fn a_pod_not_running_has_no_address_and_an_unlabelled_one_is_no_replica() {
        let pending = ReplicaPod::of(&pod(Some("gw-breaker"), "Pending", "10.0.0.7")).unwrap();
        assert_eq!(pending.address, None);
        assert_eq!(ReplicaPod::of(&pod(None, "Running", "10.0.0.7")), None);
    }
}
