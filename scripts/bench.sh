#!/usr/bin/env bash
# Benchmarks (release build). Everything is started and stopped by `bully-bench` itself, on
# loopback only.
#
#   scripts/bench.sh report           the whole report: bully (embedded store and SecantusDB)
#                                     and etcd 3.4 side by side, failover, elections, one-shot
#                                     client, memory -> docs/benchmarks.md (about 12 minutes)
#   scripts/bench.sh report --quick   the same in seconds (a smoke run; figures mean nothing)
#   scripts/bench.sh --servers A,B,C --clients 16 --op put    load against a running cluster
#
# Installs what the report needs first: SecantusDB (PyPI) and etcd-server (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = report ]; then
    bash scripts/install-secantus.sh >/dev/null
    bash scripts/install-etcd.sh >/dev/null || echo "bench.sh: no etcd: the report runs without it" >&2
fi
cargo build --release --locked -q --workspace --bins
exec target/release/bully-bench "$@"
