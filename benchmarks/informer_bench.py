"""What keeping the Kubernetes cache current costs the collector's event loop (issue 4).

The informers run in threads of the collector's process, and a thread parsing a list page or a
watch event holds the GIL: while it does, the event loop reading the UDP sockets waits. This
measures how long it waits (the loop's lag: how late a 1 ms timer fires) and the process CPU
spent, in the three situations a production collector meets:

  sync     the first list of every kind at start (100k pods, 5k nodes, 10k services, 20k
           ReplicaSets by default, the shapes of benchmarks.enrich_bench)
  relist   the pods watch gets 410 Gone (etcd compacted): all pods are listed again
  churn    pod updates streaming in on the watch (a rolling deployment), --churn per second

The API server is the tests' fake one (tests/support/fake_kube.py: the real list/watch wire
protocol, paged lists), run in a process of its own so that serving does not take this
process's GIL. The loop is uvloop, as `flowscope run`'s default. What the numbers mean for UDP:
the kernel keeps receiving while the loop waits (up to --rcvbuf, 32 MiB by default: over a
second of a 450k flows/s load), so a lag of milliseconds costs nothing but the CPU it took.

Each phase also says how many MB of list answers the API server sent (their bodies, compressed when
the lists ask for gzip) and the peak RSS of this process (VmHWM, reset at each phase's start).

    python -m benchmarks.informer_bench [--pods N] [--churn N] [--churn-seconds S] [--list-gzip BOOL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.util import popen_child

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------- the API server

def serve(a: argparse.Namespace) -> None:
    """Child process: the fake API server with the cluster loaded; commands on stdin, one per
    line ("expire KIND", "churn RATE SECONDS", "quit"), each answered "done" on stdout."""
    import random

    from benchmarks import enrich_bench as E
    from tests.support.fake_kube import FakeKube

    kube = FakeKube().start()
    pods = E.pods(a.pods, a.nodes, a.replicasets)
    if a.full_pods:
        pods = (full_pod(p, i) for i, p in enumerate(pods))
    for kind, objs in (("nodes", E.nodes(a.nodes)), ("replicasets", E.replicasets(a.replicasets)),
                       ("services", E.services(a.services)), ("pods", pods)):
        for o in objs:
            kube.add(kind, o)
    path = kube.write_kubeconfig(Path(a.workdir) / "kubeconfig.json")
    print(path, flush=True)
    rng = random.Random(5)
    names = list(kube.objects["pods"].keys())
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "sent":   # the bytes of the answers' bodies so far
            with kube.cond:
                print(kube.sent_bytes, flush=True)
            continue
        if cmd[0] == "expire":
            kube.expire(cmd[1])
            # the fake server compacts up to the next revision; a real one compacts revisions it
            # has: one change brings the current revision there, so that the relist's
            # resourceVersion can be watched from (else the informer lists again and again)
            kube.modify(cmd[1], next(iter(kube.objects[cmd[1]].values())))
        elif cmd[0] == "churn":
            rate, secs = float(cmd[1]), float(cmd[2])
            t0 = time.monotonic()
            n = 0
            total = int(rate * secs)
            while n < total:
                due = min(total, int((time.monotonic() - t0) * rate) + 1)
                while n < due:
                    pod = kube.objects["pods"][names[rng.randrange(len(names))]]
                    pod = json.loads(json.dumps(pod))
                    pod["metadata"].setdefault("labels", {})["pod-template-hash"] = f"h{n % 97}"
                    kube.modify("pods", pod)
                    n += 1
                time.sleep(0.001)
        print("done", flush=True)
    kube.stop()


def full_pod(p: dict[str, Any], i: int) -> dict[str, Any]:
    """`p` (enrich_bench's pod: only what the index reads) with the rest a real Deployment's pod
    has in a list (labels, annotations, managedFields, a container's spec and status, projected
    token volume, conditions), about 5 KB of JSON; the identifiers a real cluster makes at random
    (image digest, container ID, volume suffix, hashes) are random hex here too, so it compresses
    as real lists do, not better."""
    import hashlib

    h = hashlib.sha256(str(i).encode()).hexdigest()
    h2 = hashlib.sha256(h.encode()).hexdigest()
    meta, name = p["metadata"], p["metadata"]["name"]
    app = name.rsplit("-", 2)[0]
    ts = f"2024-05-01T10:00:0{i % 10}Z"
    meta["labels"] = {"app": app, "pod-template-hash": h[:10], "app.kubernetes.io/part-of": meta["namespace"]}
    meta["annotations"] = {
        "k8s.ovn.org/pod-networks": json.dumps({"default": {
            "ip_addresses": [p["status"]["podIP"] + "/23"], "mac_address": "0a:58:" + ":".join(h[k:k + 2] for k in
                                                                                          range(0, 8, 2)),
            "gateway_ips": ["10.128.0.1"], "routes": [{"dest": "10.128.0.0/14", "nextHop": "10.128.0.1"}],
            "ip_address": p["status"]["podIP"] + "/23", "gateway_ip": "10.128.0.1", "role": "primary"}}),
        "openshift.io/scc": "restricted-v2", "seccomp.security.alpha.kubernetes.io/pod": "runtime/default"}
    meta["resourceVersion"] = str(100000 + i)
    meta["generateName"] = name[:-6]
    meta["managedFields"] = [
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": ts,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {
             ".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {".": {}, f'k:{{"uid":"{h2[:8]}-'
             f'{h2[8:12]}-{h2[12:16]}-{h2[16:20]}-{h2[20:32]}"}}': {}}}, "f:spec": {"f:containers": {
                 'k:{"name":"app"}': {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": ts, "fieldsType": "FieldsV1",
         "subresource": "status", "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {},
                                                            "f:hostIP": {}, "f:phase": {}, "f:podIP": {},
                                                            "f:podIPs": {}, "f:startTime": {}}}}]
    vol = f"kube-api-access-{h[10:15]}"
    p["spec"].update({
        "containers": [{
            "name": "app", "image": f"quay.io/{meta['namespace']}/{app}@sha256:{h2}",
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
            "env": [{"name": f"SETTING_{k}", "value": f"value-{k}-{h[k:k + 6]}"} for k in range(8)],
            "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10},
            "volumeMounts": [{"name": vol, "readOnly": True,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True, "runAsUser": 1000680000},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"}],
        "volumes": [{"name": vol, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                           "fieldPath": "metadata.namespace"}}]}}]}}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "serviceAccount": "default", "schedulerName": "default-scheduler",
        "securityContext": {"fsGroup": 1000680000, "seLinuxOptions": {"level": "s0:c26,c5"},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "tolerations": [{"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300} for t in ("not-ready", "unreachable")],
        "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority"})
    p["status"].update({
        "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
                       for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                 "PodScheduled")],
        "containerStatuses": [{"name": "app", "state": {"running": {"startedAt": ts}}, "lastState": {},
                               "ready": True, "restartCount": 0, "started": True,
                               "image": f"quay.io/{meta['namespace']}/{app}@sha256:{h2}",
                               "imageID": f"quay.io/{meta['namespace']}/{app}@sha256:{h2}",
                               "containerID": f"cri-o://{h}"}],
        "qosClass": "Burstable", "hostIPs": [{"ip": p["status"]["hostIP"]}]})
    return p


# ------------------------------------------------------------------------------ the measurement

TICK = 0.005   # the probe's timer (s): fine enough for the stalls that matter, cheap enough not to be one


class Lag:
    """A timer on the loop: how late each firing is; and the CPU of the loop's thread and of the
    others (the informers'), per phase."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(TICK)
            self.samples.append(loop.time() - t - TICK)

    def start(self) -> None:
        self._cpu0 = _cpu()
        _reset_peak_rss()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def phase(self) -> tuple[list[float], float, float, float]:
        """The samples since the last call, the CPU seconds of the loop's thread and of the
        other threads since then, and the peak RSS (MiB) meanwhile."""
        s, self.samples = self.samples, []
        (m0, r0), (main, rest) = self._cpu0, _cpu()
        self._cpu0 = (main, rest)
        peak = _peak_rss_kib() / 1024
        _reset_peak_rss()
        return s, main - m0, rest - r0, peak


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


def _reset_peak_rss() -> None:
    """Start VmHWM over from the current RSS (Linux 4.0+; ignored where refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _cpu() -> tuple[float, float]:
    """CPU seconds of this (the main, event loop) thread and of the process's other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    main = rest = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue   # a thread that ended meanwhile
        fields = st[st.rindex(")") + 2:].split()
        t = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == os.getpid():
            main += t
        else:
            rest += t
    return main, rest


def _row(name: str, wall: float, sent_mb: float, samples: list[float], loop_cpu: float, other_cpu: float,
         peak_mib: float, events: int = 0) -> str:
    s = sorted(samples) or [0.0]
    p99 = s[min(len(s) - 1, int(0.99 * len(s)))]
    per = f"{1e6 * (loop_cpu + other_cpu) / events:.0f}" if events else "-"
    return (f"| {name} | {wall:.1f} | {loop_cpu:.2f} | {other_cpu:.2f} | {per} | {1000 * p99:.1f} | "
            f"{1000 * s[-1]:.1f} | {sum(1 for x in s if x > 0.05)} | {sent_mb:.1f} | {peak_mib:.0f} |")


async def measure(a: argparse.Namespace, kubeconfig: str, child: subprocess.Popen[str]) -> list[str]:
    import enrich
    from enrich.config import EnrichConfig

    def command(cmd: str) -> None:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(cmd + "\n")
        child.stdin.flush()

    async def done() -> None:
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        assert line.strip() == "done", line

    sent_at = [0]

    async def sent() -> float:
        """MB of answers the API server sent since the last call."""
        assert child.stdout is not None
        command("sent")
        n = int(await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline))
        mb, sent_at[0] = (n - sent_at[0]) / 1e6, n
        return mb

    lag = Lag()
    lag.start()
    await asyncio.sleep(0.5)
    lag.phase()
    await sent()
    rows = []
    e = enrich.Enricher(EnrichConfig(kubeconfig=kubeconfig, list_gzip=a.list_gzip))
    t0 = time.monotonic()
    e.start()
    while not e.ready:
        await asyncio.sleep(0.01)
    rows.append(_row(f"sync: first list of {a.pods:,} pods, {a.nodes:,} nodes, {a.services:,} services, "
                     f"{a.replicasets:,} ReplicaSets", time.monotonic() - t0, await sent(), *lag.phase()))
    await asyncio.sleep(2.0)
    rows.append(_row("idle, watches open", 2.0, await sent(), *lag.phase()))

    def relists() -> int:
        return int(e.stats()["kinds"]["pods"]["relists"])

    before = relists()
    t0 = time.monotonic()
    command("expire pods")
    await done()
    while relists() == before or e.stats()["kinds"]["pods"]["state"] != "watching":
        await asyncio.sleep(0.01)
    rows.append(_row(f"relist: pods watch 410 Gone, {a.pods:,} pods listed again", time.monotonic() - t0,
                     await sent(), *lag.phase()))

    def events() -> int:
        return sum(e.stats()["kinds"]["pods"]["events"].values())

    t0 = time.monotonic()
    events0 = events()
    command(f"churn {a.churn} {a.churn_seconds}")
    await done()
    await asyncio.sleep(0.5)   # the last events in flight
    n = events() - events0
    rows.append(_row(f"churn: {a.churn:,} pod updates/s for {a.churn_seconds:.0f} s ({n:,} events)",
                     time.monotonic() - t0, await sent(), *lag.phase(), events=n))
    e.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=5_000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--replicasets", type=int, default=20_000)
    ap.add_argument("--churn", type=int, default=1000, help="pod updates a second in the churn phase")
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--full-pods", action="store_true",
                    help="pods as a real list has them (~5 KB of JSON each, see full_pod), not only the fields "
                    "the index reads (~0.5 KB)")
    ap.add_argument("--list-gzip", type=lambda v: v.lower() in ("1", "true", "yes", "on"), default=True,
                    metavar="BOOL", help="lists ask for gzip (enrich.list_gzip) [default: true]")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        child = popen_child(
            [sys.executable, "-m", "benchmarks.informer_bench", "--serve", "--workdir", tmp,
             "--pods", str(a.pods), "--nodes", str(a.nodes), "--services", str(a.services),
             "--replicasets", str(a.replicasets), *(["--full-pods"] if a.full_pods else [])],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            kubeconfig = child.stdout.readline().strip()
            if not kubeconfig:
                raise SystemExit("informer_bench: the fake API server did not start")
            import uvloop

            rows = uvloop.run(measure(a, kubeconfig, child))
        finally:
            if child.stdin is not None:
                try:
                    child.stdin.write("quit\n")
                    child.stdin.flush()
                except OSError:
                    pass
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    print(f"machine: {os.cpu_count()} CPUs; event loop uvloop; the API server in another process; "
          f"lists ask for gzip: {a.list_gzip}")
    print("| phase | wall s | CPU s, loop thread | CPU s, other threads | CPU us per event | loop lag p99 ms | "
          "loop lag max ms | lags > 50 ms | MB sent | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
