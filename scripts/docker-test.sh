#!/usr/bin/env bash
# The container tests in one command: builds the images without a registry
# (scripts/docker-images.sh: Debian and Rust base images, the SecantusDB store image, and the
# project image from the repository's Dockerfile), then runs tests/tests/containers.rs against
# them, one test at a time. Whatever the tests create is removed, also on failure or Ctrl-C.
#
#   scripts/docker-test.sh            every scenario
#   scripts/docker-test.sh partition  the scenarios whose name contains "partition"
#
# Needs the Docker engine, a Rust toolchain and root (for debootstrap, on the first run).
set -euo pipefail
cd "$(dirname "$0")/.."

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
export BULLY_IMAGE="${BULLY_IMAGE:-bully:${version}}"
export SECANTUS_VERSION="${SECANTUS_VERSION:-0.7.0b3}"
export BULLY_STORE_IMAGE="${BULLY_STORE_IMAGE:-bully-secantus:${SECANTUS_VERSION}}"
# Labels everything this run's tests create, so the cleanup below removes exactly that.
export BULLY_TEST_SESSION="${BULLY_TEST_SESSION:-$(date +%s)-$$}"

step() { printf '\n==> %s\n' "$*"; }

started=$SECONDS
step "images"
bash scripts/docker-images.sh
images=$((SECONDS - started))

trap 'bash scripts/docker-clean.sh --session "$BULLY_TEST_SESSION"' EXIT
step "container tests ($BULLY_IMAGE, $BULLY_STORE_IMAGE)"
# The test binary builds on the host (a debug build shared with the other tests).
cargo test -p bully-tests --locked --test containers -- --test-threads=1 "$@"
echo "images ${images} s, total $((SECONDS - started)) s"
