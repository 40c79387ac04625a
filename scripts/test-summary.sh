#!/usr/bin/env bash
# Prints what a `make test` log measured (lines starting "figure: ", from the Rust tests and
# the cluster suite) and one totals line. cargo prints one "test result:" line per test
# target; pytest one summary line ("== 1 failed, 9 passed in 40.2s ==").
set -euo pipefail
log=${1:?usage: test-summary.sh LOG}
echo
echo "---- figures measured by the tests ----"
grep -E '^figure: ' "$log" | sed 's/^figure: /  /' || echo "  (none)"
echo "---- time by tier ----"
grep -E '^tier: ' "$log" | sed 's/^tier: /  /' || echo "  (none)"
awk '
  /^test result:/ { p += $4; f += $6; s += $8 }
  /^=+ .* in [0-9.]+s/ {
    for (i = 2; i <= NF; i++) {
      if ($i ~ /^passed,?$/) p += $(i - 1)
      if ($i ~ /^(failed|errors?),?$/) f += $(i - 1)
      if ($i ~ /^skipped,?$/) s += $(i - 1)
    }
  }
  END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
