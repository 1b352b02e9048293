# Palisade's binaries (control plane, sidecar, CLI, shop demo) in one small runtime image.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin palisade \
 && mkdir -p /data /tokens /identity \
 && chown palisade /data /tokens /identity
COPY --from=build /src/target/release/palisade-control-plane /src/target/release/palisade-proxy \
     /src/target/release/palisade /src/target/release/palisade-shop /usr/local/bin/
USER palisade
