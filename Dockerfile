# syntax=docker/dockerfile:1
# One image with all five binaries (product-service, recommendations-service, api-gateway-v1,
# api-gateway-v2, breaker-controller); each Deployment picks its command. `make images` builds it.
#
# Two ways to fill it, one runtime stage:
#   default target  compiles in a Rust image (cargo-chef dependency layer), distroless runtime
#   --target prebuilt  copies release binaries built on the host from dist/ (make images does this
#                   when no registry answers, with RUNTIME_BASE set to a local debootstrap image)
# The stages are ordered so that the legacy builder, which builds every stage before its target,
# needs no registry for --target prebuilt.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG RUST_VERSION=1.89.0

# glibc and libgcc, nothing else; runs as uid 65532 (nonroot).
FROM ${RUNTIME_BASE} AS runtime
ARG VERSION=0.2.0
LABEL org.opencontainers.image.title="circuit-breaker-demo" \
      org.opencontainers.image.description="Cascading failure and circuit breaker demo: services, gateways and breaker-controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/circuit-breaker-demo/circuit-breaker-demo"
USER 65532:65532
ENV BIND_ADDR=0.0.0.0 LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/api-gateway-v2"]

FROM runtime AS prebuilt
COPY dist/ /usr/local/bin/

# Dependencies are compiled in their own layer (cargo-chef), rebuilt only when a manifest or
# Cargo.lock changes.
FROM lukemathwalker/cargo-chef:0.1.73-rust-${RUST_VERSION}-bookworm AS chef
# Marks the build stages, which scripts/app-image.sh removes after a build: the legacy builder
# leaves each as an untagged image of gigabytes (BuildKit keeps a cache of its own instead).
LABEL dev.circuit-breaker-demo.stage=build
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# Stripped, as the prebuilt target's are (scripts/app-image.sh): the line tables would more than
# double the image.
ARG BINS="product-service recommendations-service api-gateway-v1 api-gateway-v2 breaker-controller"
RUN for bin in $BINS; do set -- "$@" --bin "$bin"; done \
    && cargo build --release --locked "$@" \
    && mkdir /dist \
    && for bin in $BINS; do strip -o "/dist/$bin" "target/release/$bin"; done

FROM runtime
COPY --from=build /dist/ /usr/local/bin/
