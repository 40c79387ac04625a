#!/usr/bin/env bash
# make port-forward: kubectl port-forward for each SERVICE:PORT[:LOCAL_PORT] given, on 127.0.0.1, to
# release $RELEASE (default circuit-breaker-demo) in namespace $NAMESPACE (default demo). A forward is bound to one pod and ends when that pod goes
# (a rollout, a deleted pod); each one here starts again within a second. Ctrl-C stops them all.
#   scripts/port-forward.sh api-gateway-v1:8080 api-gateway-v2:8090
set -uo pipefail
namespace=${NAMESPACE:-demo}
release=${RELEASE:-circuit-breaker-demo}
# The chart's rule (cbd.objectName): a release named like the chart keeps the component names,
# any other prefixes them with its own.
prefix=
[ "$release" = circuit-breaker-demo ] || prefix="$release-"
kubectl=${KUBECTL:-kubectl}

forward() { # service port local-port
  while true; do
    "$kubectl" port-forward --namespace "$namespace" --address 127.0.0.1 "svc/$1" "$3:$2" 2>&1 |
      sed -u "s/^/[$1] /"
    echo "[$1] forward ended; starting it again" >&2
    sleep 1
  done
}

# Stops its own processes only (the forwards' loops, kubectl, sed): `kill 0` would also stop
# a script that started this in the background in its own process group.
descendants() { # pid: its children's descendants, then its children
  local child
  for child in $(pgrep -P "$1"); do
    descendants "$child"
    echo "$child"
  done
}
trap 'trap - INT TERM EXIT; kill $(descendants $$) 2>/dev/null' INT TERM EXIT
for target in "$@"; do
  IFS=: read -r service port local <<<"$target"
  forward "$prefix$service" "$port" "${local:-$port}" &
done
wait
