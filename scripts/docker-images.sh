#!/usr/bin/env bash
# Builds, without any image registry, every image the container tests run:
#
#   debian:bookworm-slim    Debian bookworm from `debootstrap --variant=minbase`, `docker import`ed
#   rust:1-bookworm         debian:bookworm-slim + gcc, libc6-dev, make + this host's Rust
#                           toolchain (rustc, cargo, the host target's std; no docs)
#   bully-secantus:VERSION  the store: SecantusDB (PyPI, a MongoDB-compatible server) in a venv
#   bully:VERSION           `docker build` of the repository's Dockerfile, FROM the two above
#
# The first two are the base images the Dockerfile's header asks for. A tag that exists but was
# not built here (no `io.bully.recipe` label, e.g. the real image from a registry) is used as it
# is; one built here by an older recipe (toolchain, CA certificates, this script) is rebuilt.
# The project image is built every time: Docker's layer cache makes that a few seconds when no
# source changed, and only the workspace's own crates are recompiled when one did.
#
# Certificates: the CAs this host adds to its trust store (/usr/local/share/ca-certificates,
# e.g. of a TLS-inspecting proxy in front of crates.io and PyPI) go into rust:1-bookworm (so
# that cargo can fetch crates in the Dockerfile's build stage) and are trusted only during the
# store image's pip install; never into the project's runtime image.
#
# Environment: BULLY_IMAGE (default bully:<workspace version>), BULLY_STORE_IMAGE,
# SECANTUS_VERSION, DEBIAN_MIRROR, BULLY_REBUILD_BASE=1 (rebuild the base images even if
# current), DOCKER_BUILDKIT (default 0: the classic builder, which needs no buildx plugin and
# never pulls). Needs root for debootstrap (installed with apt-get if missing).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
: "${BULLY_IMAGE:=bully:${version}}"
: "${SECANTUS_VERSION:=0.7.0b3}"
: "${BULLY_STORE_IMAGE:=bully-secantus:${SECANTUS_VERSION}}"
: "${DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${BULLY_REBUILD_BASE:=0}"
# The Dockerfile's build stage, tagged so that its layers (the compiled dependencies) stay.
BUILD_CACHE_IMAGE="bully-build-cache:${version}"
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"

DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1-bookworm
# Every image this script builds carries it (images built FROM them inherit it too);
# scripts/docker-clean.sh --images removes them.
OWNER_LABEL=io.bully.built-by=scripts/docker-images.sh
# The recipe an image was built by: io.bully.recipe.<image>=<hash>, one key per image because
# labels are inherited by the images built FROM it.
RECIPE_LABEL=io.bully.recipe

