#!/usr/bin/env bash
# The load image of the chapters' cluster runs (tools/loadtest/locust.Dockerfile), built and
# loaded into the kind cluster $CLUSTER. Locust's wheels are downloaded once per requirements
# file into .cache/locust-wheels/ (for the image's Python, bookworm's 3.11); Docker's layer cache
# keeps the Python layers, so a change of the locustfiles rebuilds only the last one.
#   scripts/load-image.sh IMAGE
set -euo pipefail
cd "$(dirname "$0")/.."
image=$1
: "${KIND:?} ${CLUSTER:?} ${KUBECTL:?}"
# shellcheck source=scripts/offline.sh
. scripts/offline.sh
scripts/docker-up.sh
base=$(sed -n 's/^ARG BASE_IMAGE=//p' tools/loadtest/locust.Dockerfile)
if offline "$base"; then
  base=circuit-breaker-demo/debian:bookworm
  scripts/base-image.sh "$base"
fi
requirements=loadtest/requirements.txt
wheels=.cache/locust-wheels/$(sha256sum "$requirements" | cut -c1-16)
if [ ! -f "$wheels/.complete" ]; then
  rm -rf "$wheels" && mkdir -p "$wheels"
  arch=$(uname -m)
  python3 -m pip download -q --disable-pip-version-check -d "$wheels" -r "$requirements" \
    --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch"
  touch "$wheels/.complete"
fi
kubectl=$(command -v "$KUBECTL")
context=$(mktemp -d "${TMPDIR:-/tmp}/load-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/wheels" "$context/app/loadtest" "$context/app/config"
cp "$requirements" "$context/"
cp "$wheels"/*.whl "$context/wheels/"
cp "$kubectl" "$context/kubectl"
cp loadtest/*.py "$context/app/loadtest/"
cp config/*.yaml "$context/app/config/"
DOCKER_BUILDKIT=0 docker build -q -t "$image" --build-arg BASE_IMAGE="$base" \
  -f tools/loadtest/locust.Dockerfile "$context" >/dev/null
# kind skips the nodes that already hold this image.
"$KIND" load docker-image "$image" --name "$CLUSTER" >/dev/null
