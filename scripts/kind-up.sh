#!/usr/bin/env bash
# make kind-up: Docker (started if need be), the kind cluster $CLUSTER from $KIND_CONFIG
# (default kind-config.yaml; kind-config-3-workers.yaml for the scale measurement)
# with pod networking, and the app image loaded into it. The node image is kind's
# ($KIND_NODE_IMAGE) where it can be pulled, else built here (scripts/kind-node-image.sh).
# Writes the cluster's kubeconfig where KUBECONFIG points (kind's rule: default ~/.kube/config).
# An existing cluster of that name is kept, or made anew with KIND_RECREATE=1 (the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KIND:?} ${CLUSTER:?} ${IMAGE:?} ${KUBE_VERSION:?} ${KIND_VERSION:?} ${KIND_NODE_IMAGE:?} ${KUBE_BIN:?}"
# shellcheck source=scripts/offline.sh
. scripts/offline.sh
scripts/docker-up.sh

node_image=$KIND_NODE_IMAGE
if offline "$node_image"; then
  node_image=$(scripts/local-node-image.sh)
fi
"${MAKE:-make}" --no-print-directory images

if [ "${KIND_RECREATE:-0}" = 1 ] && "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  "$KIND" delete cluster --name "$CLUSTER"
fi
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind cluster $CLUSTER exists: kept as it is (its nodes are not made again from" \
    "${KIND_CONFIG:-kind-config.yaml}; KIND_RECREATE=1 deletes and makes it anew)" >&2
else
  "$KIND" create cluster --name "$CLUSTER" --config "${KIND_CONFIG:-kind-config.yaml}" --image "$node_image"
fi
KIND="$KIND" scripts/kind-cni.sh "$CLUSTER"

# NetworkPolicy enforcement: kube-router as a firewall (tools/kind/network-policy.yaml).
"${MAKE:-make}" --no-print-directory "$KUBE_BIN/kube-router"
context=$(mktemp -d "${TMPDIR:-/tmp}/kube-router.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$KUBE_BIN/kube-router" "$context/"
router_base=$(sed -n 's/^ARG BASE_IMAGE=//p' tools/kind/kube-router.Dockerfile)
if offline "$router_base"; then
  router_base=circuit-breaker-demo/debian:bookworm
  scripts/base-image.sh "$router_base"
fi
DOCKER_BUILDKIT=0 docker build -q -t circuit-breaker-demo/kube-router:local --build-arg BASE_IMAGE="$router_base" \
  -f tools/kind/kube-router.Dockerfile "$context" >/dev/null
"$KIND" load docker-image circuit-breaker-demo/kube-router:local --name "$CLUSTER"
"$KIND" load docker-image "$IMAGE" --name "$CLUSTER"
kubectl=${KUBECTL:-kubectl}
"$kubectl" wait --for=condition=Ready nodes --all --timeout=180s
# Ready nodes are not yet a working cluster: Services need kube-proxy on every node, names need
# CoreDNS.
"$kubectl" --namespace kube-system rollout status daemonset/kube-proxy --timeout=180s
"$kubectl" --namespace kube-system rollout status deployment/coredns --timeout=180s
"$kubectl" apply -f tools/kind/network-policy.yaml
"$kubectl" --namespace kube-system rollout status daemonset/kube-router --timeout=180s
