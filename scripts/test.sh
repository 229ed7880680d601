#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (SecantusDB, the
# MongoDB-compatible test server; helm and kubernetes-validate for the chart), checks format
# and lints, builds every binary, then runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-secantus.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building binaries"
cargo build --workspace --bins --locked

step "Kubernetes chart and manifests"
bash scripts/k8s-validate.sh

step "tests"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}

step "summary"
# One line per test binary from cargo, then the total.
grep -E '^test result:' target/test-output.log || true
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' \
    target/test-output.log
exit "$status"
