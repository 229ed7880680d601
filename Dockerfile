# One image with the three binaries: bully-server (the entrypoint), bully-client and
# bully-controller. The Helm chart (charts/bully) runs all of them from it.
#
#   docker build -t bully:0.1.0 .
#
# Base images. No registry is reachable on the development machines, so both FROM names are
# build arguments whose defaults are ordinary tags that a locally built image can carry:
#   rust:1-bookworm       Debian bookworm with a Rust toolchain (cargo and rustc >= 1.88 on PATH,
#                         i.e. from rustup, not Debian's rustc) and a C toolchain (gcc, libc6-dev,
#                         make: `ring` and the bundled SQLite compile C), e.g. a debootstrap'ed
#                         bookworm plus build-essential and a rustup toolchain, `docker import`ed as
#                         rust:1-bookworm;
#   debian:bookworm-slim  plain Debian bookworm (a debootstrap --variant=minbase image will do),
#                         with apt sources reaching Debian's mirror for ca-certificates.
# Other names: docker build --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=... .
# scripts/docker-images.sh makes both locally (debootstrap + `docker import`, then this host's
# rustup toolchain copied in) and builds this file with the classic builder; the build stage
# fetches crates from crates.io. scripts/docker-test.sh then runs the container tests on the
# image (docs/containers.md).
# (No `# syntax=` line on purpose: it would make BuildKit pull a frontend image.)
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_NET_RETRY=5

# 1. Dependencies only, cached until a manifest or the lockfile changes: the workspace's
#    manifests with stub sources (an empty lib and `fn main() {}` for every declared binary).
#    Every workspace member must be listed here. The stubs' artifacts are deleted afterwards:
#    the real sources copied below may carry older mtimes than the stubs' build. The test
#    crate keeps its stubs: no binary of the image depends on it, so its sources stay out
#    (editing a test does not rebuild the image).
COPY Cargo.toml Cargo.lock ./
COPY client/Cargo.toml client/Cargo.toml
COPY server/Cargo.toml server/Cargo.toml
COPY controller/Cargo.toml controller/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN set -eu; \
    for crate in client server controller tests; do \
        mkdir -p "$crate/src"; \
        touch "$crate/src/lib.rs"; \
        for bin in $(sed -n 's/^path *= *"\(.*\.rs\)"/\1/p' "$crate/Cargo.toml"); do \
            mkdir -p "$(dirname "$crate/$bin")"; \
            echo 'fn main() {}' > "$crate/$bin"; \
        done; \
    done; \
    cargo build --release --locked -p bully-server -p bully-client -p bully-controller; \
    rm -rf client/src server/src controller/src \
        target/release/.fingerprint/bully-* \
        target/release/deps/bully_* target/release/deps/libbully_* \
        target/release/bully-*

# 2. The real sources.
COPY client client
COPY server server
COPY controller controller
RUN cargo build --release --locked -p bully-server -p bully-client -p bully-controller \
    && mkdir -p /out \
    && cp target/release/bully-server target/release/bully-client target/release/bully-controller /out/

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bully" \
      org.opencontainers.image.description="Bully-elected coordinator service: bully-server, bully-client and bully-controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bully \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bully
COPY --from=build /out/ /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 7070: client API, /v1/status, /healthz, /readyz, /metrics; 7071: peer API.
EXPOSE 7070 7071
ENTRYPOINT ["bully-server"]
CMD ["serve"]
