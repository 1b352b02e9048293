# Palisade's binaries (control plane, sidecar, CLI, pod init step, shop demo) in one small
# runtime image; iptables is for palisade-init.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin palisade \
 && mkdir -p /data /tokens /identity \
 && chown palisade /data /tokens /identity
COPY --from=build /src/target/release/palisade-control-plane /src/target/release/palisade-proxy \
     /src/target/release/palisade /src/target/release/palisade-shop \
     /src/target/release/palisade-init /usr/local/bin/
USER palisade
