#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (SecantusDB, the
# MongoDB-compatible test server; etcd for the benchmark smoke test; promtool for the alerting
# rules and the metrics; helm and kubernetes-validate for the chart), checks format
# and lints, builds every binary, then runs every test, the container tests and the Kubernetes
# end-to-end test last (they build their images first: about 10 minutes the first time, 2 when
# they exist; the Kubernetes build about 20 minutes the first time, cached in /var/cache/bully).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-secantus.sh
# etcd (Debian's etcd-server): the benchmark report's peer baseline, which its smoke test runs.
bash scripts/install-etcd.sh || echo "WARNING: etcd not installed: the report smoke test runs without it"
# promtool (Debian's prometheus package): checks the chart's alerting rules and the /metrics of a
# real server and of the controller. Required in CI (BULLY_REQUIRE_PROMTOOL=1).
bash scripts/install-promtool.sh || echo "WARNING: promtool not installed: the rule and metrics checks are skipped"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Broken intra-doc links (a renamed module, a removed item) fail here.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "building binaries"
cargo build --workspace --bins --locked

step "Kubernetes chart and manifests"
bash scripts/k8s-validate.sh

step "tests"
# A failing test must not end the script before the summary: collect exit codes instead.
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}

step "container tests"
# A cluster of server containers from the repository's Dockerfile (images built locally, no
# registry) through docker kill/stop/pause/network disconnect and restarts. Needs a Docker
# engine; where none answers, say so loudly rather than pass silently.
if docker info >/dev/null 2>&1; then
    bash scripts/docker-test.sh 2>&1 | tee -a target/test-output.log
    docker_status=${PIPESTATUS[0]}
    if [ "$docker_status" -ne 0 ]; then status=$docker_status; fi
elif [ "${BULLY_REQUIRE_DOCKER:-0}" = 1 ]; then
    echo "error: no Docker engine answers (docker info failed) and BULLY_REQUIRE_DOCKER=1" >&2
    status=1
else
    echo "WARNING: no Docker engine answers (docker info failed): container tests NOT run" \
        | tee -a target/test-output.log
fi

step "Kubernetes end-to-end test"
# The chart on a real single-node Kubernetes 1.20.2 (scripts/k8s-cluster.sh: a kubelet running
# the pods on the same Docker engine): install, failovers by kubectl delete pod, a rolling
# upgrade, exactly-once (scripts/k8s-e2e.sh, about 3 minutes). The first run on a machine builds
# Kubernetes from Debian's source package (about 20 minutes on 2 cores), cached in
# /var/cache/bully/kubernetes-1.20.2 for every later run. Needs root and the Docker engine.
# BULLY_SKIP_K8S_E2E=1 skips it (say so in the summary: it is then NOT run).
if [ "${BULLY_SKIP_K8S_E2E:-0}" = 1 ]; then
    echo "WARNING: BULLY_SKIP_K8S_E2E=1: Kubernetes end-to-end test NOT run" | tee -a target/test-output.log
elif docker info >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    bash scripts/k8s-e2e.sh 2>&1 | tee -a target/test-output.log
    k8s_status=${PIPESTATUS[0]}
    if [ "$k8s_status" -ne 0 ]; then status=$k8s_status; fi
elif [ "${BULLY_REQUIRE_DOCKER:-0}" = 1 ]; then
    echo "error: the Kubernetes end-to-end test needs root and a Docker engine" >&2
    status=1
else
    echo "WARNING: no Docker engine answers, or not root: Kubernetes end-to-end test NOT run" \
        | tee -a target/test-output.log
fi
set -e

step "summary"
# One line per test binary from cargo, then the total.
grep -E '^test result:' target/test-output.log || true
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' \
    target/test-output.log
exit "$status"
