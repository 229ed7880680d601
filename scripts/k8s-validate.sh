#!/usr/bin/env bash
# Checks the Helm chart and the rendered manifests, offline:
#   1. helm lint of every supported shape of values (charts/bully/ci/*-values.yaml);
#   2. helm template of each shape, every document validated by
#      `kubernetes-validate --strict -k 1.32.0` (unknown fields and wrong types fail);
#      kubernetes-validate has no schema for the BullyCluster custom resource, so that document is
#      validated against the openAPIV3Schema of the chart's own CRD instead (unknown fields fail);
#   3. the CRD in the chart is the one `bully-controller crdgen` generates (when cargo is there;
#      `cargo test -p bully-controller` checks it too);
#   4. charts/bully/README.md (the values table) is what scripts/chart-readme.py generates;
#   5. k8s/bully.yaml is not stale: a fresh render must be identical;
#   6. monitoring: in every shape, the PrometheusRule passes `promtool check rules` and the
#      dashboard ConfigMap holds valid JSON; the default rules pass the alert unit tests
#      (`promtool test rules tests/monitoring/alerts-test.yaml`). kubernetes-validate has no
#      schema for the Prometheus operator's kinds, so PodMonitors are only rendered and linted.
#      (The metric names the rules and the dashboard use are checked against real /metrics
#      scrapes by `cargo test -p bully-tests --test monitoring`.)
# Installs helm and kubernetes-validate into .tools/ on first use (scripts/k8s-tools.sh), and
# promtool from apt (scripts/install-promtool.sh); without promtool the rule checks are skipped
# with a warning, unless BULLY_REQUIRE_PROMTOOL=1 (CI), where that fails.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
chart="$root/charts/bully"
kube_version="1.32.0"
# shellcheck source=k8s-tools.sh
source "$root/scripts/k8s-tools.sh"
python="$root/.tools/venv/bin/python"

promtool="$(bash "$root/scripts/install-promtool.sh" 2>/dev/null || true)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() {
    echo "k8s-validate: FAIL: $*" >&2
    failed=1
}

warned_promtool=0
# A monitoring.coreos.com/v1 document: a PrometheusRule's groups go through promtool.
check_monitoring() {
    local doc="$1" name="$2"
    grep -q '^kind: PrometheusRule$' "$doc" || return 0
    if [ -z "$promtool" ]; then
        if [ "${BULLY_REQUIRE_PROMTOOL:-0}" = 1 ]; then
            fail "promtool is missing (scripts/install-promtool.sh) and BULLY_REQUIRE_PROMTOOL=1"
        elif [ "$warned_promtool" = 0 ]; then
            echo "k8s-validate: WARNING: promtool is missing (scripts/install-promtool.sh): alerting rules NOT checked" >&2
            warned_promtool=1
        fi
        return 0
    fi
    "$python" -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"))' \
        "$doc" "$tmp/rules-$name.yaml"
    "$promtool" check rules "$tmp/rules-$name.yaml" >"$tmp/promtool.log" 2>&1 \
        || { cat "$tmp/promtool.log" >&2; fail "promtool check rules $(basename "$doc") ($name)"; }
}

