#!/usr/bin/env bash
# Renders the Helm chart (charts/bully) into plain manifests: k8s/bully.yaml, or the file given
# as the first argument (k8s-validate.sh renders into a temporary file and diffs).
#
# Default values, release "bully", namespace "default", CRDs included, `helm test` hooks left out
# (k8s-validate.sh validates those separately), and one exception to the defaults: the
# bearer-token Secret is left out (auth.existingSecret=bully-token, the same name the chart would
# generate). A rendered file cannot keep a generated token secret and stable at once, so
# whoever applies k8s/bully.yaml creates the Secret first (see the file's header).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/k8s/bully.yaml}"
# shellcheck source=k8s-tools.sh
source "$root/scripts/k8s-tools.sh"

mkdir -p "$(dirname "$out")"
{
    cat <<'HEADER'
# Rendered from charts/bully by scripts/k8s-render.sh; do not edit (k8s-validate.sh fails
# when this file is stale). Release "bully" in namespace "default", default values.
#
# Before applying, create the bearer token the servers, the controller and clients share:
#   kubectl create secret generic bully-token --from-literal=token="$(head -c 32 /dev/urandom | base64)"
# Then apply twice, or the CRD first (a BullyCluster needs its CRD established):
#   kubectl apply -f k8s/bully.yaml
HEADER
    "$HELM" template bully "$root/charts/bully" \
        --namespace default \
        --include-crds \
        --skip-tests \
        --set auth.existingSecret=bully-token
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "k8s-render: wrote ${out#"$root"/}"
