#!/usr/bin/env bash
# End-to-end test of the chart on a real single-node Kubernetes (scripts/k8s-cluster.sh): the
# user story of issue 16, with looping client pods running throughout (scripts/k8s-e2e.py):
#   1. helm install bully charts/bully -f charts/bully/ci/local-values.yaml --wait: three
#      servers Ready, the coordinator labelled, `kubectl get bullyclusters` right, one term only,
#      no ConflictingCoordinators warning;
#   2. helm test, the chart's client Job;
#   3. kubectl delete pod <coordinator>: new coordinator, label moved, pod recreated, 3/3, a
#      client Job after it, zero failed commands;
#   4. the same with --grace-period=0 --force;
#   5. helm upgrade rolling every server: zero failed commands;
#   6. the leading controller pod and the coordinator deleted at once: the standby takes the
#      Lease and moves the label within the lease duration plus 5 s;
#   7. every acknowledged command in the store exactly once; helm uninstall leaves nothing.
# Prints the times it measured (delete -> elected / label moved / Service serving; the rolling
# upgrade's total and longest stall).
#
# Needs root and a Docker engine (the kubelet runs the pods on it). Brings the cluster up when it
# is not (the first time: a ~20 min build of Kubernetes, cached in /var/cache/bully) and takes it
# down again at the end, also on failure (then the cluster's and the pods' logs are kept in
# target/k8s-e2e-logs). A cluster that was already up is left up (BULLY_K8S_DOWN=1: down anyway).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf '[k8s-e2e] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (the kubelet, kube-proxy's iptables rules)"; exit 1; }
command -v docker >/dev/null && docker info >/dev/null 2>&1 \
    || { log "needs a Docker engine (docker info failed)"; exit 1; }

started=$SECONDS
# shellcheck source=k8s-tools.sh
source scripts/k8s-tools.sh
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
export BULLY_E2E_NAMESPACE="${BULLY_E2E_NAMESPACE:-bully-e2e}"

was_up=0
if bash scripts/k8s-cluster.sh status 2>/dev/null; then
    was_up=1
    # The images may be older than the checkout.
    [ "${BULLY_K8S_SKIP_IMAGES:-0}" = 1 ] || bash scripts/docker-images.sh
fi
eval "$(bash scripts/k8s-cluster.sh env)"

finish() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        local logs="$root/target/k8s-e2e-logs"
        rm -rf "$logs" && mkdir -p "$logs"
        log "failed: keeping logs in $logs"
        cp -r "${BULLY_K8S_STATE:-/var/lib/bully-k8s}/logs" "$logs/cluster" 2>/dev/null || true
        kubectl -n "$BULLY_E2E_NAMESPACE" get all,events -o wide >"$logs/objects.txt" 2>&1 || true
        for pod in $(kubectl -n "$BULLY_E2E_NAMESPACE" get pods -o name 2>/dev/null); do
            kubectl -n "$BULLY_E2E_NAMESPACE" logs --all-containers "$pod" >"$logs/${pod#pod/}.log" 2>&1 || true
        done
        "$HELM" -n "$BULLY_E2E_NAMESPACE" uninstall bully >/dev/null 2>&1 || true
        kubectl delete namespace "$BULLY_E2E_NAMESPACE" --wait=false >/dev/null 2>&1 || true
    fi
    if [ "$was_up" = 0 ] || [ "${BULLY_K8S_DOWN:-0}" = 1 ]; then
        bash scripts/k8s-cluster.sh down || rc=1
    fi
    log "$([ "$rc" = 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s"
    exit "$rc"
}
trap finish EXIT

if [ "$was_up" = 0 ]; then
    t0=$SECONDS
    bash scripts/k8s-cluster.sh up
    log "cluster up in $((SECONDS - t0)) s"
fi
# A namespace left by an interrupted run.
if kubectl get namespace "$BULLY_E2E_NAMESPACE" >/dev/null 2>&1; then
    "$HELM" -n "$BULLY_E2E_NAMESPACE" uninstall bully >/dev/null 2>&1 || true
    kubectl delete namespace "$BULLY_E2E_NAMESPACE" --timeout=120s
fi
python3 scripts/k8s-e2e.py --helm "$HELM" --chart charts/bully \
    --values charts/bully/ci/local-values.yaml --image "bully:$version"
