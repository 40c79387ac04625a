# A stand-in for the Dockerfile's builder image (lukemathwalker/cargo-chef:<chef>-rust-<rust>-bookworm)
# where no registry answers: the local debootstrap base, the host's rustup toolchain of exactly the
# pinned version, and cargo-chef compiled from crates.io with it. scripts/stand-ins.sh builds it
# and tags it with the upstream name, so the default target builds as it would with a registry.
ARG BASE_IMAGE=circuit-breaker-demo/debian:bookworm
FROM ${BASE_IMAGE}
ARG CHEF_VERSION
# What rust:<version>-bookworm brings for this workspace: a C compiler and linker (ring, the
# final link) and CA certificates (cargo fetches crates over HTTPS).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The host's trust, so that cargo reaches crates.io as the host does (through a proxy that
# inspects TLS, where there is one).
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN cargo install --locked --version "${CHEF_VERSION}" cargo-chef \
    && rm -rf /usr/local/cargo/registry
