# syntax=docker/dockerfile:1
# daytona-authz image: the ext_authz service (entrypoint) plus the Daytona test double
# (`daytona-double`, used only by docker-compose's `local` profile).
#   docker build -t daytona-authz .
FROM rust:1-bookworm AS build
WORKDIR /src
# protoc comes vendored (protoc-bin-vendored): no system packages needed to build.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
# The Daytona API client trusts the Mozilla roots compiled in (webpki-roots); ca-certificates
# is here for operators who mount extra tooling.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/daytona-authz /src/target/release/daytona-double /usr/local/bin/
# The embedded revocation store lives here (mount a volume to keep it across containers).
RUN mkdir -p /var/lib/daytona-authz && chown 65532:65532 /var/lib/daytona-authz
WORKDIR /var/lib/daytona-authz
ENV DAYTONA_AUTHZ_REVOCATION_DB=/var/lib/daytona-authz/revocations.redb
# Non-root (the distroless "nonroot" id); only the revocation store is written.
USER 65532:65532
# ext_authz gRPC + grpc.health.v1 (9191) and /healthz /readyz /metrics (9192). Both bind
# 127.0.0.1 by default: run beside Envoy in one pod / network namespace.
EXPOSE 9191 9192
# Ready = keys loaded and the Daytona API answered (or --ready-grace passed), not draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["daytona-authz", "healthcheck"]
ENTRYPOINT ["daytona-authz"]
CMD ["serve"]
