# kube-proxy for the offline kind node image: it programs iptables and conntrack, so it needs
# both binaries beside it (scripts/kind-node-image.sh builds it).
ARG BASE_IMAGE=circuit-breaker-demo/debian:bookworm
FROM ${BASE_IMAGE}
# The versions are bookworm's current ones, as in the base debootstrapped with them.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables conntrack \
    && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
