# syntax=docker/dockerfile:1
# The one catalog-stream binary; the Helm chart runs it as
# `catalog-stream <subcommand> --config /etc/catalog-stream/config.yaml`.
# Not built here: the development machines have no Docker engine. Kept minimal on purpose.

FROM rust:1.95-slim-bookworm AS build
# librdkafka is vendored and built by rdkafka-sys: it needs cmake and a C toolchain.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev libssl-dev libsasl2-dev libzstd-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin catalog-stream \
 && install -D target/release/catalog-stream /out/catalog-stream

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 libzstd1 libcurl4 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 catalog \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin catalog \
 && install -d -o 10001 -g 10001 /var/lib/catalog-stream
COPY --from=build /out/catalog-stream /usr/local/bin/catalog-stream
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["catalog-stream"]
