#!/usr/bin/env bash
# Builds the local Debian base image (debootstrap --variant=minbase bookworm, then docker import)
# that the offline image builds start FROM: no registry needed. Skips when the image exists.
#   scripts/base-image.sh [TAG]     default circuit-breaker-demo/debian:bookworm
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-circuit-breaker-demo/debian:bookworm}
if docker image inspect "$tag" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "base-image: installing debootstrap with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=$PWD/.cache/debootstrap
root=$(mktemp -d "${TMPDIR:-/tmp}/base-image.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$cache"
echo "base-image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --cache-dir="$cache" bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
  { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
# No package lists or caches in the image; apt-get update brings them back when a build needs them.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "base-image: built $tag" >&2
