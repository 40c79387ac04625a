//! RECOMMENDATIONS_ENDPOINTSLICES: recommendations' ready endpoints, from its Service's
//! EndpointSlices watched through the Kubernetes API (the gateway's Role may list and watch
//! EndpointSlices, nothing more). Each endpoint is named after its pod, so the status and the
//! BreakerPolicy say which pod is out of rotation.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use outlier::EndpointAddress;

use crate::config::NamespacedName;

/// The label Kubernetes puts on a Service's EndpointSlices.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// Only the slices Kubernetes' own EndpointSlice controller writes for the Service are read:
/// a slice anyone else made with the Service's label would send v2's calls wherever it says.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io";

/// Each ready endpoint in one slice, on its port named `http` (else its
/// first port).
pub fn ready_endpoints(slice: &EndpointSlice) -> Vec<EndpointAddress> {
    let ports = slice.ports.iter().flatten();
    let port = ports
        .clone()
        .find(|p| p.name.as_deref() == Some("http"))
        .or_else(|| ports.clone().next())
        .and_then(|p| p.port);
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        // Ready unless it says otherwise (the API's own reading of a missing condition).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| {
            let address = e.addresses.first()?;
            let host = if address.contains(':') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            let name = e
                .target_ref
                .as_ref()
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| address.clone());
            Some(EndpointAddress::new(name, format!("http://{host}:{port}")))
        })
        .collect()
}

/// Watches the EndpointSlices of a Service for as long as the gateway runs, giving `apply`
/// the whole ready set after each change.
pub fn spawn_watch(service: NamespacedName, apply: impl Fn(Vec<EndpointAddress>) + 'static) {
    actix_web::rt::spawn(async move {
        let client = crate::sources::kube_client("recommendations' EndpointSlices", |_| {}).await;
        let api: Api<EndpointSlice> = Api::namespaced(client, &service.namespace);
        let config = watcher::Config::default()
            .labels(&format!("{SERVICE_LABEL}={},{MANAGED_BY}", service.name));
        let mut events = watcher::watcher(api, config)
            .backoff(breaker_api::RewatchBackoff::default())
            .boxed();
        let mut slices: BTreeMap<String, Vec<EndpointAddress>> = BTreeMap::new();
        let mut listing: BTreeMap<String, Vec<EndpointAddress>> = BTreeMap::new();
        let all = |slices: &BTreeMap<String, Vec<EndpointAddress>>| {
            let mut endpoints: Vec<EndpointAddress> = slices.values().flatten().cloned().collect();
            endpoints.sort();
            endpoints.dedup_by(|a, b| a.name == b.name);
            endpoints
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(slice)) => {
                    listing.insert(slice.name_any(), ready_endpoints(&slice));
                }
                Ok(Event::InitDone) => {
                    slices = std::mem::take(&mut listing);
                    apply(all(&slices));
                }
                Ok(Event::Apply(slice)) => {
                    slices.insert(slice.name_any(), ready_endpoints(&slice));
                    apply(all(&slices));
                }
                Ok(Event::Delete(slice)) => {
                    slices.remove(&slice.name_any());
                    apply(all(&slices));
                }
                Err(err) => {
                    tracing::warn!(%service, error = %err, "EndpointSlice watch failed; keeping the endpoints known, retrying");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_endpoints_are_named_after_their_pods_on_the_http_port() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "recommendations-service-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8082}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "rec-1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "rec-2"}},
                {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "rec-3"}},
                {"addresses": ["fd00::4"], "conditions": {"ready": true}}
            ]
        }))
        .unwrap();
        assert_eq!(
            ready_endpoints(&slice),
            [
                EndpointAddress::new("rec-1", "http://10.0.0.1:8082"),
                EndpointAddress::new("rec-3", "http://10.0.0.3:8082"),
                EndpointAddress::new("fd00::4", "http://[fd00::4]:8082"),
            ]
        );
    }
}
