#!/usr/bin/env bash
# The kind node image built here (scripts/kind-node-image.sh, from binaries built from their Go
# modules), made when missing; prints its tag, which names what it is made of so that a change
# to any of it builds a new one.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KUBE_VERSION:?} ${KIND_VERSION:?} ${KUBE_BIN:?}"
recipe=$(cat tools/kind/node.Dockerfile tools/kind/kube-proxy.Dockerfile tools/kind/pause.c \
  scripts/kind-node-image.sh scripts/base-image.sh | sha256sum | cut -c1-12)
tag=circuit-breaker-demo/kind-node:$KUBE_VERSION-kind-$KIND_VERSION-$recipe
"${MAKE:-make}" --no-print-directory kind-node-bins >&2
scripts/kind-node-image.sh "$tag" "$KUBE_VERSION" "$KUBE_BIN" "$KIND_VERSION" >&2
echo "$tag"
