#!/usr/bin/env bash
# Stops the dockerd that scripts/docker-up.sh started, and nothing else; removes the docker0
# bridge it made (dockerd leaves it behind). Images stay, as a cache.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.cache/docker
[ -f "$state/started-here" ] || exit 0
if [ -f "$state/dockerd.pid" ]; then
  pid=$(cat "$state/dockerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
fi
ip link delete docker0 2>/dev/null || true
rm -f "$state/started-here"
