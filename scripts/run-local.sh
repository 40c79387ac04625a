#!/usr/bin/env bash
# Starts the four services on 127.0.0.1 with a hanging recommendations-service (the seed's
# SIMULATE_FAILURE=true). Ctrl-C stops all of them. Logs go to .run/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
FAILURE_HANG=${FAILURE_HANG:-30s}
ADMIN_TOKEN=${ADMIN_TOKEN:-demo-admin-token}
BREAKER_CONFIG=${BREAKER_CONFIG:-config/breaker.yaml}
LOGS=.run/logs
mkdir -p "$LOGS"

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8080 8081 8082 8090; do
  if port_taken "$port"; then
    echo "port $port is already in use: stop whatever listens there (ss -ltnp 'sport = :$port')." >&2
    exit 1
  fi
done
for bin in product-service recommendations-service api-gateway-v1 api-gateway-v2; do
  [ -x "$BIN/$bin" ] || { echo "$BIN/$bin is missing: run 'make build' first." >&2; exit 1; }
done

pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] && return
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo; echo "stopping the services"; exit 0' INT TERM

start() { # name, then env assignments
  local name=$1; shift
  # A short shutdown timeout: hanging requests must not hold up Ctrl-C.
  env BIND_ADDR=127.0.0.1 SHUTDOWN_TIMEOUT=2s "$@" "$BIN/$name" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
}
start product-service PORT=8081
start recommendations-service PORT=8082 SIMULATE_FAILURE=true FAILURE_HANG="$FAILURE_HANG" ADMIN_TOKEN="$ADMIN_TOKEN"
start api-gateway-v1 PORT=8080
if [ -n "${BREAKER_CONFIGMAP:-}" ]; then
  # settings from a ConfigMap through the Kubernetes API (KUBECONFIG) instead of the file
  start api-gateway-v2 PORT=8090 BREAKER_CONFIGMAP="$BREAKER_CONFIGMAP"
else
  start api-gateway-v2 PORT=8090 BREAKER_CONFIG="$BREAKER_CONFIG"
fi

for port in 8081 8082 8080 8090; do
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && continue 2
    sleep 0.1
  done
  echo "the service on port $port did not become ready; see $LOGS/" >&2
  exit 1
done

if [ -n "${BREAKER_CONFIGMAP:-}" ]; then
  settings_hint="ConfigMap $BREAKER_CONFIGMAP (a BreakerPolicy writes it)"
else
  settings_hint="edit $BREAKER_CONFIG (hot-reloaded)"
fi
cat <<MSG
All four services are up; recommendations-service hangs for $FAILURE_HANG per request.
  v1 (no breaker):  time curl -s http://127.0.0.1:8080/product-details/1
  v2 (breaker):     curl -s http://127.0.0.1:8090/product-details/1
  breaker state:    curl -s http://127.0.0.1:8090/circuit-status
  heal:             curl -s -X PUT -H 'Authorization: Bearer $ADMIN_TOKEN' \\
                      -H 'Content-Type: application/json' -d '{"mode":"none"}' \\
                      http://127.0.0.1:8082/admin/fault
  breaker settings: $settings_hint
Logs: $LOGS/. Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a service exited; see $LOGS/" >&2
exit 1
