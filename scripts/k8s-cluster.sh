#!/usr/bin/env bash
# A single-node Kubernetes v1.20.2 on this machine, from real components:
#   etcd (Debian), kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (its built-in
#   dockershim on this machine's Docker engine: pods are Docker containers on docker0),
#   kube-proxy (iptables) and kubectl, built by scripts/k8s-build.sh from Debian's `kubernetes`
#   source package and cached in /var/cache/bully/kubernetes-1.20.2/bin;
#   cluster DNS: dnsmasq on the docker0 address, its hosts file rebuilt every second from the
#   API (see k8s-dns.py).
#
# Usage: scripts/k8s-cluster.sh up      build what is missing, start everything, wait for the
#                                       node to be Ready; also builds the images the chart's
#                                       local values use (scripts/docker-images.sh, the pause
#                                       image) unless BULLY_K8S_SKIP_IMAGES=1
#        scripts/k8s-cluster.sh down    stop everything and remove every trace: processes, pod
#                                       containers, iptables rules, the service-CIDR device,
#                                       mounts, sysctls changed, state files
#        scripts/k8s-cluster.sh env     print the environment to use it by hand:
#                                       eval "$(scripts/k8s-cluster.sh env)"; kubectl get nodes
#        scripts/k8s-cluster.sh status  exit 0 when the cluster is up and the node Ready
#
# Addresses: everything stays on this machine. The API server, the kubelet and the DNS server
# listen on the docker0 address (pods reach it, so does the host); etcd and the components'
# health ports on loopback. The service CIDR (10.96.0.0/16) is routed to a bridge device with no
# ports (this kernel has no `dummy` link type): a ClusterIP packet that no kube-proxy rule
# rewrites is dropped there instead of leaving by the default route.
#
# Needs root, a Docker engine with cgroupfs (cgroups v1), and, on the first run, Debian's
# package registry (golang-go, etcd, dnsmasq-base, conntrack; ~20 min build on 2 cores).
# Environment: BULLY_K8S_STATE (default /var/lib/bully-k8s), BULLY_K8S_CACHE (/var/cache/bully),
# BULLY_K8S_DNS_INTERVAL (seconds between DNS updates, default 1: how far DNS lags the pods).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
version=1.20.2
cache="${BULLY_K8S_CACHE:-/var/cache/bully}/kubernetes-$version"
bin="$cache/bin"
state="${BULLY_K8S_STATE:-/var/lib/bully-k8s}"
# etcd on tmpfs: the cluster is thrown away with `down`, and fsync on this VM's disk is slow.
etcd_data="/dev/shm/bully-k8s-etcd"
node=bully-node
service_cidr=10.96.0.0/16
kubernetes_service_ip=10.96.0.1
svc_dev=bully-svc0
cluster_domain=cluster.local
apiserver_port=6443
etcd_port=12379
pause_image=k8s.gcr.io/pause:3.2
owner_label=io.bully.built-by=scripts/k8s-cluster.sh

