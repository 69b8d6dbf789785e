"""The fake API server itself (tests/support/fake_kube.py): a client that goes away is no error
of the server, and is not printed (socketserver printed "Exception occurred during processing of
request" with a ConnectionResetError traceback when an informer dropped a kept-alive connection,
in tests that passed); any other exception in a request handler is printed and fails the test."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.fake_kube import TOKEN, FakeKube, pod, running_fake_kube, wait_for


def _request(port: int) -> socket.socket:
    """A connection that has sent a pods list request (kept alive, as urllib3 keeps it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /api/v1/pods HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
              "Accept: application/json\r\n\r\n".encode())
    return s


def _reset(s: socket.socket) -> None:
    """Close with a RST, as a client dropping a connection with data unread does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _read_answer(s: socket.socket) -> dict[str, Any]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int(next(ln.split(b":", 1)[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(body))


def _handlers_done(before: set[threading.Thread]) -> Callable[[], bool]:
    """True once the request threads started since `before` have all ended."""
    def done() -> bool:
        return not [t for t in threading.enumerate()
                    if t not in before and "process_request_thread" in t.name and t.is_alive()]
    return done


def test_a_client_that_goes_away_is_not_an_error(capfd: pytest.CaptureFixture[str]) -> None:
    before = set(threading.enumerate())
    with running_fake_kube() as fake:
        fake.add("pods", pod("web", ips=["10.244.0.5"]))
        # 1. reset after reading its answer, while the server waits for the next request on it
        s = _request(fake.port)
        assert [p["metadata"]["name"] for p in _read_answer(s)["items"]] == ["web"]
        _reset(s)
        # 2. reset while its answer is being made: the server writes to a connection gone
        reset, answer = threading.Event(), threading.Event()

        def hold(record: dict[str, Any]) -> None:
            if record["query"].get("limit") == "7":
                reset.wait(10)
                answer.set()

        fake.on_request = hold
        s = socket.create_connection(("127.0.0.1", fake.port), timeout=10)
        s.sendall(f"GET /api/v1/pods?limit=7 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        wait_for(lambda: fake.count(kind="pods", verb="list") == 2, what="the held request")
        _reset(s)
        reset.set()
        wait_for(answer.is_set, what="the held request answered")
        wait_for(_handlers_done(before), what="the server's request threads to end")
        assert fake.handler_errors == []
    err = capfd.readouterr().err
    assert "Exception occurred" not in err and "Traceback" not in err, err


def test_a_handler_that_raises_is_printed_and_fails_the_test(capfd: pytest.CaptureFixture[str]) -> None:
    before = set(threading.enumerate())
    fake: FakeKube | None = None

    def boom(record: dict[str, Any]) -> None:
        raise RuntimeError("a bug in the fake")

    with pytest.raises(AssertionError, match=r"(?s)request handlers raised 1 time\(s\).*RuntimeError: a bug in the fake"):
        with running_fake_kube() as fake:
            fake.on_request = boom
            s = _request(fake.port)
            assert s.recv(100) == b""       # the connection ends without an answer
            s.close()
            wait_for(_handlers_done(before), what="the server's request thread to end")
    assert fake is not None and len(fake.handler_errors) == 1
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request" in err and "RuntimeError: a bug in the fake" in err, err


@pytest.mark.parametrize("accept", ["gzip", "deflate, gzip", "", "identity", "gzip;q=0"])
def test_answers_are_compressed_when_asked_and_large_as_the_api_server_does(accept: str) -> None:
    """The API server compresses an answer with gzip when Accept-Encoding lists the token gzip
    and the answer is 128 KiB or more (streamed: chunked, no Content-Length); a smaller one, or
    one not asked so, goes as it is."""
    import zlib

    import urllib3

    asked = any(t.strip() == "gzip" for t in accept.split(","))
    with running_fake_kube() as fake:
        for i in range(400):
            fake.add("pods", pod(f"p{i}", "shop", ips=[f"10.244.{i // 200}.{i % 200 + 1}"]))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if accept:
            headers["Accept-Encoding"] = accept
        http = urllib3.PoolManager()
        try:
            for path, items, big in (("/api/v1/pods", 400, True), ("/api/v1/nodes", 0, False)):
                r = http.request("GET", fake.url + path, headers=headers, preload_content=False)
                body = r.read(decode_content=False)
                r.release_conn()
                compressed = asked and big
                assert r.headers.get("Content-Encoding") == ("gzip" if compressed else None), path
                assert (r.headers.get("Transfer-Encoding") == "chunked") == compressed, path
                doc = json.loads(zlib.decompress(body, 16 + zlib.MAX_WBITS) if compressed else body)
                assert len(doc["items"]) == items
                if compressed:
                    assert len(body) * 5 < len(json.dumps(doc))
            assert fake.gzipped == (1 if asked else 0)
        finally:
            http.clear()


def _watch_lines(fake: FakeKube, rv: int | str, *, timeout: int = 1, started: Callable[[], None] | None = None
                 ) -> list[dict[str, Any]]:
    """The events of one pods watch from resourceVersion `rv` (its server-side timeout ends it);
    `started` is called once the server has the watch open."""
    import urllib3

    http = urllib3.PoolManager()
    try:
        r = http.request("GET", f"{fake.url}/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds={timeout}",
                         headers={"Authorization": f"Bearer {TOKEN}"}, preload_content=False)
        assert r.status == 200
        if started is not None:
            started()
        body = r.read()
        r.release_conn()
    finally:
        http.clear()
    return [json.loads(line) for line in body.splitlines() if line]


def test_the_watch_cache_keeps_a_window_and_answers_410_before_it() -> None:
    """The fake keeps each kind's newest `watch_window` events only (a JSON copy each: a benchmark
    making 100k pods kept 100k), as the API server's watch cache keeps a window: a watch from a
    resourceVersion inside it replays the events after it; one from before the oldest event
    kept, 410 Gone (an ERROR event, as the watch cache sends it); other kinds keep their own."""
    with running_fake_kube() as fake:
        fake.watch_window = 5
        fake.add("nodes", {"metadata": {"name": "n1"}, "status": {"addresses": []}})
        node_rv = fake.rv
        first = fake.rv + 1
        for i in range(12):
            fake.add("pods", pod(f"p{i}", ips=[f"10.244.0.{i + 1}"]))
        assert len(fake.events["pods"]) == 5 and [e[0] for e in fake.events["pods"]] == list(range(first + 7, first + 12))
        # from the rv of the last event that left: every event after it is still there
        got = _watch_lines(fake, first + 6)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", f"p{i}") for i in range(7, 12)]
        # one before: the event after it left the window
        got = _watch_lines(fake, first + 5)
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in got] == [("ERROR", 410, "Expired")]
        # the nodes' window did not move
        with fake.cond:
            assert [e[0] for e in fake.events["nodes"]] == [node_rv]
        assert fake.compacted["nodes"] == 0


def test_the_window_starts_just_before_its_oldest_event_whatever_kind_moved_the_resource_version() -> None:
    """Once events left the window, a watch is taken from the resourceVersion just before the
    oldest event kept, and refused (410) from any earlier one, as kube-apiserver's watch cache
    does (410 for resourceVersion < oldest-1): even when the resourceVersions between the
    last event that left and the oldest kept are other kinds' changes, which a client resuming
    from the dropped event's resourceVersion would miss nothing of. Before, the fake took a
    watch from the dropped event's resourceVersion, and a client never saw the 410 a real
    server sends it there."""
    with running_fake_kube() as fake:
        fake.watch_window = 2
        fake.add("pods", pod("p0", ips=["10.244.0.1"]))
        dropped = fake.rv
        fake.add("nodes", {"metadata": {"name": "n1"}, "status": {"addresses": []}})
        node_rv = fake.rv
        fake.add("pods", pod("p1", ips=["10.244.0.2"]))
        fake.add("pods", pod("p2", ips=["10.244.0.3"]))   # p0's event leaves the window
        assert [e[0] for e in fake.events["pods"]] == [node_rv + 1, node_rv + 2]
        got = _watch_lines(fake, node_rv)
        assert [(e["type"], e["object"]["metadata"].get("name")) for e in got] == [("ADDED", "p1"), ("ADDED", "p2")]
        got = _watch_lines(fake, dropped)
        assert [(e["type"], e["object"].get("code"), e["object"]["metadata"].get("name")) for e in got] == [
            ("ERROR", 410, None)]
        assert got[0]["object"]["message"] == f"too old resource version: {dropped} ({node_rv})"


def _added_while_held(fake: FakeKube, numbers: range) -> Callable[[], None]:
    """What a test does once its pods watch is open (held): pods p<n> added, then released."""
    def add() -> None:
        wait_for(lambda: fake.watchers["pods"] == 1, what="the watch open")
        for i in numbers:
            fake.add("pods", pod(f"p{i}", ips=[f"10.244.0.{i + 1}"]))
        fake.release("pods")
    return add


def test_an_open_watch_that_falls_behind_the_window_gets_410() -> None:
    """An open watch whose events piled up (held) past the window: on release it gets 410 Gone,
    not the newest events with the ones it missed left out."""
    with running_fake_kube() as fake:
        fake.watch_window = 3
        fake.add("pods", pod("p0", ips=["10.244.0.1"]))
        rv = fake.rv
        fake.hold("pods")
        got = _watch_lines(fake, rv, timeout=5, started=_added_while_held(fake, range(1, 6)))
        assert [(e["type"], e["object"].get("code")) for e in got] == [("ERROR", 410)]
        # within the window, the same watch gets what piled up
        rv = fake.rv
        fake.hold("pods")
        got = _watch_lines(fake, rv, timeout=1, started=_added_while_held(fake, range(6, 8)))
        assert [e["object"]["metadata"]["name"] for e in got] == ["p6", "p7"]


def test_a_watch_from_resource_version_0_starts_from_the_current_state_however_far_the_window_moved() -> None:
    """A watch from resourceVersion "0" (or none) is "start at any" to the API server: never 410,
    however far the watch cache's window moved (or after a compaction, expire()); it gets the
    objects as they are, as synthetic ADDED events at their own resourceVersions (a deleted one
    not), then the changes that follow. Before, the fake answered it 410 Gone once its window
    had moved, which no API server does."""
    with running_fake_kube() as fake:
        fake.watch_window = 3
        for i in range(6):
            fake.add("pods", pod(f"p{i}", ips=[f"10.244.0.{i + 1}"]))
        fake.delete("pods", "p2", "default")
        assert fake.compacted["pods"] > 0   # a watch from the first resourceVersions is refused
        assert [(e["type"], e["object"].get("code")) for e in _watch_lines(fake, 101)] == [("ERROR", 410)]
        rvs = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in fake.objects["pods"].values()}
        for query in ("0", ""):
            def change() -> None:
                wait_for(lambda: fake.watchers["pods"] == 1, what="the watch open")
                fake.modify("pods", pod("p0", ips=["10.244.0.50"]))

            got = _watch_lines(fake, query, started=change)
            names = ["p0", "p1", "p3", "p4", "p5"]
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == (
                [("ADDED", n) for n in names] + [("MODIFIED", "p0")]), query
            assert [e["object"]["metadata"]["resourceVersion"] for e in got[:5]] == [rvs[n] for n in names]
            rvs["p0"] = got[-1]["object"]["metadata"]["resourceVersion"]
            assert got[0]["object"]["status"]["podIP"] == ("10.244.0.1" if query == "0" else "10.244.0.50")
        fake.expire("pods")
        got = _watch_lines(fake, 0)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", n) for n in names]


def _list_rv(fake: FakeKube) -> int:
    """The resourceVersion of a pods list, as the API server answers it now."""
    import urllib3

    http = urllib3.PoolManager()
    try:
        r = http.request("GET", f"{fake.url}/api/v1/pods", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 200
        return int(json.loads(r.data)["metadata"]["resourceVersion"])
    finally:
        http.clear()


def _assert_watch_gets_the_next_change(fake: FakeKube, rv: int) -> None:
    """A pods watch from rv is taken: a pod added once it is open comes in it, and nothing else."""
    def change() -> None:
        wait_for(lambda: fake.watchers["pods"] == 1, what="the watch open")
        fake.add("pods", pod("p2", ips=["10.244.0.3"]))

    got = _watch_lines(fake, rv, started=change)
    assert [(e["type"], e["object"].get("code"), e["object"]["metadata"].get("name")) for e in got] == [
        ("ADDED", None, "p2")]


def test_after_expire_a_watch_from_what_a_list_returns_is_taken_and_an_older_one_is_410() -> None:
    """expire() moves the watch cache's window to the current resourceVersion, as the API
    server's watch cache relisting from etcd at R does: it refuses a watch from before R (410, an
    ERROR event) and takes one from R itself, the resourceVersion a list returns at once
    (k8s.io/apiserver watch_cache.go, getAllEventsSinceLocked: after a relist at R the oldest
    event it can deliver is R + 1, and only a resourceVersion below oldest - 1 is too old).
    Before, the fake refused a watch from R too, until another event came, so an informer
    relisted over and over in a quiet cluster, which no API server makes it do."""
    with running_fake_kube() as fake:
        fake.add("pods", pod("p0", ips=["10.244.0.1"]))
        fake.add("pods", pod("p1", ips=["10.244.0.2"]))
        fake.expire("pods")
        listed = _list_rv(fake)

        _assert_watch_gets_the_next_change(fake, listed)
        # one before what the list returned (p0's, then) is older than the window: 410
        for rv in (listed - 1, listed - 2):
            got = _watch_lines(fake, rv)
            assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in got] == [
                ("ERROR", 410, "Expired")], rv
            assert got[0]["object"]["message"] == f"too old resource version: {rv} ({listed})"


def test_after_a_restore_a_watch_from_what_a_list_returns_is_taken_and_an_older_one_is_410() -> None:
    """restore() restarts the API server's watch cache, which lists etcd at the restored
    resourceVersion R: it takes a watch from R (what a list returns), and refuses one from
    before R (it holds no event from before its list: watch_cache.go, getAllEventsSinceLocked).
    The fake kept the window an expire() after the backup had moved past R, so it refused a
    watch from R itself until the restored history passed the expired resourceVersion (410 for
    every watch an informer made after its list, relisting over and over); and it still
    replayed events from before R that a restarted watch cache no longer has."""
    with running_fake_kube() as fake:
        fake.add("pods", pod("p0", ips=["10.244.0.1"]))
        fake.add("pods", pod("p1", ips=["10.244.0.2"]))
        backup = fake.backup()
        fake.add("pods", pod("lost", ips=["10.244.0.9"]))
        fake.expire("pods")
        fake.restore(backup)
        listed = _list_rv(fake)
        assert listed == backup[0]
        assert _watch_lines(fake, listed) == []   # taken: nothing to say until its timeout

        _assert_watch_gets_the_next_change(fake, listed)
        got = _watch_lines(fake, listed - 1)   # (p0's: p1's ADDED came after it)
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in got] == [("ERROR", 410, "Expired")]
        assert got[0]["object"]["message"] == f"too old resource version: {listed - 1} ({listed})"
