#!/usr/bin/env python3
"""The user story of issue 16 on a real single-node cluster (scripts/k8s-cluster.sh), driven by
scripts/k8s-e2e.sh: helm install, failovers by `kubectl delete pod`, a rolling upgrade, a
restarted controller, exactly-once, uninstall. Prints what it observed and the times measured;
exits non-zero on the first broken expectation.

Throughout, a workload of thin clients runs inside the cluster: looping client pods, each running
one `bully-client incr counter` process per command against the client Service's DNS name, every
command id logged before it is sent (an unacknowledged command still counts as issued) and every
outcome logged with the time it came back.

Standard library only; kubectl and helm are the ones k8s-e2e.sh puts on PATH.
"""

import argparse
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

NS = os.environ.get("BULLY_E2E_NAMESPACE", "bully-e2e")
RELEASE = "bully"
SERVER_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=server"
LOOPS = int(os.environ.get("BULLY_E2E_CLIENTS", "2"))
ROLE = "bully.dev/role"

times = {}


def log(msg):
    print(f"[k8s-e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)
    log(f"ok: {msg}")


def run(*args, input=None, check_rc=True, timeout=600):
    p = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise Failed(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def kubectl(*args, **kw):
    return run("kubectl", "-n", NS, *args, **kw)


def kjson(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def poll(what, timeout, fn, every=0.05):
    """fn() until it returns something truthy; that value. Raises after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - a pod going away mid-request
            last = e
        time.sleep(every)
    raise Failed(f"timed out after {timeout} s waiting for {what} (last error: {last})")


# ---------------------------------------------------------------------------------------------
# Fast reads for the timings: the API server and the servers directly, no kubectl process.


class Api:
    def __init__(self, kubeconfig):
        text = open(kubeconfig).read()
        field = lambda name: re.search(name + r':\s*"?([^",}\s]+)"?', text).group(1)  # noqa: E731
        self.server = field("server")
        self.context = ssl.create_default_context(cafile=field("certificate-authority"))
        self.token = field("token")

    def get(self, path):
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, context=self.context, timeout=2) as r:
            return json.load(r)

    def delete_pod(self, name, grace=None):
        body = json.dumps({} if grace is None else {"gracePeriodSeconds": grace}).encode()
        req = urllib.request.Request(
            f"{self.server}/api/v1/namespaces/{NS}/pods/{name}", data=body, method="DELETE",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=self.context, timeout=10) as r:
            r.read()

    def server_pods(self):
        sel = urllib.request.quote(SERVER_SELECTOR)
        return self.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={sel}")["items"]


def status_of(addr, token, timeout=0.5):
    req = urllib.request.Request(
        f"http://{addr}/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def labelled_coordinators(pods):
    return sorted(
        p["metadata"]["name"]
        for p in pods
        if p["metadata"].get("labels", {}).get(ROLE) == "coordinator"
        and not p["metadata"].get("deletionTimestamp")
    )


def ready(pod):
    conds = pod.get("status", {}).get("conditions") or []
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


# ---------------------------------------------------------------------------------------------
# The workload: looping client pods.

LOOP_SCRIPT = r"""
i=0
while [ ! -e /tmp/stop ]; do
    i=$((i + 1))
    id="$PREFIX-$i"
    echo "issued $id"
    out=$(bully-client --output json --id "$id" incr counter 2>/tmp/err)
    rc=$?
    echo "done $(date +%s.%N) $id $rc $out"
    if [ "$rc" -ne 0 ]; then echo "stderr $id $(tr '\n' ' ' </tmp/err)"; fi
    sleep 0.05
done
echo finished
sleep 3600
"""

REPLAY_SCRIPT = r"""
while read -r id; do
    out=$(bully-client --output json --id "$id" incr counter 2>/tmp/err)
    echo "replay $id $? $out"
done
out=$(bully-client --output json get counter)
echo "counter $? $out"
"""


def client_pod(name, client_addr, image, script):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                # The chart's client component: the NetworkPolicy lets these reach the servers.
                "app.kubernetes.io/name": "bully",
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": "client",
                "bully-e2e": "workload",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                    "env": [
                        {"name": "PREFIX", "value": name},
                        {"name": "BULLY_SERVERS", "value": client_addr},
                        {"name": "BULLY_TOKEN_FILE", "value": "/var/run/secrets/bully/token"},
                    ],
                    "volumeMounts": [
                        {"name": "token", "mountPath": "/var/run/secrets/bully", "readOnly": True},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "token", "secret": {"secretName": f"{RELEASE}-token"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


def parse_loop(text):
    issued, acked, failed = [], {}, {}
    stderr = {}
    for line in text.splitlines():
        if line.startswith("issued "):
            issued.append(line.split()[1])
        elif line.startswith("stderr "):
            _, cid, *rest = line.split(" ", 2) + [""]
            stderr[cid] = rest[0] if rest else ""
        elif line.startswith("done "):
            parts = line.split(" ", 4)
            if len(parts) < 4:
                continue
            at, cid, rc = float(parts[1]), parts[2], parts[3]
            if rc == "0":
                acked[cid] = (at, json.loads(parts[4]))
            else:
                failed[cid] = (at, f"exit {rc}")
    for cid, (at, why) in failed.items():
        failed[cid] = (at, f"{why}: {stderr.get(cid, '')}")
    return issued, acked, failed


class Workload:
    def __init__(self, image, client_addr):
        self.names = [f"e2e-load-{i}" for i in range(LOOPS)]
        for name in self.names:
            kubectl("apply", "-f", "-", input=json.dumps(client_pod(name, client_addr, image, LOOP_SCRIPT)))
        for name in self.names:
            poll(f"{name} running", 120, lambda n=name: "issued" in kubectl("logs", n, check_rc=False), 0.5)
        log(f"workload: {LOOPS} looping client pods")

    def read(self):
        issued, acked, failed = [], {}, {}
        for name in self.names:
            i, a, f = parse_loop(kubectl("logs", name))
            issued += i
            acked.update(a)
            failed.update(f)
        return issued, acked, failed

    def failures_between(self, start, end):
        _, _, failed = self.read()
        return {cid: why for cid, (at, why) in failed.items() if start <= at <= end}

    def longest_stall(self, start, end):
        """The longest time without an acknowledged command between start and end."""
        _, acked, _ = self.read()
        stamps = sorted([start] + [at for at, _ in acked.values() if start <= at <= end] + [end])
        return max(b - a for a, b in zip(stamps, stamps[1:]))

    def stop(self):
        for name in self.names:
            kubectl("exec", name, "--", "touch", "/tmp/stop")
        for name in self.names:
            poll(f"{name} to finish", 60, lambda n=name: "finished" in kubectl("logs", n), 0.5)
        return self.read()


# ---------------------------------------------------------------------------------------------


class E2E:
    def __init__(self, args):
        self.args = args
        self.api = Api(os.environ["KUBECONFIG"])
        self.t_start = time.time()

    def helm(self, *args, timeout=600):
        return run(self.args.helm, "-n", NS, *args, timeout=timeout)

    def token(self):
        secret = kjson("get", "secret", f"{RELEASE}-token")
        return base64.b64decode(secret["data"]["token"]).decode()

    def statuses(self):
        out = {}
        for pod in self.api.server_pods():
            ip = pod["status"].get("podIP")
            if not ip or pod["metadata"].get("deletionTimestamp"):
                continue
            try:
                out[pod["metadata"]["name"]] = status_of(f"{ip}:7070", self.tok)
            except Exception:  # noqa: BLE001
                out[pod["metadata"]["name"]] = None
        return out

    def cluster(self):
        return kjson("get", "bullycluster", RELEASE)

    def settled(self, want_ready=3):
        """Three Ready servers, one labelled coordinator whose own status says so, the
        BullyCluster status agreeing. Returns (coordinator pod, term)."""
        pods = self.api.server_pods()
        if len(pods) != want_ready or not all(ready(p) for p in pods):
            return None
        if any(p["metadata"].get("deletionTimestamp") for p in pods):
            return None
        coords = labelled_coordinators(pods)
        if len(coords) != 1:
            return None
        st = self.statuses()
        claim = st.get(coords[0])
        if not claim or claim.get("role") != "coordinator":
            return None
        if any(s is None or (n != coords[0] and s.get("role") == "coordinator") for n, s in st.items()):
            return None
        status = self.cluster().get("status", {})
        if status.get("coordinator") != coords[0] or status.get("ready") != f"{want_ready}/{want_ready}":
            return None
        if status.get("term") != claim.get("term"):
            return None
        return coords[0], claim.get("term")

    def warnings(self, reason):
        events = kjson("get", "events")["items"]
        return [e for e in events if e.get("reason") == reason]

    def client_job(self, suffix):
        """A copy of the chart's client Job under a new name; waits for it to complete."""
        hooks = run(self.args.helm, "-n", NS, "get", "hooks", RELEASE)
        text = run("kubectl", "create", "--dry-run=client", "-o", "json", "-f", "-", input=hooks)
        docs, pos, decoder = [], 0, json.JSONDecoder()
        while text[pos:].strip():  # one JSON document per object, concatenated
            doc, end = decoder.raw_decode(text[pos:].lstrip())
            pos = len(text) - len(text[pos:].lstrip()) + end
            docs.extend(doc.get("items", [doc]))
        job = next(d for d in docs if d["kind"] == "Job")
        name = f"{RELEASE}-client-{suffix}"
        labels = {k: v for k, v in job["metadata"].get("labels", {}).items()}
        tpl = job["spec"]["template"]
        for k in ("controller-uid", "job-name"):
            tpl["metadata"].get("labels", {}).pop(k, None)
        new = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": {**labels, "bully-e2e": "job"}},
            "spec": {"backoffLimit": 0, "template": tpl},
        }
        kubectl("apply", "-f", "-", input=json.dumps(new))
        t0 = time.time()
        poll(f"job {name} to complete", 120,
             lambda: (kjson("get", "job", name).get("status", {}).get("succeeded") or 0) >= 1
             or self._job_failed(name), 0.5)
        check(not self._job_failed(name), f"client Job {name} completed in {time.time() - t0:.1f} s: "
              + kubectl("logs", f"job/{name}").strip())

    def _job_failed(self, name):
        return (kjson("get", "job", name).get("status", {}).get("failed") or 0) > 0

    # -- steps ---------------------------------------------------------------------------------

    def install(self):
        log(f"1. helm install {RELEASE} (namespace {NS})")
        t0 = time.time()
        self.helm("install", RELEASE, self.args.chart, "-f", self.args.values, "--wait", "--timeout", "5m")
        times["install --wait"] = time.time() - t0
        self.tok = self.token()
        coord, term = poll("a settled cluster after install", 60, self.settled, 0.2)
        times["install -> settled"] = time.time() - t0
        pods = self.api.server_pods()
        check(len(pods) == 3 and all(ready(p) for p in pods), "three server pods Running and Ready")
        check(labelled_coordinators(pods) == [coord], f"the controller labelled the coordinator {coord}")
        print(kubectl("get", "bullyclusters"), end="")
        check(term == 1, f"a fresh install claimed exactly one term (term {term})")
        poll("a CoordinatorChanged event", 30, lambda: self.warnings("CoordinatorChanged"), 0.5)
        log("ok: an Event records the election: " + self.warnings("CoordinatorChanged")[0].get("message", ""))
        check(not self.warnings("ConflictingCoordinators"), "no ConflictingCoordinators warning")
        terms = {n: s.get("term") for n, s in self.statuses().items() if s and s.get("term")}
        check(set(terms.values()) == {1}, f"only term 1 ever held: {terms}")

    def helm_test(self):
        log("2. helm test and the client Job")
        t0 = time.time()
        self.helm("test", RELEASE, "--timeout", "3m")
        check(True, f"helm test passed in {time.time() - t0:.1f} s")
        # The chart's client Job is a post-install hook: `helm install` succeeded only once it
        # had completed (and then it was removed). Run its manifest once more to see it work.
        check(not kubectl("get", "job", f"{RELEASE}-client", "--ignore-not-found", "-o", "name").strip(),
              "the chart's client Job completed during helm install (hook-succeeded removed it)")
        self.client_job("2")

    def delete_coordinator(self, label, force):
        coord, term = poll("a settled cluster", 120, self.settled, 0.2)
        old_ip = next(p["status"]["podIP"] for p in self.api.server_pods() if p["metadata"]["name"] == coord)
        svc_ip = kjson("get", "service", RELEASE)["spec"]["clusterIP"]
        log(f"{label}: kubectl delete pod {coord}{' --grace-period=0 --force' if force else ''} (term {term})")
        survivors = {p["metadata"]["name"]: p["status"]["podIP"] for p in self.api.server_pods()
                     if p["metadata"]["name"] != coord}
        seen = {}

        # One thread per observation, each polling as fast as its source answers: a request to a
        # pod that is gone can take its whole timeout, and must not delay the other two.
        def elected():
            for ip in survivors.values():
                s = status_of(f"{ip}:7070", self.tok, 0.3)
                if s.get("role") == "coordinator" and (s.get("term") or 0) > term:
                    return True

        def labelled():
            return [c for c in labelled_coordinators(self.api.server_pods()) if c != coord]

        def serving():
            s = status_of(f"{svc_ip}:7070", self.tok, 0.3)
            return s.get("role") == "coordinator" and not s.get("client_addr", "").startswith(old_ip + ":")

        def watch(name, fn):
            while time.time() < t0 + 60:
                try:
                    if fn():
                        seen[name] = time.time() - t0
                        return
                except Exception:  # noqa: BLE001
                    pass
                time.sleep(0.02)

        threads = [threading.Thread(target=watch, args=(n, f)) for n, f in
                   (("elected", elected), ("labelled", labelled), ("serving", serving))]
        t0 = time.time()
        # What `kubectl delete pod` (`--grace-period=0 --force`) sends, without a kubectl
        # process starting in between, so that the times start at the request.
        self.api.delete_pod(coord, 0 if force else None)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elected, labelled, serving = seen.get("elected"), seen.get("labelled"), seen.get("serving")
        check(elected is not None, f"a new coordinator was elected {elected:.2f} s after the delete"
              if elected else "a new coordinator was elected")
        check(labelled is not None, f"the controller moved the label {labelled:.2f} s after the delete"
              if labelled else "the controller moved the label")
        check(serving is not None, f"the client Service served again {serving:.2f} s after the delete"
              if serving else "the client Service served again")
        times[f"{label}: delete -> new coordinator elected"] = elected
        times[f"{label}: delete -> label moved"] = labelled
        times[f"{label}: delete -> client Service serving"] = serving
        new_coord, new_term = poll("the pod recreated and 3/3 again", 180, self.settled, 0.2)
        times[f"{label}: delete -> 3/3 Ready again"] = time.time() - t0
        check(new_term > term, f"{new_coord} coordinator with term {new_term}; "
              f"{coord} recreated and rejoined (3/3) {time.time() - t0:.1f} s after the delete")
        status = self.cluster()["status"]
        check(status.get("coordinator") == new_coord and status.get("term") == new_term,
              f"BullyCluster status: {status.get('coordinator')} term {status.get('term')} {status.get('ready')}")
        self.client_job(label.split(".")[0])
        failed = self.workload.failures_between(t0, time.time())
        check(not failed, f"zero failed client commands across the delete ({failed})")

    def upgrade(self):
        log("5. helm upgrade rolling every server pod")
        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.api.server_pods()}
        t0 = time.time()
        self.helm("upgrade", RELEASE, self.args.chart, "-f", self.args.values, "--wait", "--timeout", "5m",
                  "--set-string", f"server.podAnnotations.e2e/rolled={int(t0)}")
        poll("a settled cluster after the upgrade", 120, self.settled, 0.2)
        end = time.time()
        after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.api.server_pods()}
        check(all(before[n] != after.get(n) for n in before), "every server pod was replaced")
        times["upgrade: total (helm upgrade --wait until settled)"] = end - t0
        times["upgrade: longest stall (no acknowledged command)"] = self.workload.longest_stall(t0, end)
        failed = self.workload.failures_between(t0, end)
        check(not failed, f"zero failed client commands across the rolling upgrade ({failed})")

    def controller_failover(self):
        log("6. the leading controller pod deleted during a coordinator failover")
        sel = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=controller"
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{RELEASE}-controller"
        duration = 10  # controller.leaderElection.leaseDurationSeconds, the chart's default

        def live_controllers():
            return [p for p in kjson("get", "pods", "-l", sel)["items"]
                    if not p["metadata"].get("deletionTimestamp")]

        def all_ready():
            pods = live_controllers()
            return pods if len(pods) == 2 and all(ready(p) for p in pods) else None

        pods = poll("both controller replicas Ready", 120, all_ready, 0.5)
        leader = poll("a controller holding the Lease", 60,
                      lambda: self.api.get(lease_path)["spec"].get("holderIdentity"), 0.2)
        check(leader in {p["metadata"]["name"] for p in pods},
              f"two controller replicas; {leader} holds the Lease")
        coord, term = poll("a settled cluster", 60, self.settled, 0.2)
        t0 = time.time()
        # Both at once: the leader's graceful stop releases the Lease; the coordinator hands off.
        self.api.delete_pod(leader)
        self.api.delete_pod(coord)

        def moved():
            labelled = labelled_coordinators(self.api.server_pods())
            return labelled and all(c != coord for c in labelled)

        poll("the label on the new coordinator", duration + 30, moved, 0.05)
        moved_after = time.time() - t0
        times["controller leader + coordinator deleted -> label moved"] = moved_after
        check(moved_after <= duration + 5, f"the label moved {moved_after:.2f} s after deleting the "
              f"leading controller and the coordinator (bound: the {duration} s lease + 5 s)")
        new_leader = self.api.get(lease_path)["spec"].get("holderIdentity")
        check(new_leader and new_leader != leader, f"{new_leader} took over the Lease from {leader}")
        new_coord, new_term = poll("the pods recreated and 3/3 again", 180, self.settled, 0.2)
        poll("both controller replicas Ready again", 180, all_ready, 0.5)
        times["controller leader deleted -> 2 replicas Ready again"] = time.time() - t0
        status = self.cluster()["status"]
        check(new_term > term and status.get("coordinator") == new_coord and status.get("term") == new_term,
              f"the label and the status still right ({new_coord}, term {new_term}, "
              f"reconciled by {status.get('reconciledBy')})")
        failed = self.workload.failures_between(t0, time.time())
        check(not failed, f"zero failed client commands across it ({failed})")

    def exactly_once(self):
        log("7. every acknowledged command exactly once")
        issued, acked, failed = self.workload.stop()
        log(f"workload: {len(issued)} issued, {len(acked)} acknowledged, {len(failed)} failed")
        check(len(acked) > 0, "the workload made progress")
        values = [r["outcome"].get("value") for _, r in acked.values()]
        check(len(values) == len(set(values)), "every acknowledged increment saw a distinct counter value")
        # Replay every issued id: an acknowledged one must come back as a duplicate with the
        # result it was acknowledged with (it is in the store, and is not applied again); one
        # never acknowledged is applied now if it was not before. Then the counter must equal
        # the number of distinct ids: none applied twice, none lost.
        replay = client_pod("e2e-replay", self.client_addr, self.args.image, REPLAY_SCRIPT + "\nsleep 3600\n")
        replay["spec"]["containers"][0]["command"] = ["sh", "-c", "sleep 3600"]
        kubectl("apply", "-f", "-", input=json.dumps(replay))
        poll("the replay pod", 120, lambda: ready(kjson("get", "pod", "e2e-replay")), 0.5)
        out = kubectl("exec", "-i", "e2e-replay", "--", "sh", "-c", REPLAY_SCRIPT,
                      input="".join(i + "\n" for i in issued), timeout=1200)
        bad = []
        counter = None
        for line in out.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "replay":
                cid, rc, body = parts[1], parts[2], parts[3] if len(parts) > 3 else ""
                if rc != "0":
                    bad.append(f"replay of {cid} failed: {body}")
                    continue
                r = json.loads(body)
                if cid in acked:
                    a = acked[cid][1]
                    if not r.get("duplicate") or (r["seq"], r["term"], r["outcome"]) != (a["seq"], a["term"], a["outcome"]):
                        bad.append(f"{cid} acknowledged as {a} but replayed as {r}")
            elif parts[0] == "counter":
                counter = json.loads(line.split(" ", 2)[2])
        check(not bad, f"every acknowledged command is in the store, once ({len(acked)} replayed as duplicates)"
              + ("" if not bad else ": " + "; ".join(bad[:10])))
        value = counter["outcome"].get("value") if counter else None
        check(value == len(set(issued)), f"counter = {value} = the number of issued commands ({len(set(issued))}): "
              "none applied twice")
        # The test's own pods only sleep by now: no grace period needed.
        kubectl("delete", "pod", "-l", "bully-e2e=workload", "--grace-period=0", "--force")
        kubectl("delete", "job", "-l", "bully-e2e=job")

    def uninstall(self):
        log("helm uninstall")
        t0 = time.time()
        self.helm("uninstall", RELEASE, "--wait", "--timeout", "3m")

        def gone():
            out = kubectl("get", "all,secrets,configmaps,serviceaccounts,roles,rolebindings,networkpolicies,"
                          "poddisruptionbudgets,bullyclusters,jobs,pvc", "-o", "name", check_rc=False)
            left = [line for line in out.split() if not line.startswith(("configmap/kube-root-ca", "serviceaccount/default",
                                                                         "secret/default-token"))]
            return not left or None

        poll("every object of the release gone", 120, gone, 1)
        times["uninstall -> nothing left"] = time.time() - t0
        check(True, "helm uninstall left no project object in the namespace (the CRD stays, as Helm keeps crds/)")

    def main(self):
        run("kubectl", "create", "namespace", NS)
        self.install()
        self.client_addr = f"{RELEASE}.{NS}.svc.cluster.local:7070"
        self.workload = Workload(self.args.image, self.client_addr)
        self.helm_test()
        self.delete_coordinator("3. graceful delete", force=False)
        self.delete_coordinator("4. force delete", force=True)
        self.upgrade()
        self.controller_failover()
        self.exactly_once()
        self.uninstall()
        run("kubectl", "delete", "namespace", NS, "--wait=false")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--helm", required=True)
    p.add_argument("--chart", required=True)
    p.add_argument("--values", required=True)
    p.add_argument("--image", required=True)
    args = p.parse_args()
    e2e = E2E(args)
    status = 0
    try:
        e2e.main()
    except Failed as e:
        log(f"FAIL: {e}")
        status = 1
    except Exception as e:  # noqa: BLE001 - a bug in the test still prints the times so far
        log(f"FAIL: {type(e).__name__}: {e}")
        status = 1
    log("observed times (s):")
    for k, v in times.items():
        print(f"  {k:<55} {v:7.2f}" if v is not None else f"  {k:<55}       -")
    if status == 0:
        log(f"PASS in {time.time() - e2e.t_start:.0f} s")
    sys.exit(status)


if __name__ == "__main__":
    main()
