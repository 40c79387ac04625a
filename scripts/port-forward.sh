#!/usr/bin/env bash
# make port-forward: kubectl port-forward for each SERVICE:PORT[:LOCAL_PORT] given, on 127.0.0.1, in
# namespace $NAMESPACE (default demo). A forward is bound to one pod and ends when that pod goes
# (a rollout, a deleted pod); each one here starts again within a second. Ctrl-C stops them all.
#   scripts/port-forward.sh api-gateway-v1:8080 api-gateway-v2:8090
set -uo pipefail
namespace=${NAMESPACE:-demo}
kubectl=${KUBECTL:-kubectl}

forward() { # service port local-port
  while true; do
    "$kubectl" port-forward --namespace "$namespace" --address 127.0.0.1 "svc/$1" "$3:$2" 2>&1 |
      sed -u "s/^/[$1] /"
    echo "[$1] forward ended; starting it again" >&2
    sleep 1
  done
}

trap 'trap - INT TERM EXIT; kill 0' INT TERM EXIT
for target in "$@"; do
  IFS=: read -r service port local <<<"$target"
  forward "$service" "$port" "${local:-$port}" &
done
wait
