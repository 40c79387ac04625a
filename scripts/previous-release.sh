#!/usr/bin/env bash
# The release before this one, as its users have it installed: chart 0.1.0 and the image built
# from the same commit (PREVIOUS_RELEASE), for the upgrade test. The image is built once, with
# that commit's own offline image script, and kept in Docker; its build tree is then removed.
#   scripts/previous-release.sh    prints the chart's directory and the image, one a line
set -euo pipefail
cd "$(dirname "$0")/.."
# Chart 0.1.0 as it stood when its last change landed (before the operator's-life work).
commit=${PREVIOUS_RELEASE:-8ba5cfcb9978d8111cc4f842622271e73deffb01}
dir=$PWD/.cache/previous/${commit:0:12}
image=circuit-breaker-demo/previous:0.1.0-${commit:0:12}
if [ ! -f "$dir/src/Cargo.toml" ]; then
  rm -rf "$dir/src" && mkdir -p "$dir/src"
  git archive "$commit" | tar -x -C "$dir/src"
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "previous-release: building $image from $commit (once)" >&2
  (cd "$dir/src" && OFFLINE=1 scripts/app-image.sh "$image" 0.1.0) >&2
  rm -rf "$dir/src/target" "$dir/src/dist"   # gigabytes, needed only to make the image
fi
echo "$dir/src/helm/circuit-breaker-demo"
echo "$image"
