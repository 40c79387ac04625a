# kube-router for the kind cluster's NetworkPolicy (tools/kind/network-policy.yaml): it programs
# iptables and ipsets, so both tools go beside it. scripts/kind-up.sh builds it.
ARG BASE_IMAGE=circuit-breaker-demo/debian:bookworm
FROM ${BASE_IMAGE}
# The versions are bookworm's current ones, as in the base debootstrapped with them.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ipset conntrack \
    && rm -rf /var/lib/apt/lists/*
COPY kube-router /usr/local/bin/kube-router
ENTRYPOINT ["/usr/local/bin/kube-router"]
