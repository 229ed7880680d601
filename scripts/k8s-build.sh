#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 components scripts/k8s-cluster.sh runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl) from Debian bookworm's
# `kubernetes` source package with Debian's Go, and caches them outside the checkout, keyed by
# version:
#   ${BULLY_K8S_CACHE:-/var/cache/bully}/kubernetes-1.20.2/bin/
# A warm run (all six binaries present) returns at once. A cold run takes ~20 min on 2 cores
# (nice'd) and needs root and Debian's package registry (apt).
#
# Changes to Debian's tree, all needed on these machines:
#   - vendor/github.com/modern-go/reflect2 replaced by Debian's reflect2 1.0.2: the vendored 1.0.1
#     crashes (SIGSEGV in map iteration) when built with Go >= 1.18;
#   - kubelet's hard-coded negative oom_score_adj (-998 for every pod sandbox, -997 for
#     Guaranteed pods) set to 0: this VM refuses a negative oom_score_adj (runc fails with
#     "can't get final child's PID from pipe: EOF").
set -euo pipefail

version=1.20.2
cache="${BULLY_K8S_CACHE:-/var/cache/bully}/kubernetes-$version"
bin="$cache/bin"
components="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"

built() {
    local c
    for c in $components; do [ -x "$bin/$c" ] || return 1; done
}
built && exit 0

[ "$(id -u)" = 0 ] || { echo "k8s-build: needs root (apt-get, /var/cache)" >&2; exit 1; }
echo "k8s-build: building Kubernetes $version from Debian's kubernetes source package into $bin (~20 min)" >&2
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
if ! command -v go >/dev/null || ! command -v etcd >/dev/null || ! command -v rsync >/dev/null \
    || [ ! -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]; then
    apt-get update -qq
    apt-get install -y -qq golang-go etcd-server etcd-client rsync golang-github-modern-go-reflect2-dev >/dev/null
fi

mkdir -p "$cache/apt/lists/partial" "$cache/apt/archives/partial" "$cache/src"
echo "deb-src http://deb.debian.org/debian bookworm main" >"$cache/apt/sources.list"
cat >"$cache/apt/apt.conf" <<EOF
Dir::Etc::SourceList "$cache/apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$cache/apt/lists";
Dir::Cache::Archives "$cache/apt/archives";
EOF
cd "$cache/src"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    APT_CONFIG="$cache/apt/apt.conf" apt-get update -qq
    APT_CONFIG="$cache/apt/apt.conf" apt-get source --download-only kubernetes >/dev/null 2>&1
fi
tree="kubernetes-$version"
if [ ! -f "$tree/.bully-patched" ]; then
    rm -rf "$tree"
    tar xzf kubernetes_*.orig.tar.gz
    (
        cd "$tree"
        vendored=vendor/github.com/modern-go/reflect2
        rm -rf "$vendored" && mkdir -p "$vendored"
        cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
            /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vendored/"
        rm -f "$vendored"/*_test.go
        sed -i 's/\(defaultSandboxOOMAdj[[:space:]]*int[[:space:]]*=[[:space:]]*\)-998/\10/' \
            pkg/kubelet/dockershim/docker_sandbox.go
        sed -i 's/\(guaranteedOOMScoreAdj[[:space:]]*int[[:space:]]*=[[:space:]]*\)-997/\10/' \
            pkg/kubelet/qos/policy.go
        grep -Eq 'defaultSandboxOOMAdj\s+int\s*=\s*0$' pkg/kubelet/dockershim/docker_sandbox.go
        grep -Eq 'guaranteedOOMScoreAdj\s+int\s*=\s*0$' pkg/kubelet/qos/policy.go
        touch .bully-patched
    )
fi
cd "$tree"
what=""
for c in $components; do what="$what cmd/$c"; done
# KUBE_STATIC_OVERRIDES=kubelet: the kubelet without cgo, like the other five. With cgo (the
# default for it) every package it depends on is compiled a second time in another
# configuration, which nearly doubles the build.
if ! nice -n 10 env -u GOFLAGS GOPROXY=off KUBE_STATIC_OVERRIDES=kubelet make WHAT="${what# }" \
    >"$cache/make.log" 2>&1; then
    tail -30 "$cache/make.log" >&2
    exit 1
fi
mkdir -p "$bin.tmp"
for c in $components; do cp "_output/bin/$c" "$bin.tmp/"; done
rm -rf "$bin" && mv "$bin.tmp" "$bin"
cd .. && rm -rf "$tree"
echo "k8s-build: done in $((SECONDS - start)) s" >&2
