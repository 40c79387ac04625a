#!/usr/bin/env bash
# make deploy-previous: the release before this one, installed as its users have it: chart 0.1.0
# with the image built from the same commit (scripts/previous-release.sh), loaded into the kind
# cluster $CLUSTER and installed by make deploy. For the upgrade test and the scale measurement's
# "before" column. Arguments go to helm (--set ...).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KIND:?} ${CLUSTER:?}"
release=$(scripts/previous-release.sh)
chart=$(sed -n 1p <<<"$release") image=$(sed -n 2p <<<"$release")
"$KIND" load docker-image "$image" --name "$CLUSTER"
"${MAKE:-make}" --no-print-directory deploy CHART="$chart" \
  HELM_ARGS="--set image.repository=${image%:*} --set image.tag=${image##*:} $*"
