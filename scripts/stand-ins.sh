#!/usr/bin/env bash
# Local images under the upstream names that the online path (OFFLINE=0) pulls, so that CI runs
# that path where no registry answers: only the pulls themselves stay unexercised.
#   scripts/stand-ins.sh          build what is missing and tag it with the upstream names
#   scripts/stand-ins.sh remove   take the upstream names off again (the images keep their own)
#
#   Dockerfile's RUNTIME_BASE (distroless cc)   <- the local debootstrap base
#   Dockerfile's builder (cargo-chef + Rust)    <- tools/stand-ins/cargo-chef.Dockerfile: that
#                                                  base, the host's rustup toolchain of exactly
#                                                  the pinned version, cargo-chef from crates.io
#   kube-router's BASE_IMAGE (debian slim)      <- the local debootstrap base
#   KIND_NODE_IMAGE (kindest/node)              <- the node image built here
set -euo pipefail
cd "$(dirname "$0")/.."
node=${KIND_NODE_IMAGE:-$(sed -n 's/^KIND_NODE_IMAGE ?= //p' Makefile)}
base=circuit-breaker-demo/debian:bookworm
runtime=$(sed -n 's/^ARG RUNTIME_BASE=//p' Dockerfile)
rust=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
builder=$(sed -n 's/^FROM \(\S*cargo-chef:\S*\) AS chef$/\1/p' Dockerfile)
builder=${builder//'${RUST_VERSION}'/$rust}
chef=$(sed -n 's/.*cargo-chef:\([0-9.]*\)-rust-.*/\1/p' <<<"$builder")
router_base=$(sed -n 's/^ARG BASE_IMAGE=//p' tools/kind/kube-router.Dockerfile)
[ -n "$runtime" ] && [ -n "$rust" ] && [ -n "$chef" ] && [ -n "$router_base" ] && [ -n "$node" ] ||
  { echo "stand-ins: the Dockerfiles no longer name their bases as this script reads them" >&2; exit 1; }
names=("$runtime" "$builder" "$router_base" "$node")

if [ "${1:-}" = remove ]; then
  for name in "${names[@]}"; do
    docker image rm "$name" >/dev/null 2>&1 || true
  done
  exit 0
fi

scripts/docker-up.sh
scripts/base-image.sh "$base"
export DOCKER_BUILDKIT=0
# Kept under a name of its own, so that removing the upstream name keeps it (and the build
# cache of the layers built on it).
local_builder=circuit-breaker-demo/stand-in-cargo-chef:$chef-rust-$rust
if ! docker image inspect "$local_builder" >/dev/null 2>&1; then
  rustup toolchain install "$rust" --profile minimal --no-self-update >&2
  context=$(mktemp -d "${TMPDIR:-/tmp}/stand-in-builder.XXXXXX")
  trap 'rm -rf "$context"' EXIT
  sysroot=$(rustc "+$rust" --print sysroot)
  cp -al "$sysroot" "$context/toolchain" 2>/dev/null || cp -a "$sysroot" "$context/toolchain"
  cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$context/ca-certificates.crt"
  echo "stand-ins: $builder (Rust $rust from rustup, cargo-chef $chef from crates.io)" >&2
  docker build -q -t "$local_builder" --build-arg BASE_IMAGE="$base" --build-arg CHEF_VERSION="$chef" \
    -f tools/stand-ins/cargo-chef.Dockerfile "$context" >/dev/null
fi
docker tag "$local_builder" "$builder"
docker tag "$base" "$runtime"
docker tag "$base" "$router_base"
docker tag "$(scripts/local-node-image.sh)" "$node"
echo "stand-ins: ${names[*]}" >&2
