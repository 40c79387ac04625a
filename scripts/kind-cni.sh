#!/usr/bin/env bash
# Pod networking for a kind cluster made with disableDefaultCNI: on every node a ptp +
# host-local CNI config for the node's pod range, and a route to each other node's range via
# that node. (The plugins ship in both kind's node image and ours.) NetworkPolicy is accepted
# but not enforced by this network.
#   scripts/kind-cni.sh CLUSTER        uses $KIND (default kind) and the current kubeconfig
set -euo pipefail
cluster=$1
kind=${KIND:-kind}
kubectl=${KUBECTL:-kubectl}

declare -A cidr ip
nodes=$("$kind" get nodes --name "$cluster")
for node in $nodes; do
  for _ in $(seq 1 60); do
    cidr[$node]=$("$kubectl" get node "$node" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
    [ -n "${cidr[$node]}" ] && break
    sleep 1
  done
  [ -n "${cidr[$node]}" ] || { echo "kind-cni: node $node has no pod CIDR" >&2; exit 1; }
  ip[$node]=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$node")
done

for node in $nodes; do
  docker exec -i "$node" sh -c 'mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-ptp.conflist' <<JSON
{
  "cniVersion": "0.4.0",
  "name": "kind-ptp",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "routes": [{"dst": "0.0.0.0/0"}],
        "ranges": [[{"subnet": "${cidr[$node]}"}]]
      },
      "mtu": 1500
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  for peer in $nodes; do
    [ "$peer" = "$node" ] || docker exec "$node" ip route replace "${cidr[$peer]}" via "${ip[$peer]}"
  done
  echo "kind-cni: $node pods ${cidr[$node]}" >&2
done
