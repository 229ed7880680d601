#!/usr/bin/env bash
# Smoke test of the chart and the controller against a real Kubernetes API server (v1.20.2, the
# oldest version the chart supports), without kubelets or images:
#   - `helm install` of charts/bully (CRD, PDB policy/v1beta1 chosen from the capabilities, ...);
#   - kube-controller-manager creates the StatefulSets' pods; the script marks the server pods
#     Running with pod IPs 127.0.0.2-4, where small Python servers answer GET /v1/status from files;
#   - bully-controller (target/debug, built here) runs as the chart's service account user, so
#     the chart's Role is what it gets, and must: label the coordinator, move the label after a
#     new election, warn about two claimants, relabel a recreated pod, write the BullyCluster
#     status and events; a second replica stands by on the Lease and takes over (and moves the
#     label) after the leader is killed; the leader releases the Lease and exits on SIGTERM.
#
# First run: scripts/k8s-build.sh installs Debian packages (golang-go, etcd-server, ...),
# downloads Debian's `kubernetes` source package and builds Kubernetes 1.20.2 into
# /var/cache/bully/kubernetes-1.20.2/bin (~20 min on 2 cores). Needs root, python3, cargo, and
# the ports 16443, 16444, 23790, 23800, 18080, 18081 and 127.0.0.2-4:7070 free. Leaves nothing running.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# Built once by k8s-build.sh, cached outside the checkout (shared with k8s-cluster.sh).
bin="${BULLY_K8S_CACHE:-/var/cache/bully}/kubernetes-1.20.2/bin"
# shellcheck source=k8s-tools.sh
source "$root/scripts/k8s-tools.sh"

bash "$root/scripts/k8s-build.sh"
command -v etcd >/dev/null || { echo "k8s-smoke: etcd missing (apt-get install etcd-server)" >&2; exit 1; }
(cd "$root" && cargo build --quiet -p bully-controller)

run="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${keep:-0}" = 1 ]; then echo "k8s-smoke: logs kept in $run" >&2; else rm -rf "$run"; fi
}
trap cleanup EXIT
fail() {
    echo "k8s-smoke: FAIL: $*" >&2
    keep=1
    exit 1
}
cd "$run"

# Certificates and tokens: "admin" is system:masters; "ctrl" is the chart's service account.
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=smoke-ca -days 1 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
printf "subjectAltName=IP:127.0.0.1\n" >san.ext
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 1 -extfile san.ext 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
cat >tokens.csv <<'EOF'
admin-token,admin,admin-uid,system:masters
ctrl-token,system:serviceaccount:default:bully-controller,ctrl-uid,"system:serviceaccounts,system:serviceaccounts:default,system:authenticated"
EOF
for who in admin ctrl; do
    cat >"kubeconfig-$who" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: smoke, cluster: {server: "https://127.0.0.1:16443", certificate-authority: "$run/ca.crt"}}]
users: [{name: $who, user: {token: $who-token}}]
contexts: [{name: smoke, context: {cluster: smoke, user: $who, namespace: default}}]
current-context: smoke
EOF
done
export KUBECONFIG="$run/kubeconfig-admin"

etcd --data-dir etcd-data --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 >etcd.log 2>&1 &
pids+=($!)
sleep 2
"$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:23790 --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port=16443 --tls-cert-file=apiserver.crt \
    --tls-private-key-file=apiserver.key --token-auth-file=tokens.csv --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file=sa.pub \
    --service-account-signing-key-file=sa.key --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none --service-cluster-ip-range=10.96.0.0/16 >apiserver.log 2>&1 &
pids+=($!)
for _ in $(seq 60); do kubectl get ns default >/dev/null 2>&1 && break; sleep 1; done
kubectl get ns default >/dev/null 2>&1 || fail "the API server did not come up (apiserver.log)"
"$bin/kube-controller-manager" --kubeconfig=kubeconfig-admin --authentication-skip-lookup \
    --bind-address=127.0.0.1 --secure-port=16444 --controllers='*,-serviceaccount-token' \
    --leader-elect=false >kcm.log 2>&1 &
pids+=($!)

