# syntax=docker/dockerfile:1.7
# One image with all five binaries (product-service, recommendations-service, api-gateway-v1,
# api-gateway-v2, breaker-controller); each Deployment picks its command. `make images`.
ARG RUST_VERSION=1.89.0

# Dependencies are compiled in their own layer (cargo-chef), rebuilt only when a manifest or
# Cargo.lock changes.
FROM lukemathwalker/cargo-chef:0.1.73-rust-${RUST_VERSION}-bookworm AS chef
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
      --bin product-service --bin recommendations-service \
      --bin api-gateway-v1 --bin api-gateway-v2 --bin breaker-controller

# glibc and libgcc, nothing else; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="circuit-breaker-demo" \
      org.opencontainers.image.description="Cascading failure and circuit breaker demo: services, gateways and breaker-controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/circuit-breaker-demo/circuit-breaker-demo"
COPY --from=build \
     /src/target/release/product-service \
     /src/target/release/recommendations-service \
     /src/target/release/api-gateway-v1 \
     /src/target/release/api-gateway-v2 \
     /src/target/release/breaker-controller \
     /usr/local/bin/
USER 65532:65532
ENV BIND_ADDR=0.0.0.0 LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/api-gateway-v2"]
