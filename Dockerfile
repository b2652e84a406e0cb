# syntax=docker/dockerfile:1
# The daytona-authz image (the default, last stage): the ext_authz service only.
#   docker build -t daytona-authz .
# The Daytona test double, for docker-compose's `local` profile only, is a stage of its own
# (never in the product image):
#   docker build --target daytona-double -t daytona-double .
FROM rust:1-bookworm AS sources
WORKDIR /src
# protoc comes vendored (protoc-bin-vendored): no system packages needed to build.
# benches/ because Cargo.toml declares `[[bench]] check_path`, daytona-double/, load-tools/ and
# test-support/ because the workspace names them: cargo refuses a manifest whose files are
# missing, even for `-p` builds (scripts/check-deploy loads the manifest from exactly what these
# COPY lines copy).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY benches benches
COPY src src
COPY daytona-double daytona-double
COPY load-tools load-tools
COPY test-support test-support
# The crate registry and target/ are build caches (BuildKit or buildah/podman; the legacy builder
# cannot build this file): a rebuild recompiles only our crates, never the dependencies. They are
# in no layer, so binaries are copied out. The cache outlives checkouts and cargo decides
# freshness by file times, which COPY keeps: touching the sources makes cargo rebuild from exactly
# what was copied.

# The product: only the daytona-authz package is compiled.
FROM sources AS build
RUN --mount=type=cache,id=daytona-authz-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=daytona-authz-target,target=/src/target \
    find build.rs proto benches src -type f -exec touch {} + \
 && cargo build --release --locked -p daytona-authz --bin daytona-authz \
 && mkdir -p /out \
 && cp target/release/daytona-authz /out/

# The test double, built only for its own target.
FROM sources AS build-double
RUN --mount=type=cache,id=daytona-authz-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=daytona-authz-target,target=/src/target \
    find daytona-double -type f -exec touch {} + \
 && cargo build --release --locked -p daytona-double \
 && mkdir -p /out \
 && cp target/release/daytona-double /out/

# Shared runtime base: non-root (the distroless "nonroot" id), nothing but the C runtime and CAs.
FROM debian:bookworm-slim AS runtime
# The Daytona API client trusts the Mozilla roots compiled in (webpki-roots); ca-certificates
# is here for operators who mount extra tooling.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The test double (API on 127.0.0.1:3000, preview proxy on 127.0.0.1:4000 in compose).
FROM runtime AS daytona-double
COPY --from=build-double /out/daytona-double /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["daytona-double"]

# The product image: the last stage, so a plain `docker build .` builds it.
FROM runtime AS daytona-authz
COPY --from=build /out/daytona-authz /usr/local/bin/
# The embedded revocation store lives here (mount a volume to keep it across containers).
RUN mkdir -p /var/lib/daytona-authz && chown 65532:65532 /var/lib/daytona-authz
WORKDIR /var/lib/daytona-authz
ENV DAYTONA_AUTHZ_REVOCATION_DB=/var/lib/daytona-authz/revocations.redb
# Only the revocation store is written.
USER 65532:65532
# ext_authz gRPC + grpc.health.v1 (9191), /healthz /readyz /metrics (9192) and the admin gRPC API
# (9193, only with an admin token). All bind 127.0.0.1 by default: run beside Envoy in one pod /
# network namespace.
EXPOSE 9191 9192
# Ready = keys loaded and the Daytona API answered (or --ready-grace passed), not draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["daytona-authz", "healthcheck"]
ENTRYPOINT ["daytona-authz"]
CMD ["serve"]
