"""Answers of a real API server the informers had not met, against the fake API server
(tests/support/fake_kube.py) speaking the real list/watch protocol.

What is checked comes from k8s.io/apiserver and client-go, not from enrich/informer.py:
- the watch cache sends a BOOKMARK 2 s before a watch's timeoutSeconds (cacheWatcher
  nextBookmarkTime) at its current, cluster-wide resourceVersion, as an empty object of the
  watched type (metadata.creationTimestamp null), then ends the stream cleanly at the timeout: a
  quiet kind resumes from that newer resourceVersion; without bookmarks the stream just ends;
  neither is a failure nor a reason to list again;
- an error after the watch opened (etcd timing out) comes as an ERROR event whose Status is a
  500 InternalError (transformErrorToEvent): client-go's reflector retries such a watch from the
  same resourceVersion, and lists again only when it keeps failing;
- a resourceVersion refused before the stream opens comes as HTTP 410 Expired (not an ERROR
  event): as the in-stream 410, a relist at once, not an error retried from the same version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import enrich
from tests.support.enricher import running_enricher
from tests.support.fake_kube import FakeKube, node, pod, replicaset, wait_for
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_informer import flow, seed
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture


def _watch_rvs(fake: FakeKube, kind: str) -> list[int]:
    with fake.cond:
        return [int(r["query"]["resourceVersion"]) for r in fake.requests if r["kind"] == kind and r["verb"] == "watch"]


@pytest.fixture
def seeded(fake_kube: FakeKube) -> Iterator[FakeKube]:  # noqa: F811
    yield seed(fake_kube)


@pytest.mark.parametrize("before", [1.0, None], ids=["pre-timeout-bookmark", "no-bookmark"])
def test_a_quiet_watch_ended_by_its_timeout_resumes_without_failure_or_list(
        seeded: FakeKube, kubeconfig: str, before: float | None) -> None:  # noqa: F811
    seeded.bookmark_before_timeout = before   # (2 s in a real API server; 1 s of these short watches)
    with running_enricher(kubeconfig, watch_timeout_seconds=4) as e:   # (each watch: 2 to 4 s)
        assert e.wait_ready(10)
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) >= 1, what="the first pods watch")
        listed = _watch_rvs(seeded, "pods")[0]
        # another kind moves the cluster's resourceVersion on; the pods stay as they are
        seeded.add("nodes", node("node-c", internal=["10.0.0.3"]))
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) >= 3, timeout=15, what="two pods watches ended by timeout")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {} and st["relists"] == 0, st
        assert seeded.count(kind="pods", verb="list") == 1
        rvs = _watch_rvs(seeded, "pods")
        if before is None:
            assert rvs[:3] == [listed] * 3
            assert st["events"]["BOOKMARK"] == 0
        else:
            # resumed from the bookmark's resourceVersion, past the node added after the list
            assert st["events"]["BOOKMARK"] >= 2
            assert rvs[1] > listed and rvs[2] >= rvs[1], rvs
        # the bookmark (an empty Pod) indexed nothing, and the watch still delivers
        assert e.stats()["index"]["pods"] == 1
        seeded.add("pods", pod("late", "shop", ips=["10.244.0.40"]))
        wait_for(lambda: flow(e, "10.244.0.40", "").get("SrcK8S_Name") == "late", what="an event after the timeouts")


def test_an_error_500_event_first_resumes_from_the_same_resource_version(seeded: FakeKube,
                                                                          kubeconfig: str) -> None:  # noqa: F811
    seeded.fail("pods", "watch", "error500_event", times=2)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) >= 3, what="the watch retried past two ERROR 500 events")
        rvs = _watch_rvs(seeded, "pods")
        assert rvs[:3] == [rvs[0]] * 3, rvs    # retried from the list's resourceVersion
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {"server_error": 2} and st["relists"] == 0, st
        assert seeded.count(kind="pods", verb="list") == 1
        seeded.add("pods", pod("after", "shop", ips=["10.244.0.41"]))
        wait_for(lambda: flow(e, "10.244.0.41", "").get("SrcK8S_Name") == "after", what="the watch working again")
        assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"


@pytest.mark.parametrize("fault", ["gone_http", "compacted_500_event", "too_old_500_http"])
def test_an_expired_resource_version_relists_at_once(seeded: FakeKube, kubeconfig: str,
                                                     fault: str) -> None:  # noqa: F811
    """A resourceVersion refused before the stream opens comes as HTTP 410 Expired. Older API
    servers said the same with a 500: etcd3's "required revision has been compacted" wrapped in
    an InternalError event (before interpretWatchError made it 410 Expired), the watch cache's
    "too old resource version: RV (OLDEST)" as an HTTP 500 (kubernetes#14384); resuming from that
    resourceVersion only meets it again (five times, with growing waits, before the fallback
    list). Each is a relist at once, and no failure counted."""
    seeded.fail("pods", "watch", fault, times=1)
    with running_enricher(kubeconfig, backoff_initial_seconds=5.0, backoff_max_seconds=5.0) as e:
        assert e.wait_ready(10)
        # at once: a relist is not a failure to back off from (5 s here)
        wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] == 1, timeout=3, what=f"the relist after {fault}")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {}, st
        seeded.add("pods", pod("after", "shop", ips=["10.244.0.42"]))
        wait_for(lambda: flow(e, "10.244.0.42", "").get("SrcK8S_Name") == "after", timeout=3,
                 what="the watch from the relist")


def test_a_throttled_watch_waits_out_retry_after_and_resumes_without_a_list(
        seeded: FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """API Priority and Fairness refuses a watch with 429 and Retry-After: client-go's reflector
    backs off and watches again (IsTooManyRequests: no relist), however often it comes: a list of
    every pod would only add to the load that got the watch refused."""
    from enrich.informer import WATCH_FAILURES_BEFORE_RELIST
    from tests.test_enrich_informer import _record_sleeps

    asked = _record_sleeps(monkeypatch, "pods")
    seeded.fail("pods", "watch", "throttle", times=WATCH_FAILURES_BEFORE_RELIST)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) > WATCH_FAILURES_BEFORE_RELIST, timeout=20,
                 what="the watch past the 429s")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {"http_429": WATCH_FAILURES_BEFORE_RELIST} and st["relists"] == 0, st
        assert seeded.count(kind="pods", verb="list") == 1
        assert asked[:WATCH_FAILURES_BEFORE_RELIST] == [2.0] * WATCH_FAILURES_BEFORE_RELIST   # Retry-After: 2
        rvs = _watch_rvs(seeded, "pods")
        assert rvs == [rvs[0]] * len(rvs), rvs


def _rotating_kubeconfig(fake: FakeKube, tmp_path: Path, source: str, token_path: Path) -> str:
    """A kubeconfig whose credentials come from a file something else rewrites: `tokenFile`
    (a projected ServiceAccount token the kubelet rotates), or an exec plugin printing it
    (ExecCredential without expirationTimestamp: cached until the API server refuses it)."""
    user: dict[str, Any]
    if source == "tokenFile":
        user = {"tokenFile": str(token_path)}
    else:
        script = ('printf \'{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential",'
                  f'"status":{{"token":"%s"}}}}\' "$(cat {token_path})"')
        user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "/bin/sh",
                         "args": ["-c", script], "interactiveMode": "Never"}}
    kc = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
          "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
          "users": [{"name": "fake", "user": user}],
          "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kc))
    return str(path)


@pytest.mark.parametrize("source", ["tokenFile", "exec"])
def test_credentials_the_api_server_stops_accepting_are_loaded_again(fake_kube: FakeKube, tmp_path: Path,  # noqa: F811
                                                                      source: str) -> None:
    """A bound token expires (the kubelet rotates the projected file well before; a token an exec
    plugin printed without an expiry is refused one day): the API server answers 401. client-go
    reads a kubeconfig's tokenFile again (at most a minute old) and runs the exec plugin again on a
    401; the informers kept the credentials loaded at start and were refused for good (the cache
    frozen, every request a 401, until a restart)."""
    token_path = tmp_path / "token"
    token_path.write_text("token-1")
    fake_kube.token = "token-1"
    seed(fake_kube)
    with running_enricher(_rotating_kubeconfig(fake_kube, tmp_path, source, token_path)) as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="the pods watch")
        # rotation: a new token in the file, and the API server no longer takes the old one
        token_path.write_text("token-2")
        fake_kube.token = "token-2"
        fake_kube.drop_watches("pods")        # the next request presents the credentials again
        fake_kube.add("pods", pod("after", "shop", ips=["10.244.0.43"]))
        wait_for(lambda: flow(e, "10.244.0.43", "").get("SrcK8S_Name") == "after", timeout=15,
                 what="the pods watch with the new token")
        assert e.stats()["kinds"]["pods"]["errors"].get("unauthorized", 0) >= 1


def test_a_rotated_token_file_is_read_again_before_the_old_token_is_refused(
        fake_kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The kubelet writes a projected token anew at 80 % of its life; the old one is still taken
    until it expires. client-go reads a kubeconfig's tokenFile again once its copy is a minute old
    (here 0.3 s), so the new token is in use before the old one is refused: no 401 at all."""
    monkeypatch.setattr(enrich, "TOKEN_FILE_MAX_AGE_SECONDS", 0.3)
    token_path = tmp_path / "token"
    token_path.write_text("token-1")
    fake_kube.token = "token-1"
    seed(fake_kube)
    with running_enricher(_rotating_kubeconfig(fake_kube, tmp_path, "tokenFile", token_path)) as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="the pods watch")
        token_path.write_text("token-2")      # rotated; both taken for a while
        fake_kube.token, fake_kube.old_tokens = "token-2", {"token-1"}
        time.sleep(0.4)                       # the copy read at start is now older than its max age
        with fake_kube.cond:
            taken = len(fake_kube.requests)
        fake_kube.drop_watches("pods")        # the resumed watch reads the file again first
        wait_for(lambda: any(r["kind"] == "pods" and r["verb"] == "watch" for r in fake_kube.requests[taken:]),
                 what="the resumed pods watch")
        with fake_kube.cond:
            resumed = [r for r in fake_kube.requests[taken:] if r["kind"] == "pods" and r["verb"] == "watch"]
        assert resumed[0]["token"] == "token-2", resumed
        fake_kube.old_tokens = set()          # the old token expires
        fake_kube.add("pods", pod("after", "shop", ips=["10.244.0.44"]))
        wait_for(lambda: flow(e, "10.244.0.44", "").get("SrcK8S_Name") == "after", what="the watch, unrefused")
        assert "unauthorized" not in e.stats()["kinds"]["pods"]["errors"]


