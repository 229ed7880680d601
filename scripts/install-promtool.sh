#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package ships it), which checks the chart's alerting
# rules (`promtool check rules`, `promtool test rules`) and the servers' and controller's
# /metrics (`promtool check metrics`). Idempotent: does nothing when `promtool` is already on the
# PATH. Prints the binary's path.
set -euo pipefail

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install-promtool: promtool is missing; install Debian's prometheus package (needs root and apt-get)" >&2
        exit 1
    fi
    # The package's Prometheus service is not started (no init system in these machines);
    # only its promtool binary is used.
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
command -v promtool
