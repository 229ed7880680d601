#!/usr/bin/env bash
# Installs etcd 3.4 (Debian's `etcd-server`), the peer baseline of `bully-bench report`.
# Idempotent: does nothing when `etcd` is already on the PATH. Prints the binary's path.
set -euo pipefail

if ! command -v etcd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install-etcd: etcd is missing; install Debian's etcd-server (needs root and apt-get)" >&2
        exit 1
    fi
    # The package's service is not started here (no init system in these machines, and the
    # benchmark runs its own members on free loopback ports).
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq etcd-server >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq etcd-server >/dev/null; }
fi
command -v etcd
