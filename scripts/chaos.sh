#!/usr/bin/env bash
# Long chaos batch: builds the binaries, then runs bully-chaos (default 100 runs, about 10 s
# each) against real server processes with randomized faults, and checks every run for
# linearizability, exactly-once execution, ordering and one coordinator per term.
# See docs/chaos.md.
#
#   scripts/chaos.sh                     # 100 runs from a random seed
#   scripts/chaos.sh --runs 500 --seed 7 # any bully-chaos flags
#   scripts/chaos.sh --replay target/chaos/chaos-1234.json
#
# Exit code: 0 no violation, 1 violations (reports in target/chaos/), 2 harness error.
set -euo pipefail
cd "$(dirname "$0")/.."

# SecantusDB lets the seed choose the MongoDB store for about a third of the runs; without it
# every run uses the embedded store.
if ! bash scripts/install-secantus.sh >/dev/null 2>&1; then
    echo "chaos: SecantusDB could not be installed; every run uses the embedded store" >&2
fi

cargo build --workspace --bins

# 100 runs unless the caller says how many (or replays one).
case " $* " in
    *" --runs"* | *" --replay"*) exec target/debug/bully-chaos "$@" ;;
    *) exec target/debug/bully-chaos --runs 100 "$@" ;;
esac
