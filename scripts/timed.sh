#!/usr/bin/env bash
# Runs a command and then prints "tier: NAME N s", failed or not: where a run of the suite spends
# its time (scripts/test-summary.sh lists these lines at the end).
#   scripts/timed.sh NAME COMMAND...
set -uo pipefail
name=$1
shift
started=$(date +%s)
"$@"
status=$?
echo "tier: $name $(($(date +%s) - started)) s"
exit "$status"
