#!/usr/bin/env bash
# make deploy-previous: the release before this one, installed as its users have it: chart 0.1.0
# with the image built from the same commit (scripts/previous-release.sh), its CRD applied as
# its make deploy applied it, into $NAMESPACE of the kind cluster $CLUSTER. For the upgrade test
# and the scale measurement's "before" column. Arguments go to helm (--set ...).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KIND:?} ${CLUSTER:?} ${KUBECTL:?} ${NAMESPACE:?}"
helm=${HELM:-.cache/tools/bin/helm}
release=$(scripts/previous-release.sh)
chart=$(sed -n 1p <<<"$release") image=$(sed -n 2p <<<"$release")
"$KIND" load docker-image "$image" --name "$CLUSTER"
"$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f -
"$KUBECTL" label --overwrite namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted
"$KUBECTL" apply --server-side --force-conflicts -f "$chart/crds/"
"$helm" upgrade --install circuit-breaker-demo "$chart" --namespace "$NAMESPACE" --wait --timeout 5m \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" "$@"
