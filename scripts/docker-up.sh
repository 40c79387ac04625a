#!/usr/bin/env bash
# Makes sure a Docker engine answers. Uses the one that is running; otherwise (as root) installs
# Debian's docker.io when missing and starts dockerd in the background, logging to
# .cache/docker/dockerd.log. scripts/docker-down.sh stops only a dockerd this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.cache/docker
mkdir -p "$state"

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "docker-up: no Docker engine answers; start Docker (or run as root to let this script do it)." >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker-up: installing docker.io with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

args=(--pidfile "$PWD/$state/dockerd.pid")
# Bit 24 of the bounding set is CAP_SYS_RESOURCE. Without it, privileged containers (kind's
# nodes) fail to start under Docker 20.10; the wrapper drops that one capability from them.
bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
if (( (16#$bounding >> 24 & 1) == 0 )); then
  echo "docker-up: this host withholds CAP_SYS_RESOURCE; containers run without it" >&2
  args+=(--add-runtime "runc-without-sys-resource=$PWD/tools/docker/runc-without-sys-resource"
         --default-runtime runc-without-sys-resource)
fi
echo "docker-up: starting dockerd (log: $state/dockerd.log)" >&2
setsid dockerd "${args[@]}" >"$state/dockerd.log" 2>&1 </dev/null &
touch "$state/started-here"
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "docker-up: dockerd did not answer within 60 s; see $state/dockerd.log" >&2
tail -n 20 "$state/dockerd.log" >&2
exit 1