log() { printf '[docker-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

# One build at a time on this machine: two concurrent runs would debootstrap twice and race
# on the tags.
exec 9>"${TMPDIR:-/tmp}/bully-docker-images.lock"
flock 9

work="$(mktemp -d "${TMPDIR:-/tmp}/bully-images.XXXXXX")"
cleanup() {
    # debootstrap mounts /proc and /sys in the new root; never delete through a mount.
    for mount in proc sys dev/pts dev; do
        umount -l "$work/rootfs/$mount" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

sha() { sha256sum | cut -c1-16; }

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# Image ids replaced by this run, removed at the end (when nothing uses them any more).
replaced=()
remember() {
    local id
    id="$(image_id "$1")"
    if [ -n "$id" ]; then replaced+=("$id"); fi
}

# recipe_of TAG KIND: the image's recipe label, "-" if it has none, "" if there is no such image.
recipe_of() {
    docker image inspect -f "{{ or (index .Config.Labels \"$RECIPE_LABEL.$2\") \"-\" }}" "$1" \
        2>/dev/null || true
}

# needs_build TAG KIND RECIPE: true when TAG must be (re)built.
needs_build() {
    local have
    have="$(recipe_of "$1" "$2")"
    if [ -z "$have" ]; then
        return 0
    fi
    if [ "$have" = "-" ]; then
        log "$1: present and not built here; using it as it is"
        return 1
    fi
    if [ "$have" = "$3" ] && [ "$BULLY_REBUILD_BASE" != 1 ]; then
        log "$1: up to date (recipe $3)"
        return 1
    fi
    log "$1: rebuilding (recipe $have -> $3)"
    return 0
}

# build LOG ARGS...: docker build, its output kept in $work/LOG and shown only on failure.
build() {
    local name="$1"
    shift
    if ! docker build "$@" >"$work/$name.log" 2>&1; then
        tail -n 60 "$work/$name.log" >&2
        die "docker build failed ($name)"
    fi
}

# The host's own CA certificates (one PEM file each) into $1.
collect_certs() {
    mkdir -p "$1"
    if [ -d /usr/local/share/ca-certificates ]; then
        find /usr/local/share/ca-certificates -type f -name '*.crt' -print0 |
            while IFS= read -r -d '' cert; do
                cp "$cert" "$1/host-$(basename "$cert")"
            done
    fi
}

certs_digest() {
    local dir="$work/certs-digest"
    rm -rf "$dir"
    collect_certs "$dir"
    (cd "$dir" && find . -type f -print0 | sort -z | xargs -0r cat) | sha
}

# ---------------------------------------------------------------------------------------------
# debian:bookworm-slim

debian_recipe() {
    # The function's own text is part of the recipe: editing it rebuilds the image.
    { declare -f build_debian; echo "$DEBIAN_MIRROR"; } | sha
}

build_debian() {
    if ! command -v debootstrap >/dev/null; then
        [ "$(id -u)" = 0 ] || die "debootstrap is missing; install it (apt-get install debootstrap)"
        log "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    local rootfs="$work/rootfs"
    log "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --components=main bookworm "$rootfs" "$DEBIAN_MIRROR" \
        >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed"
    }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    # Like the official slim image: no package lists or archives, no documentation.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
    tar -C "$rootfs" --numeric-owner -c . |
        docker import \
            --change 'CMD ["bash"]' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL $OWNER_LABEL $RECIPE_LABEL.debian=$1" \
            - "$DEBIAN_IMAGE" >/dev/null
    log "$DEBIAN_IMAGE: built"
}

# ---------------------------------------------------------------------------------------------
# rust:1-bookworm

rust_dockerfile() {
    cat <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY rust/ /usr/local/rust/
# As in the official image: CARGO_HOME (the crate cache) in /usr/local/cargo.
ENV CARGO_HOME=/usr/local/cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version
EOF
}

rust_recipe() {
    {
        rust_dockerfile
        declare -f build_rust
        rustc -vV
        cargo -V
        image_id "$DEBIAN_IMAGE"
        certs_digest
    } | sha
}

build_rust() {
    local sysroot ctx="$work/rust-context"
    sysroot="$(rustc --print sysroot)"
    mkdir -p "$ctx/rust/bin"
    rust_dockerfile >"$ctx/Dockerfile"
    collect_certs "$ctx/certs"
    cp "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$ctx/rust/bin/"
    # Hard links when the temporary directory shares the toolchain's file system; the build
    # context is sent to the engine either way. lib/ holds the compiler's shared libraries and
    # lib/rustlib the standard library and the linker wrapper (rust-lld) of the host target.
    cp -al "$sysroot/lib" "$ctx/rust/" 2>/dev/null || cp -a "$sysroot/lib" "$ctx/rust/"
    if [ -d "$sysroot/libexec" ]; then
        cp -a "$sysroot/libexec" "$ctx/rust/"
    fi
    rm -rf "$ctx/rust/lib/rustlib/src" "$ctx/rust/lib/rustlib/rustc-src"
    log "building $RUST_IMAGE with $(rustc -V)"
    build rust --label "$OWNER_LABEL" --label "$RECIPE_LABEL.rust=$1" -t "$RUST_IMAGE" "$ctx"
    log "$RUST_IMAGE: built"
}

# ---------------------------------------------------------------------------------------------
# The store: SecantusDB

store_dockerfile() {
    cat <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ARG SECANTUS_VERSION
COPY certs/ /tmp/certs/
# The host's CAs are trusted for pip only, and dropped again in the same step.
RUN cp /tmp/certs/* /usr/local/share/ca-certificates/ 2>/dev/null || true; \
    update-ca-certificates >/dev/null \
    && python3 -m venv /opt/secantus \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/secantus/bin/pip install \
        --no-cache-dir --disable-pip-version-check "SecantusDB==${SECANTUS_VERSION}" \
    && rm -rf /tmp/certs /usr/local/share/ca-certificates/host-* \
    && update-ca-certificates --fresh >/dev/null \
    && groupadd --system --gid 10002 secantus \
    && useradd --system --uid 10002 --gid 10002 --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin secantus \
    && mkdir /data && chown 10002:10002 /data
# A named volume mounted on /data starts with this directory's owner, so the store can write.
USER 10002:10002
EXPOSE 27017
ENTRYPOINT ["/opt/secantus/bin/secantusd-py", "--host", "0.0.0.0", "--port", "27017", "--storage-path", "/data"]
EOF
}

store_recipe() {
    {
        store_dockerfile
        declare -f build_store
        echo "$SECANTUS_VERSION"
        image_id "$DEBIAN_IMAGE"
        certs_digest
    } | sha
}

build_store() {
    local ctx="$work/store-context"
    mkdir -p "$ctx"
    store_dockerfile >"$ctx/Dockerfile"
    collect_certs "$ctx/certs"
    log "building $BULLY_STORE_IMAGE (SecantusDB $SECANTUS_VERSION)"
    build store --build-arg "SECANTUS_VERSION=$SECANTUS_VERSION" \
        --label "$OWNER_LABEL" --label "$RECIPE_LABEL.store=$1" -t "$BULLY_STORE_IMAGE" "$ctx"
    log "$BULLY_STORE_IMAGE: built"
}

# ---------------------------------------------------------------------------------------------

started=$SECONDS
recipe="$(debian_recipe)"
if needs_build "$DEBIAN_IMAGE" debian "$recipe"; then
    remember "$DEBIAN_IMAGE"
    build_debian "$recipe"
fi
recipe="$(rust_recipe)"
if needs_build "$RUST_IMAGE" rust "$recipe"; then
    remember "$RUST_IMAGE"
    build_rust "$recipe"
fi
recipe="$(store_recipe)"
if needs_build "$BULLY_STORE_IMAGE" store "$recipe"; then
    remember "$BULLY_STORE_IMAGE"
    build_store "$recipe"
fi

log "building $BULLY_IMAGE from $root/Dockerfile"
remember "$BUILD_CACHE_IMAGE"
remember "$BULLY_IMAGE"
build project --label "$OWNER_LABEL" --build-arg "VERSION=$version" -t "$BULLY_IMAGE" \
    -f "$root/Dockerfile" "$root"
# The classic builder's layer cache lives in the images of the build stage, which end up
# untagged: tag the stage's last image (the step before the second FROM), so that the compiled
# dependencies survive the clean-up below and `docker image prune`. (BuildKit keeps its own
# cache and prints no image ids: nothing to tag then.)
stage="$(awk '/^Step [0-9]+\/[0-9]+ : FROM /{ if (++from == 2) { print last; exit } }
              /^ ---> [0-9a-f]+$/{ last = $2 }' "$work/project.log")"
if [ -n "$stage" ]; then
    docker tag "$stage" "$BUILD_CACHE_IMAGE"
fi
grep -E '^Step [0-9]+/' "$work/project.log" | tail -n 1 >&2 || true
# A rebuild leaves the previous image untagged: remove it, newest first (an image still used by
# a container or as another image's base stays).
for ((i = ${#replaced[@]} - 1; i >= 0; i--)); do
    id="${replaced[i]}"
    for tag in "$DEBIAN_IMAGE" "$RUST_IMAGE" "$BULLY_STORE_IMAGE" "$BUILD_CACHE_IMAGE" "$BULLY_IMAGE"; do
        if [ "$(image_id "$tag")" = "$id" ]; then continue 2; fi
    done
    docker rmi "$id" >/dev/null 2>&1 || true
done
log "done in $((SECONDS - started)) s: $BULLY_IMAGE, $BULLY_STORE_IMAGE"
