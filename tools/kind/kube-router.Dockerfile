# kube-router for the kind cluster's NetworkPolicy (tools/kind/network-policy.yaml): it programs
# iptables and ipsets, so both tools go beside it. scripts/kind-up.sh builds it, on the local
# debootstrap base when this one cannot be pulled.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The versions are bookworm's current ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ipset conntrack \
    && rm -rf /var/lib/apt/lists/*
COPY kube-router /usr/local/bin/kube-router
ENTRYPOINT ["/usr/local/bin/kube-router"]
