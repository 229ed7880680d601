#!/usr/bin/env bash
# Benchmarks: starts a 3-server cluster on loopback (release build) and runs bully-bench
# against it: throughput and latency at several concurrencies and command mixes, the stall a
# coordinator crash causes (SIGKILL mid-run), and each server's memory (RSS, peak RSS).
#
#   scripts/bench.sh                  embedded store (SQLite, the local default)
#   scripts/bench.sh mongo            SecantusDB (MongoDB-compatible; installed into .venv-mongo)
#   BENCH_SECONDS=20 scripts/bench.sh longer runs (default 10 s each)
#
# Prints one line per run. Only loopback is used; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

store="${1:-embedded}"
seconds="${BENCH_SECONDS:-10}"
case "$store" in
embedded | mongo) ;;
*)
    echo "usage: scripts/bench.sh [embedded|mongo]" >&2
    exit 2
    ;;
esac

cargo build --release --locked -q -p bully-server -p bully-tests --bin bully-server --bin bully-bench
bin=target/release
work="$(mktemp -d "${TMPDIR:-/tmp}/bully-bench.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

store_args=(--store embedded --embedded-path "$work/bully.db")
if [ "$store" = mongo ]; then
    bash scripts/install-secantus.sh >/dev/null
    port="$(free_port)"
    mkdir -p "$work/mongo"
    .venv-mongo/bin/secantusd-py --host 127.0.0.1 --port "$port" --storage-path "$work/mongo" \
        --sync-on-commit >"$work/mongo.log" 2>&1 &
    pids+=($!)
    store_args=(--store mongodb --mongodb-uri "mongodb://127.0.0.1:$port/?directConnection=true")
fi

n=3
client_ports=()
peers=()
for i in $(seq 0 $((n - 1))); do
    client_ports+=("$(free_port)")
    peers+=("127.0.0.1:$(free_port)")
done
peer_list="$(IFS=,; echo "${peers[*]}")"
server_pids=()
for i in $(seq 0 $((n - 1))); do
    "$bin/bully-server" serve --listen "127.0.0.1:${client_ports[$i]}" --peer-listen "${peers[$i]}" \
        --advertise-host 127.0.0.1 --peers "$peer_list" "${store_args[@]}" \
        >"$work/s$i.log" 2>&1 &
    pids+=($!)
    server_pids+=($!)
done
servers="$(for p in "${client_ports[@]}"; do printf '127.0.0.1:%s,' "$p"; done)"
servers="${servers%,}"

bench() { "$bin/bully-bench" --servers "$servers" --duration "${seconds}s" "$@"; }

echo "bully-bench: $n servers, $store store, ${seconds} s per run, $(nproc) cores"
bench --op incr --clients 1
bench --op incr --clients 8
bench --op incr --clients 32
bench --op mix --clients 32
bench --op put --clients 32 --value-bytes 1024

# Failover: SIGKILL the coordinator in the middle of a run; the longest stall is the time
# from the last acknowledgement before the crash to the first one after it.
coordinator_port="$(python3 - "$servers" <<'EOF'
import json, sys, urllib.request
for server in sys.argv[1].split(","):
    try:
        status = json.load(urllib.request.urlopen(f"http://{server}/v1/status", timeout=2))
    except OSError:
        continue
    if status.get("role") == "coordinator":
        print(status["client_addr"].rsplit(":", 1)[1])
        break
EOF
)"
victim=""
for i in "${!client_ports[@]}"; do
    if [ "${client_ports[$i]}" = "$coordinator_port" ]; then victim="${server_pids[$i]}"; fi
done
echo "failover: SIGKILL of the coordinator (port $coordinator_port) after $((seconds / 2)) s"
(sleep $((seconds / 2 + 1)) && kill -KILL "$victim") &
bench --op incr --clients 8 || true

echo "memory of the servers after the runs:"
for i in "${!server_pids[@]}"; do
    pid="${server_pids[$i]}"
    if [ -r "/proc/$pid/status" ]; then
        awk -v s="s$i" '/^VmRSS|^VmHWM/ { v[$1] = $2 } END { printf "  %s: RSS %.1f MiB, peak %.1f MiB\n", s, v["VmRSS:"] / 1024, v["VmHWM:"] / 1024 }' "/proc/$pid/status"
    else
        echo "  s$i: killed"
    fi
done
