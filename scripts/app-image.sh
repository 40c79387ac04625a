#!/usr/bin/env bash
# make images: the one image with all five binaries, from the project's Dockerfile.
# With a registry, the Dockerfile's default target compiles in a Rust image; without one
# (see scripts/offline.sh), the host's release binaries go in (--target prebuilt) on the local
# debootstrap base.
#   scripts/app-image.sh IMAGE VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
image=$1 version=$2
# shellcheck source=scripts/offline.sh
. scripts/offline.sh
scripts/docker-up.sh
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
# The binaries the Dockerfile's build stage names (ARG BINS), so both targets hold the same five.
read -r -a bins <<<"$(sed -n 's/^ARG BINS="\(.*\)"$/\1/p' Dockerfile)"
[ "${#bins[@]}" -gt 0 ] || { echo "app-image: no ARG BINS in the Dockerfile" >&2; exit 1; }
runtime_base=$(sed -n 's/^ARG RUNTIME_BASE=//p' Dockerfile)
if offline "$runtime_base"; then
  base=circuit-breaker-demo/debian:bookworm
  scripts/base-image.sh "$base"
  cargo build --release --locked "${bins[@]/#/--bin=}"
  rm -rf dist && mkdir dist
  for bin in "${bins[@]}"; do
    strip -o "dist/$bin" "target/release/$bin"   # the symbols stay in target/ for profiling
  done
  docker build -t "$image" --target prebuilt --build-arg RUNTIME_BASE="$base" \
    --build-arg VERSION="$version" .
else
  # The legacy builder builds the prebuilt stage on the way to the default target, so its
  # COPY dist/ needs the folder, empty or not.
  mkdir -p dist
  docker build -t "$image" --build-arg VERSION="$version" .
fi
# The image this tag named before is left untagged by each build, and so are the default
# target's build stages (gigabytes each time): remove those, not others.
docker image prune -f --filter "label=org.opencontainers.image.title=circuit-breaker-demo" >/dev/null
docker image prune -f --filter "label=dev.circuit-breaker-demo.stage=build" >/dev/null