# Each value shape in charts/bully/ci/NAME-values.yaml must lint, render and validate. A first
# line `# helm-args: ...` adds helm arguments (e.g. --kube-version; --api-versions goes to helm
# template only).
shapes=("$chart"/ci/*-values.yaml)
[ -e "${shapes[0]}" ] || { echo "k8s-validate: FAIL: no value shapes in $chart/ci" >&2; exit 1; }
for values in "${shapes[@]}"; do
    name="$(basename "$values" -values.yaml)"
    args=(-f "$values")
    lint_args=(-f "$values")
    if read -r first <"$values" && [[ "$first" == "# helm-args: "* ]]; then
        read -r -a extra <<<"${first#"# helm-args: "}"
        args+=("${extra[@]}")
        # helm lint has no --api-versions (the capabilities it lints against are fixed).
        for ((i = 0; i < ${#extra[@]}; i++)); do
            if [ "${extra[i]}" = --api-versions ]; then
                i=$((i + 1))
            else
                lint_args+=("${extra[i]}")
            fi
        done
    fi
    if ! "$HELM" lint --quiet --strict "$chart" "${lint_args[@]}" >"$tmp/lint-$name.log" 2>&1; then
        cat "$tmp/lint-$name.log" >&2
        fail "helm lint ($name)"
        continue
    fi
    out="$tmp/$name.yaml"
    if ! "$HELM" template bully "$chart" --namespace default --include-crds "${args[@]}" >"$out" 2>"$tmp/template-$name.log"; then
        cat "$tmp/template-$name.log" >&2
        fail "helm template ($name)"
        continue
    fi
    # Split into one file per document so that every one is validated and named.
    "$python" - "$out" "$tmp/docs-$name" <<'PY'
import os, sys, yaml
src, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
n = 0
with open(src) as f:
    for doc in yaml.safe_load_all(f):
        if not doc:
            continue
        n += 1
        kind = doc.get("kind", "unknown").lower()
        name = doc.get("metadata", {}).get("name", "unnamed")
        with open(os.path.join(dest, f"{n:02d}-{kind}-{name}.yaml"), "w") as out:
            yaml.safe_dump(doc, out, sort_keys=False)
PY
    for doc in "$tmp/docs-$name"/*.yaml; do
        if grep -q '^kind: BullyCluster$' "$doc"; then
            continue # no schema in kubernetes-validate: checked against the CRD below
        fi
        if grep -q '^apiVersion: monitoring.coreos.com/v1$' "$doc"; then
            check_monitoring "$doc" "$name"
            continue # no schema in kubernetes-validate: rules checked by promtool
        fi
        if grep -q '^  bully.json: ' "$doc"; then
            "$python" -c 'import json, sys, yaml; json.loads(yaml.safe_load(open(sys.argv[1]))["data"]["bully.json"])' "$doc" \
                || fail "dashboard ConfigMap $(basename "$doc") holds invalid JSON ($name)"
        fi
        if [[ "$name" == kube-1.20 ]] && grep -q '^apiVersion: policy/v1beta1$' "$doc"; then
            # policy/v1beta1 is what a 1.20 API server serves; kubernetes-validate's schemas start
            # at 1.25, which no longer has it. The fields the chart uses are the same in
            # policy/v1, so validate the document as that.
            sed -i 's|^apiVersion: policy/v1beta1$|apiVersion: policy/v1|' "$doc"
        fi
        if ! "$KUBERNETES_VALIDATE" --strict --quiet -k "$kube_version" "$doc" >"$tmp/kv.log" 2>&1; then
            cat "$tmp/kv.log" >&2
            fail "kubernetes-validate $(basename "$doc") ($name)"
        elif grep -q WARN "$tmp/kv.log"; then
            cat "$tmp/kv.log" >&2
            fail "kubernetes-validate warned on $(basename "$doc") ($name)"
        fi
    done
    # BullyCluster documents against the CRD's schema, with unknown fields rejected (the API
    # server would silently prune them). The chart renders one exactly when the controller is
    # enabled; none rendered then is a failure, not a pass.
    "$python" - "$chart/crds/bullycluster.yaml" "$tmp/docs-$name" "$values" <<'PY' || fail "BullyCluster schema ($name)"
import glob, sys, yaml, jsonschema
crd = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d][0]
shape = yaml.safe_load(open(sys.argv[3])) or {}
expected = 1 if (shape.get("controller") or {}).get("enabled", True) else 0
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
            node["properties"].setdefault("apiVersion", {"type": "string"}) if node is schema else None
            node["properties"].setdefault("kind", {"type": "string"}) if node is schema else None
            node["properties"].setdefault("metadata", {"type": "object"}) if node is schema else None
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
strict(schema)
ok = True
found = 0
for path in sorted(glob.glob(sys.argv[2] + "/*.yaml")):
    doc = yaml.safe_load(open(path))
    if doc.get("kind") != "BullyCluster":
        continue
    found += 1
    if doc.get("apiVersion") != f'{crd["spec"]["group"]}/{crd["spec"]["versions"][0]["name"]}':
        print(f"{path}: apiVersion {doc.get('apiVersion')} is not served by the CRD")
        ok = False
        continue
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
    for e in errors:
        print(f"{path}: {'/'.join(map(str, e.path))}: {e.message}")
    ok = ok and not errors
    if not errors:
        print(f"INFO {path.rsplit('/', 1)[-1]} passed against the CRD schema")
if found != expected:
    print(f"expected {expected} BullyCluster document(s), the chart rendered {found}")
    ok = False
sys.exit(0 if ok else 1)
PY
    echo "k8s-validate: $name: lint, template and $(ls "$tmp/docs-$name" | wc -l) documents OK"
done

# The alert unit tests, against the rules the default values render (annotations left out:
# their templates are checked by promtool check rules above).
if [ -n "$promtool" ]; then
    mkdir -p "$tmp/alerts"
    if "$HELM" template bully "$chart" --namespace default --set monitoring.prometheusRule.enabled=true \
        --show-only templates/monitoring-prometheusrule.yaml >"$tmp/alerts/rule.yaml" 2>"$tmp/alerts/helm.log"; then
        "$python" - "$tmp/alerts/rule.yaml" "$tmp/alerts/rules.yaml" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))["spec"]
for group in spec["groups"]:
    for rule in group["rules"]:
        rule.pop("annotations", None)
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
PY
        cp "$root/tests/monitoring/alerts-test.yaml" "$tmp/alerts/"
        if "$promtool" test rules "$tmp/alerts/alerts-test.yaml" >"$tmp/alerts/test.log" 2>&1; then
            echo "k8s-validate: alert unit tests (tests/monitoring/alerts-test.yaml) passed"
        else
            cat "$tmp/alerts/test.log" >&2
            fail "promtool test rules tests/monitoring/alerts-test.yaml"
        fi
    else
        cat "$tmp/alerts/helm.log" >&2
        fail "helm template of the PrometheusRule"
    fi
fi

# The chart's CRD is what the Rust types generate.
if command -v cargo >/dev/null 2>&1; then
    if (cd "$root" && cargo run --quiet -p bully-controller -- crdgen >"$tmp/crd.yaml" 2>"$tmp/crdgen.log"); then
        diff -u "$chart/crds/bullycluster.yaml" "$tmp/crd.yaml" \
            || fail "charts/bully/crds/bullycluster.yaml is stale: cargo run -p bully-controller -- crdgen --output charts/bully/crds/bullycluster.yaml"
    else
        cat "$tmp/crdgen.log" >&2
        fail "bully-controller crdgen"
    fi
else
    echo "k8s-validate: cargo not found; the CRD freshness is checked by cargo test -p bully-controller" >&2
fi

# The chart's README is what its values.yaml documents.
"$python" "$root/scripts/chart-readme.py" --check || fail "charts/bully/README.md is stale: run scripts/chart-readme.py"

# k8s/ is what the chart renders.
bash "$root/scripts/k8s-render.sh" "$tmp/bully.yaml" >/dev/null
diff -u "$root/k8s/bully.yaml" "$tmp/bully.yaml" \
    || fail "k8s/bully.yaml is stale: run scripts/k8s-render.sh"

if [ "$failed" -ne 0 ]; then
    echo "k8s-validate: failed" >&2
    exit 1
fi
echo "k8s-validate: all checks passed"