"$HELM" install bully "$root/charts/bully" --namespace default >helm.log 2>&1 \
    || { cat helm.log >&2; fail "helm install"; }
[ "$(kubectl get pdb bully -o jsonpath='{.apiVersion}')" = policy/v1beta1 ] \
    || fail "the PodDisruptionBudget should be policy/v1beta1 on 1.20"

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "$what"
        sleep 0.2
    done
}
role() { kubectl get pod "$1" -o jsonpath='{.metadata.labels.bully\.dev/role}'; }
has_role() { [ "$(role "$1")" = "$2" ]; }
status_is() { [ "$(kubectl get bullycluster bully -o jsonpath="$1")" = "$2" ]; }
set_status() { # set_status N RANK ROLE [TERM]
    local term=""
    [ -n "${4:-}" ] && term=",\"term\":$4"
    echo "{\"rank\":$2,\"role\":\"$3\"$term,\"client_addr\":\"x:7070\",\"peer_addr\":\"x:7071\",\"ready\":true,\"peers\":[],\"version\":\"smoke\"}" >"s$1.json.tmp"
    mv "s$1.json.tmp" "s$1.json"
}
cat >fake_status.py <<'EOF'
import http.server, os, sys
ip, path = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/v1/status" or not os.path.exists(path):
            self.send_response(503); self.end_headers(); return
        body = open(path, "rb").read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((ip, 7070), H).serve_forever()
EOF
mark_running() { # mark_running N: the pod bully-N runs at 127.0.0.(N+2)
    local ip="127.0.0.$(($1 + 2))"
    kubectl patch pod "bully-$1" --subresource=status --type=merge \
        -p "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$ip\",\"podIPs\":[{\"ip\":\"$ip\"}]}}" >/dev/null
}
fake_pid=()
for n in 0 1 2; do
    wait_for 30 "StatefulSet pod bully-$n" kubectl get pod "bully-$n"
    mark_running "$n"
    python3 fake_status.py "127.0.0.$((n + 2))" "s$n.json" >"fake$n.log" 2>&1 &
    fake_pid[n]=$!
    pids+=($!)
done
set_status 0 100 follower
set_status 1 200 follower
set_status 2 300 coordinator 1

# At least 16 characters, as the controller requires of a token file.
echo -n smoke-token-0123456789 >token
KUBECONFIG="$run/kubeconfig-ctrl" BULLY_CONTROLLER_NAMESPACE=default POD_NAME=smoke \
    "$root/target/debug/bully-controller" run --metrics-listen 127.0.0.1:18080 --token-file token \
    --pod-selector app.kubernetes.io/instance=bully >controller.log 2>&1 &
controller=$!
pids+=($controller)

wait_for 10 "bully-2 labelled coordinator" has_role bully-2 coordinator
wait_for 5 "bully-0 labelled follower" has_role bully-0 follower
wait_for 5 "status: coordinator bully-2, term 1, 3/3" \
    status_is '{.status.coordinator} {.status.term} {.status.ready}' "bully-2 1 3/3"
wait_for 5 "CoordinatorChanged event" sh -c \
    "kubectl get events.v1.events.k8s.io -o jsonpath='{.items[*].note}' | grep -q 'bully-2 (term 1)'"
curl -sf 127.0.0.1:18080/readyz >/dev/null || fail "controller /readyz"
echo "k8s-smoke: coordinator bully-2 labelled, status and event written"

# bully-2 dies; bully-1 wins term 2.
kill "${fake_pid[2]}"
set_status 1 200 coordinator 2
start=$SECONDS
wait_for 5 "label moved to bully-1" has_role bully-1 coordinator
wait_for 5 "bully-2 relabelled follower" has_role bully-2 follower
wait_for 5 "status: bully-1 term 2, 2/3" \
    status_is '{.status.coordinator} {.status.term} {.status.ready}' "bully-1 2 2/3"
echo "k8s-smoke: label moved to the new coordinator within $((SECONDS - start + 1)) s"