def test_watches_ask_for_timeouts_spread_over_half_the_watch_timeout(seeded: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    """client-go's reflector asks each watch for a random timeoutSeconds (5 to 10 min) so that the
    watches of many clients, all reconnected at once after an API server restart, do not all end
    and re-watch in the same second every time again. The informers asked every watch for the
    same watch_timeout_seconds: a DaemonSet of collectors (four watches each) re-watched in
    lockstep. Each watch now asks between half of it and all of it (never longer: the read
    timeout that notices a dead connection is that plus the slack)."""
    with running_enricher(kubeconfig, watch_timeout_seconds=40) as e:
        assert e.wait_ready(10)
        wait_for(lambda: all(fake_watches(seeded, k) for k in ("pods", "nodes", "services", "replicasets")),
                 what="a watch of each kind")
        for _ in range(6):                    # more watches: each resumed one asks again
            wait_for(lambda: seeded.watchers["pods"] >= 1, what="an open pods watch")
            n = len(fake_watches(seeded, "pods"))
            seeded.drop_watches("pods")
            wait_for(lambda n=n: len(fake_watches(seeded, "pods")) > n, what="the resumed pods watch")
        asked = [int(r["query"]["timeoutSeconds"]) for k in ("pods", "nodes", "services", "replicasets")
                 for r in fake_watches(seeded, k)]
        assert all(20 <= t <= 40 for t in asked), asked
        assert len(set(asked)) > 1, asked


def fake_watches(fake: FakeKube, kind: str) -> list[dict[str, Any]]:
    with fake.cond:
        return [r for r in fake.requests if r["kind"] == kind and r["verb"] == "watch"]


def _client_cert_kubeconfig(fake: FakeKube, path: Path, cert: Path, key: Path, inline: bool) -> str:
    """A kubeconfig whose user is a client certificate: inline (client-certificate-data), as
    cloud CLIs and cluster installers write it, rewritten in place when they renew it; or files
    (client-certificate, client-key), as a kubelet's, which the renewal rewrites."""
    import base64

    assert fake.ca_cert is not None
    user = ({"client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
             "client-key-data": base64.b64encode(key.read_bytes()).decode()} if inline else
            {"client-certificate": str(path.parent / "client.pem"), "client-key": str(path.parent / "client.key")})
    if not inline:
        (path.parent / "client.pem").write_bytes(cert.read_bytes())
        (path.parent / "client.key").write_bytes(key.read_bytes())
    kc = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
          "clusters": [{"name": "fake", "cluster": {"server": fake.url, "certificate-authority": str(fake.ca_cert)}}],
          "users": [{"name": "fake", "user": user}],
          "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}
    path.write_text(json.dumps(kc))
    return str(path)


@pytest.mark.parametrize("inline", [True, False], ids=["certificate-data", "certificate-file"])
def test_a_renewed_client_certificate_is_used_once_the_old_one_is_refused(tmp_path: Path, inline: bool) -> None:
    """A kubeconfig user authenticated by a client certificate: the API server authenticates the
    connection's certificate, and answers 401 once it expired. The credentials loaded again on
    that 401 hold the renewed certificate, but every ApiClient kept the connection pool it was
    made with: the old certificate's file (inline data goes to a file per content), and kept-alive
    connections that present the old certificate whatever the file now holds. Refused for good.
    client-go closes its connections when the certificate changes; so must the reload."""
    from tests.support.fake_kube import running_fake_kube
    from tests.support.tls import make_client_cert

    with running_fake_kube(tls_dir=tmp_path / "apiserver") as kube:
        seed(kube)
        kube.token = "no-token-is-used"
        old = make_client_cert(tmp_path / "apiserver", "flowscope-1")
        new = make_client_cert(tmp_path / "apiserver", "flowscope-2")
        kube.client_users = {"flowscope-1"}
        kc = _client_cert_kubeconfig(kube, tmp_path / "kubeconfig", *old, inline)
        # (short watches: each ends at its timeout, cleanly, and its connection goes back to the
        # pool for the next one, as every watch's does after watch_timeout_seconds)
        with running_enricher(kc, watch_timeout_seconds=2) as e:
            assert e.wait_ready(10), e.unsynced()
            assert {r["user"] for r in kube.requests} == {"flowscope-1"}
            wait_for(lambda: kube.watchers["pods"] >= 1, what="the pods watch")
            _client_cert_kubeconfig(kube, tmp_path / "kubeconfig", *new, inline)   # renewed in place
            kube.client_users = {"flowscope-2"}                                       # the old one expired
            watches = len(fake_watches(kube, "pods"))
            # (once the watch open before has ended: it was authenticated when it opened)
            wait_for(lambda: len(fake_watches(kube, "pods")) > watches, what="a pods watch after the renewal")
            kube.add("pods", pod("after", "shop", ips=["10.244.0.45"]))
            wait_for(lambda: flow(e, "10.244.0.45", "").get("SrcK8S_Name") == "after", timeout=15,
                     what="the pods watch with the renewed certificate")
            assert e.stats()["kinds"]["pods"]["errors"].get("unauthorized", 0) >= 1
            # every kind's requests carry it from then on (the ReplicaSets' own ApiClients too)
            watches = len(fake_watches(kube, "replicasets"))
            wait_for(lambda: len(fake_watches(kube, "replicasets")) > watches, what="a replicasets watch after it")
            kube.add("replicasets", replicaset("api-5f", "shop", owner=("Deployment", "api")))
            wait_for(lambda: e.stats()["index"]["replicasets"] >= 2, timeout=15,
                     what="the replicasets watch with the renewed certificate")


def test_api_server_connections_ask_for_tcp_keepalive(seeded: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    """A peer gone without a word (its node powered off, a balancer dropping idle flows
    silently) left a quiet watch reading until its read timeout (the watch's timeout plus the
    slack: up to 330 s) with the cache frozen. The connections ask the kernel for keepalive
    probes (enrich.KEEPALIVE_*: a dead one ends within a minute, an idle balancer's flow stays
    up). Checked on the socket of an open watch of each ApiClient (the ReplicaSets' are their
    own)."""
    import socket

    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        for kind in ("pods", "replicasets"):
            socks: list[Any] = []

            def open_watch(kind: str = kind, socks: list[Any] = socks) -> bool:
                resp = e._informers[kind]._resp
                conn = resp.connection if resp is not None else None
                if conn is not None and conn.sock is not None and seeded.watchers[kind] >= 1:
                    socks.append(conn.sock)
                return bool(socks)

            wait_for(open_watch, what=f"an open {kind} watch")
            sock = socks[0]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, kind
            idle, interval, probes = (sock.getsockopt(socket.IPPROTO_TCP, o)
                                      for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
            assert idle + interval * probes <= 60, (kind, idle, interval, probes)   # dead: noticed within a minute
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1, kind  # (urllib3's own, kept)
