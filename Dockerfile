# syntax=docker/dockerfile:1
#
# The switchyard image: the `switchyard` binary with the example manifests,
# event schemas and handler components, running as a non-root user.
#
#   docker build -t switchyard .
#   docker run --rm switchyard check manifests/shop.toml
#
# docker-compose.yml builds this image and runs it next to RabbitMQ and Kafka.

# Builder and runtime share one Debian release, so the binary finds the same
# glibc it was linked against.
FROM rust:1.95-trixie AS builder
WORKDIR /src

# The whole workspace is copied because cargo reads every member's manifest,
# and the runtime crate compiles the handler world from handlers/wit.
COPY Cargo.toml Cargo.lock ./
COPY runtime runtime
COPY tests tests
COPY handlers/wit handlers/wit

# The cache mounts keep the crate downloads and the build between image
# builds. The binary is copied out of the cached target folder in the same
# step, because the mount is gone after it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package switchyard --bin switchyard \
    && install -D target/release/switchyard /out/switchyard

FROM debian:trixie-slim

# curl runs the /readyz healthcheck of docker-compose.yml; ca-certificates lets the broker clients
# verify TLS servers (amqps:// URLs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric id, so orchestrators can check that the user is not root.
# Its home holds the compiled-component cache (~/.cache/switchyard).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/switchyard \
    --shell /usr/sbin/nologin switchyard

COPY --from=builder /out/switchyard /usr/local/bin/switchyard

# Manifests find schemas and handlers in ../schemas and ../handlers, so the
# three folders keep their repository layout under /app.
WORKDIR /app
COPY manifests manifests
COPY schemas schemas
COPY handlers/*.wasm handlers/

USER 10001:10001

# The manifests default to 127.0.0.1:3000, which is unreachable from outside
# a container.
ENV SWITCHYARD_LISTEN=0.0.0.0:3000
EXPOSE 3000

ENTRYPOINT ["switchyard"]
CMD ["up", "manifests/shop.toml", "manifests/streaming.toml"]
