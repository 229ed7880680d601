#!/usr/bin/env python3
"""Cluster DNS data for scripts/k8s-cluster.sh: every second, the Services and Endpoints from the
API server become a hosts file that dnsmasq serves (`--addn-hosts`); dnsmasq gets SIGHUP when the
file changed. What it lists, as CoreDNS's kubernetes plugin would answer:

  - a Service with a ClusterIP:  NAME.NS.svc.DOMAIN -> the ClusterIP (never its endpoints: those
    go stale on failover, the ClusterIP does not);
  - a headless Service:          NAME.NS.svc.DOMAIN -> every endpoint address, ready or not
    (the servers find peers that are still starting), and HOSTNAME.NAME.NS.svc.DOMAIN for every
    endpoint with a hostname (StatefulSet pods).

Standard library only; the kubeconfig is the one k8s-cluster.sh writes (a server, a CA file and
a bearer token).
"""

import argparse
import json
import os
import re
import signal
import ssl
import sys
import time
import urllib.request


def kubeconfig(path):
    text = open(path).read()

    def field(name):
        match = re.search(name + r':\s*"?([^",}\s]+)"?', text)
        if not match:
            sys.exit(f"k8s-dns: no {name} in {path}")
        return match.group(1)

    return field("server"), field("certificate-authority"), field("token")


def records(services, endpoints, domain):
    """(ip, name) pairs, sorted."""
    headless = {}
    out = set()
    for svc in services.get("items", []):
        meta, spec = svc["metadata"], svc.get("spec", {})
        name = f'{meta["name"]}.{meta["namespace"]}.svc.{domain}'
        ip = spec.get("clusterIP")
        if ip == "None":
            headless[(meta["namespace"], meta["name"])] = name
        elif ip:
            out.add((ip, name))
    for ep in endpoints.get("items", []):
        meta = ep["metadata"]
        name = headless.get((meta["namespace"], meta["name"]))
        if name is None:
            continue
        for subset in ep.get("subsets") or []:
            for address in (subset.get("addresses") or []) + (subset.get("notReadyAddresses") or []):
                ip = address["ip"]
                out.add((ip, name))
                if address.get("hostname"):
                    out.add((ip, f'{address["hostname"]}.{name}'))
    return sorted(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--dnsmasq-pid-file", required=True)
    parser.add_argument("--domain", default="cluster.local")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    server, ca, token = kubeconfig(args.kubeconfig)
    context = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def get(path):
        request = urllib.request.Request(server + path, headers=headers)
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return json.load(response)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    current = None
    while True:
        try:
            text = "".join(
                f"{ip} {name}\n"
                for ip, name in records(get("/api/v1/services"), get("/api/v1/endpoints"), args.domain)
            )
            if text != current:
                with open(args.hosts + ".tmp", "w") as f:
                    f.write(text)
                os.replace(args.hosts + ".tmp", args.hosts)
                with open(args.dnsmasq_pid_file) as f:
                    os.kill(int(f.read().strip()), signal.SIGHUP)
                current = text
                print(f"k8s-dns: {len(text.splitlines())} records", flush=True)
        except Exception as e:  # the API server restarting, a pid file not written yet
            print(f"k8s-dns: {e}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
