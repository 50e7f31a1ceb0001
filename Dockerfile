# syntax=docker/dockerfile:1
# The chatpipe image: one binary, one subcommand per role (`chatpipe ingest | process | sink |
# serve | hbase-emulator | tables | query | dev | load`), the same image for every role.
#
# Build it from the repository root (the normal path, compiles in a Rust stage):
#
#     docker build -t chatpipe/chatpipe:0.1.0 \
#       --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse --short HEAD) .
#
# or put a binary built on the host into it (target `prebuilt`; the build context is a
# directory holding only the `chatpipe` binary, built on Debian bookworm or older glibc):
#
#     mkdir -p /tmp/ctx && cp target/release/chatpipe /tmp/ctx/
#     docker build --target prebuilt -f Dockerfile -t chatpipe/chatpipe:0.1.0 /tmp/ctx
#
# Both targets have the same runtime stage: Debian bookworm-slim with the OpenSSL 3 that
# librdkafka links against (`libssl3`) and the CA bundle, user 65532:65532 (the Helm
# chart's securityContext), nothing written outside /tmp and the volumes the chart mounts
# (read-only root filesystem friendly), `chatpipe` as the entrypoint.
# tests/tests/image.rs builds the `prebuilt` target with podman and runs the image.

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.95-bookworm

# ---- runtime: what every target ships ------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
# the repository the image was built from (org.opencontainers.image.source), e.g. its clone URL
ARG SOURCE=""
# libssl3: librdkafka's TLS (SASL_SSL, SCRAM); ca-certificates: the system CA bundle that
# `security.protocol=SSL` uses unless the chart mounts a CA (kafka.tls.caSecret).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 65532 chatpipe \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/chatpipe --no-create-home \
      --shell /usr/sbin/nologin chatpipe \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/chatpipe /var/lib/chatpipe/processor
LABEL org.opencontainers.image.title="chatpipe" \
      org.opencontainers.image.description="Streaming pipeline for chat events: HTTP ingest, Kafka, stateful processor, HBase sink" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# Logs go to stdout as JSON; the working directory is the home of the unprivileged user
# (the chart mounts the processor's state volume below it and an emptyDir on /tmp).
ENV CHATPIPE_LOG_FORMAT=json
WORKDIR /var/lib/chatpipe
USER 65532:65532
# ingest HTTP, ingest/processor/sink metrics (the chart's defaults), HBase emulator Thrift
EXPOSE 8080 9464 9465 9102 9090
ENTRYPOINT ["/usr/local/bin/chatpipe"]
CMD ["--help"]

# ---- prebuilt: the runtime with a binary from the build context ---------------------------
FROM runtime AS prebuilt
ARG CHATPIPE_BINARY=chatpipe
COPY --chmod=0755 ${CHATPIPE_BINARY} /usr/local/bin/chatpipe
RUN ["/usr/local/bin/chatpipe", "--version"]

# ---- build: compile chatpipe (normal path) -------------------------------------------------
FROM ${RUST_IMAGE} AS build
ARG REVISION=unknown
# librdkafka is compiled by rdkafka-sys (mklove: a C compiler, make, perl, python3) and
# linked against the system OpenSSL; the rust image already has gcc, make, perl.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl-dev pkg-config python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# cli/build.rs reads the revision from CHATPIPE_GIT_REVISION when there is no .git (.dockerignore drops it)
ENV CHATPIPE_GIT_REVISION=${REVISION}
RUN cargo build --release --locked -p chatpipe \
 && install -D -m 0755 target/release/chatpipe /out/chatpipe \
 && /out/chatpipe --version

# ---- default target: the runtime with the compiled binary ---------------------------------
FROM runtime AS image
COPY --from=build /out/chatpipe /usr/local/bin/chatpipe