log() { printf '[k8s-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

bridge_ip() { ip -4 -o addr show docker0 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }'; }

kubectl() { KUBECONFIG="$state/kubeconfig" "$bin/kubectl" "$@"; }

# ---------------------------------------------------------------------------------------------
# Processes: one pid file each in $state/pids; logs in $state/logs.

start() { # start NAME COMMAND...
    local name=$1
    shift
    setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$state/pids/$name"
}

running() { [ -f "$state/pids/$1" ] && kill -0 "$(cat "$state/pids/$1")" 2>/dev/null; }

stop() { # stop NAME: SIGTERM, then SIGKILL after 10 s
    local pid
    [ -f "$state/pids/$1" ] || return 0
    pid="$(cat "$state/pids/$1")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$state/pids/$1"
}

wait_until() { # wait_until SECONDS WHAT COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "timed out waiting for $what; last log lines:"
            tail -n 20 "$state"/logs/*.log >&2 || true
            die "$what"
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# up

packages() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
    command -v conntrack >/dev/null || missing+=(conntrack)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

pause_image() {
    docker image inspect "$pause_image" >/dev/null 2>&1 && return 0
    local src="$cache/pause/pause.c" tmp
    if [ ! -f "$src" ]; then
        mkdir -p "$cache/pause"
        tar -xzf "$cache"/src/kubernetes_*.orig.tar.gz -O "kubernetes-$version/build/pause/linux/pause.c" >"$src.tmp"
        mv "$src.tmp" "$src"
    fi
    tmp="$(mktemp -d)"
    gcc -Os -Wall -static -DVERSION=v3.2 -o "$tmp/pause" "$src"
    strip "$tmp/pause" 2>/dev/null || true
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$tmp/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q --label "$owner_label" -t "$pause_image" "$tmp" >/dev/null
    rm -rf "$tmp"
    log "built $pause_image from build/pause/linux/pause.c"
}

certificates() { # certificates BRIDGE_IP
    local pki="$state/pki"
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=bully-k8s-ca \
            -days 30 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
            -subj /CN=kube-apiserver 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.%s\n' \
            "$1" "$kubernetes_service_ip" "$cluster_domain" >san.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver.crt -days 30 -extfile san.ext 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        chmod 600 ./*.key
    )
}

# One bearer token per identity; the bootstrap RBAC policy of the API server gives each the
# rights it needs (the kubelet through the Node authorizer).
identities() {
    local who user groups token
    : >"$state/pki/tokens.csv"
    while read -r who user groups; do
        token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        echo "$token,$user,$who-uid,\"$groups\"" >>"$state/pki/tokens.csv"
        cat >"$state/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: bully, cluster: {server: "https://$1:$apiserver_port", certificate-authority: "$state/pki/ca.crt"}}]
users: [{name: $who, user: {token: "$token"}}]
contexts: [{name: bully, context: {cluster: bully, user: $who, namespace: default}}]
current-context: bully
EOF
        chmod 600 "$state/$who.kubeconfig"
    done <<EOF
admin admin system:masters
controller-manager system:kube-controller-manager system:authenticated
scheduler system:kube-scheduler system:authenticated
proxy system:kube-proxy system:authenticated
kubelet system:node:$node system:nodes,system:authenticated
EOF
    chmod 600 "$state/pki/tokens.csv"
    cp "$state/admin.kubeconfig" "$state/kubeconfig"
}

# Remembered before `up` changes them, restored by `down`.
sysctls=(net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables net/ipv4/ip_forward
    net/netfilter/nf_conntrack_max net/netfilter/nf_conntrack_tcp_timeout_established
    net/netfilter/nf_conntrack_tcp_timeout_close_wait kernel/panic kernel/panic_on_oops
    vm/overcommit_memory vm/panic_on_oom kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

save_sysctls() {
    local key
    : >"$state/sysctls"
    for key in "${sysctls[@]}"; do
        [ -f "/proc/sys/$key" ] && echo "$key $(cat "/proc/sys/$key")" >>"$state/sysctls"
    done
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (kubelet, iptables, network devices)"
    command -v docker >/dev/null || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"
    if [ -f "$state/up" ] && running apiserver && running kubelet; then
        log "already up (KUBECONFIG=$state/kubeconfig)"
        return 0
    fi
    down_quiet
    local started=$SECONDS ip
    packages
    bash "$root/scripts/k8s-build.sh"
    ip="$(bridge_ip)"
    [ -n "$ip" ] || die "docker0 has no IPv4 address"
    if [ "${BULLY_K8S_SKIP_IMAGES:-0}" != 1 ]; then
        bash "$root/scripts/docker-images.sh"
    fi
    pause_image

    mkdir -p "$state/pids" "$state/logs" "$state/dns" "$state/kubelet"
    save_sysctls
    [ -e /var/log/pods ] || touch "$state/created-var-log-pods"
    [ -e /var/log/containers ] || touch "$state/created-var-log-containers"
    certificates "$ip"
    identities "$ip"

    # The service CIDR goes to a port-less bridge: dropped unless kube-proxy rewrote it.
    ip link add "$svc_dev" type bridge
    ip link set "$svc_dev" up
    ip route add "$service_cidr" dev "$svc_dev" src "$ip"
    # Pod-to-ClusterIP-to-pod on the same bridge needs the bridge's traffic to pass iptables.
    modprobe br_netfilter 2>/dev/null || true
    echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    echo 1 >/proc/sys/net/ipv4/ip_forward

    rm -rf "$etcd_data"
    start etcd etcd --name bully-k8s --data-dir "$etcd_data" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-cluster "bully-k8s=http://127.0.0.1:$((etcd_port + 1))"
    wait_until 30 "etcd" etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health

    start apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address="$ip" --advertise-address="$ip" --secure-port="$apiserver_port" \
        --tls-cert-file="$state/pki/apiserver.crt" --tls-private-key-file="$state/pki/apiserver.key" \
        --client-ca-file="$state/pki/ca.crt" \
        --token-auth-file="$state/pki/tokens.csv" --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction --allow-privileged=true \
        --service-account-issuer="https://kubernetes.default.svc.$cluster_domain" \
        --service-account-key-file="$state/pki/sa.pub" \
        --service-account-signing-key-file="$state/pki/sa.key" \
        --service-cluster-ip-range="$service_cidr" \
        --kubelet-preferred-address-types=InternalIP --profiling=false
    wait_until 60 "kube-apiserver" kubectl get --raw /readyz

    start controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$state/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$state/pki/sa.key" --root-ca-file="$state/pki/ca.crt" \
        --service-cluster-ip-range="$service_cidr" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port=10257 --port=0 --profiling=false
    start scheduler "$bin/kube-scheduler" --kubeconfig="$state/scheduler.kubeconfig" \
        --authentication-kubeconfig="$state/scheduler.kubeconfig" \
        --authorization-kubeconfig="$state/scheduler.kubeconfig" \
        --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --port=0 --profiling=false

    # Pods' resolv.conf: the cluster DNS only (ClusterFirst), none of the host's servers.
    echo "nameserver $ip" >"$state/resolv.conf"
    # This VM refuses a negative oom_score_adj: --oom-score-adj=0 for the kubelet itself (the
    # pods' values are patched in the build, see k8s-build.sh). No per-QoS cgroups: the pods'
    # limits are the containers' own, and nothing is left in /sys/fs/cgroup afterwards.
    start kubelet "$bin/kubelet" --kubeconfig="$state/kubelet.kubeconfig" \
        --hostname-override="$node" --node-ip="$ip" --address="$ip" --port=10250 \
        --healthz-bind-address=127.0.0.1 --healthz-port=10248 --read-only-port=0 \
        --root-dir="$state/kubelet" --cert-dir="$state/kubelet/pki" \
        --experimental-dockershim-root-directory="$state/dockershim" \
        --container-runtime-endpoint="unix://$state/dockershim.sock" \
        --image-service-endpoint="unix://$state/dockershim.sock" \
        --volume-plugin-dir="$state/kubelet/volume-plugins" \
        --container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock \
        --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
        --fail-swap-on=false --oom-score-adj=0 \
        --pod-infra-container-image="$pause_image" \
        --cluster-dns="$ip" --cluster-domain="$cluster_domain" --resolv-conf="$state/resolv.conf" \
        --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
        --eviction-hard='memory.available<1Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%' \
        --serialize-image-pulls=false --max-pods=60
    # kube-proxy sets no conntrack sysctls (0) and has --oom-score-adj=0 for the same reason.
    start proxy "$bin/kube-proxy" --kubeconfig="$state/proxy.kubeconfig" \
        --hostname-override="$node" --proxy-mode=iptables --cluster-cidr=172.17.0.0/16 \
        --bind-address="$ip" --healthz-bind-address=127.0.0.1:10256 \
        --metrics-bind-address=127.0.0.1:10249 --conntrack-max-per-core=0 \
        --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
        --oom-score-adj=0 --profiling=false

    # DNS: dnsmasq answers cluster.local from a hosts file alone; k8s-dns.py rewrites the file
    # every second from the API and sends SIGHUP when it changed.
    : >"$state/dns/hosts"
    start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
        --listen-address="$ip" --port=53 --local="/$cluster_domain/" --domain-needed \
        --local-ttl=1 --no-negcache --addn-hosts="$state/dns/hosts" --user=root \
        --log-facility=- --pid-file=
    start dns python3 "$root/scripts/k8s-dns.py" --kubeconfig "$state/admin.kubeconfig" \
        --hosts "$state/dns/hosts" --dnsmasq-pid-file "$state/pids/dnsmasq" \
        --domain "$cluster_domain" --interval "${BULLY_K8S_DNS_INTERVAL:-1}"

    wait_until 90 "the node to be Ready" node_ready
    wait_until 60 "the default service account" kubectl -n default get serviceaccount default
    wait_until 30 "kube-proxy's rules for the kubernetes Service" proxy_ready
    touch "$state/up"
    log "up in $((SECONDS - started)) s: node $node Ready; eval \"\$($0 env)\" to use it"
}

proxy_ready() { iptables -t nat -S KUBE-SERVICES | grep -q "$kubernetes_service_ip/32"; }

node_ready() {
    [ "$(kubectl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# ---------------------------------------------------------------------------------------------
# down

delete_kube_chains() { # delete_kube_chains iptables|ip6tables
    local cmd=$1 table rule chain
    for table in filter nat mangle; do
        "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
        # Rules of other chains that jump to a KUBE- chain, then the KUBE- chains themselves.
        "$cmd" -t "$table" -S 2>/dev/null | grep -E '^-A ' | grep -vE '^-A KUBE-' | grep -E -- '-j KUBE-' |
            while read -r rule; do
                eval "$cmd -t $table ${rule/-A /-D }" 2>/dev/null || true
            done || true
        for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }'); do
            "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }'); do
            "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

down_quiet() {
    [ -d "$state" ] || [ -e "$etcd_data" ] || ip link show "$svc_dev" >/dev/null 2>&1 || return 0
    log "tearing down the cluster in $state"
    local name ids mount key value
    # The kubelet first, so that it restarts no container; then every pod container.
    stop kubelet
    ids="$(docker ps -aq --filter label=io.kubernetes.pod.namespace 2>/dev/null || true)"
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        docker rm -f -v $ids >/dev/null 2>&1 || true
    fi
    for name in dns dnsmasq proxy scheduler controller-manager apiserver etcd; do stop "$name"; done
    if [ -x "$bin/kube-proxy" ]; then
        "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
    fi
    delete_kube_chains iptables
    delete_kube_chains ip6tables
    # Secret and emptyDir volumes the kubelet mounted (deepest first).
    if [ -d "$state" ]; then
        findmnt -rn -o TARGET | grep -E "^$state/" | sort -r | while read -r mount; do
            umount -l "$mount" 2>/dev/null || true
        done || true
    fi
    ip link del "$svc_dev" 2>/dev/null || true
    if [ -f "$state/sysctls" ]; then
        while read -r key value; do
            echo "$value" >"/proc/sys/$key" 2>/dev/null || true
        done <"$state/sysctls"
    fi
    [ -f "$state/created-var-log-pods" ] && rm -rf /var/log/pods
    [ -f "$state/created-var-log-containers" ] && rm -rf /var/log/containers
    rm -rf "$etcd_data"
    if [ -d "$state" ]; then rm -rf --one-file-system "$state"; fi
}

down() {
    [ "$(id -u)" = 0 ] || die "needs root"
    down_quiet
    log "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
env)
    echo "export KUBECONFIG=$state/kubeconfig"
    echo "export PATH=$bin:\$PATH"
    ;;
status) [ -f "$state/up" ] && node_ready ;;
*)
    echo "usage: $0 up|down|env|status" >&2
    exit 2
    ;;
esac