# bully-2 comes back still claiming its old term: bully-1 keeps the label, one Warning.
set_status 2 300 coordinator 1
python3 fake_status.py 127.0.0.4 s2.json >fake2.log 2>&1 &
pids+=($!)
wait_for 5 "ConflictingCoordinators event" sh -c \
    "kubectl get events.v1.events.k8s.io --field-selector reason=ConflictingCoordinators -o name | grep -q ."
sleep 3
has_role bully-1 coordinator || fail "bully-1 should keep the label (higher term)"
[ "$(kubectl get events.v1.events.k8s.io --field-selector reason=ConflictingCoordinators -o name | wc -l)" = 1 ] \
    || fail "the lasting conflict should be warned about once"
echo "k8s-smoke: conflicting claimants: highest term kept the label, one Warning event"

# A deleted pod is recreated (Pending, no IP): follower, NotRunning.
set_status 2 300 follower
kubectl delete pod bully-0 --wait=false >/dev/null
wait_for 10 "recreated bully-0 labelled follower" sh -c \
    "kubectl get pod bully-0 -o jsonpath='{.status.phase} {.metadata.labels.bully\.dev/role}' | grep -qx 'Pending follower'"
wait_for 5 "bully-0 NotRunning in the status" \
    status_is '{.status.members[0].reason}' NotRunning
echo "k8s-smoke: recreated pod labelled follower"

# Steady state: no status writes.
rv="$(kubectl get bullycluster bully -o jsonpath='{.metadata.resourceVersion}')"
sleep 4
[ "$(kubectl get bullycluster bully -o jsonpath='{.metadata.resourceVersion}')" = "$rv" ] \
    || fail "the status is rewritten while nothing changes"

# Leader election: the first controller holds the chart's Lease; a second replica stands by.
holder() { kubectl get lease bully-controller -o jsonpath='{.spec.holderIdentity}'; }
[ "$(holder)" = smoke ] || fail "the Lease should name the first controller (it names '$(holder)')"
KUBECONFIG="$run/kubeconfig-ctrl" BULLY_CONTROLLER_NAMESPACE=default POD_NAME=smoke-2 \
    "$root/target/debug/bully-controller" run --metrics-listen 127.0.0.1:18081 --token-file token \
    --pod-selector app.kubernetes.io/instance=bully >controller-2.log 2>&1 &
standby=$!
pids+=($standby)
wait_for 10 "the second controller ready as standby" sh -c \
    "curl -sf 127.0.0.1:18081/readyz | grep -qx 'ready: standby'"
[ "$(curl -sf 127.0.0.1:18080/readyz)" = "ready: leader" ] || fail "the first controller should lead"
curl -sf 127.0.0.1:18081/metrics | grep -qx 'bully_controller_leader 0' || fail "standby: bully_controller_leader 0"
curl -sf 127.0.0.1:18080/metrics | grep -qx 'bully_controller_leader 1' || fail "leader: bully_controller_leader 1"

# The leader dies (no release) during a failover: bully-2 wins term 3. The standby takes over
# once the lease has run out (10 s after the last renewal, plus up to 1 s) and moves the label.
kill -KILL "$controller"
wait "$controller" 2>/dev/null || true
set_status 1 200 follower
set_status 2 300 coordinator 3
start=$SECONDS
wait_for 15 "label moved to bully-2 by the standby" has_role bully-2 coordinator
wait_for 5 "status written by smoke-2" \
    status_is '{.status.coordinator} {.status.term} {.status.reconciledBy}' "bully-2 3 smoke-2"
[ "$(holder)" = smoke-2 ] || fail "the Lease should name the second controller"
echo "k8s-smoke: the standby took over and moved the label within $((SECONDS - start + 1)) s"
kubectl get bullycluster bully -o wide | grep -q smoke-2 || fail "kubectl get -o wide should show RECONCILED BY"

kill -TERM "$standby"
for _ in $(seq 50); do kill -0 "$standby" 2>/dev/null || break; sleep 0.1; done
kill -0 "$standby" 2>/dev/null && fail "the controller did not exit on SIGTERM"
[ -z "$(holder)" ] || fail "the leader should release the Lease on SIGTERM"
echo "k8s-smoke: all checks passed"
