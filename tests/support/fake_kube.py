"""A fake Kubernetes API server that speaks the list/watch wire protocol the `kubernetes` client uses.

Why: no API server can run in CI, and mocking the client would test nothing of the informers'
HTTP handling. This server answers the real requests of `kubernetes.client` (Bearer token auth,
JSON lists with metadata.resourceVersion and limit/continue paging, PartialObjectMetadata lists
when asked through Accept, watch streams as chunked newline-delimited JSON events with ADDED /
MODIFIED / DELETED / BOOKMARK / ERROR, 410 Gone for compacted resourceVersions and continue tokens (a watch
from resourceVersion "0", or none, is never too old: it gets the current objects as ADDED events, as the
watch cache sends them, then what follows), 504 "Too large
resource version" for one the server has not reached (an etcd restore: backup() / restore()),
401/403 Status objects) and lets a test inject faults: dropped connections, garbage bodies, forbidden verbs,
held events (so changes can happen "in between" a dead watch and a relist), and an `on_request` hook
(so they can happen between two pages of a list).

It runs in-process on a free 127.0.0.1 port in a thread; `write_kubeconfig()` points a kubeconfig
file at it. With `tls_dir` it speaks HTTPS, as a real API server does, with a certificate for
127.0.0.1 signed by a CA made at start (tests/support/tls.make_pki; `ca_cert` is what a pod's
ca.crt would hold), so the in-cluster ServiceAccount path can be tested; `token` is the one Bearer token
accepted, and a test sets it to rotate credentials as the kubelet rotates a bound token.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import ssl
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.tls import make_pki

TOKEN = "test-token"

# A client that went away: closed or reset its connection while its answer was written, or
# before its next request on a kept-alive one (urllib3 dropping a pooled connection, an informer
# stopped mid-list). The API server takes that as the end of the connection, and so does the fake.
CLIENT_GONE = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)

# path -> (kind key, List kind, object kind, apiVersion, resource name)
ROUTES = {
    "/api/v1/pods": ("pods", "PodList", "Pod", "v1"),
    "/api/v1/nodes": ("nodes", "NodeList", "Node", "v1"),
    "/api/v1/services": ("services", "ServiceList", "Service", "v1"),
    "/apis/apps/v1/replicasets": ("replicasets", "ReplicaSetList", "ReplicaSet", "apps/v1"),
}
KIND_INFO = {v[0]: (path, *v[1:]) for path, v in ROUTES.items()}

# The API server compresses an answer with gzip when the client accepts it and the answer is at least
# this long, at this level (k8s.io/apiserver endpoints/handlers/responsewriters: deferredResponseWriter,
# defaultGzipThresholdBytes and defaultGzipContentEncodingLevel), streaming it (chunked, no
# Content-Length). Watch streams are written frame by frame, never compressed.
GZIP_THRESHOLD = 128 * 1024
GZIP_LEVEL = 1
GZIP_CHUNK = 32 * 1024

# The message of the 410 for a continue token etcd compacted away (k8s.io/apiserver storage/etcd3,
# inconsistentContinue), whose Status carries a continue token that reads on at the latest revision.
INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list.")


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status object as the API server sends it with errors."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Fault:
    """An injected failure for (kind, verb); `times` None means until cleared; the first
    `after` requests of (kind, verb) pass untouched (a list that expires after some pages)."""

    def __init__(self, what: str, times: int | None, after: int = 0) -> None:
        self.what = what
        self.times = times
        self.after = after


class FakeKube:
    """In-memory API server state plus the HTTP(S) server thread."""

    def __init__(self, *, tls_dir: Path | None = None) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KIND_INFO}
        # The watch cache: each kind's newest `watch_window` events (a copy of the object each), what
        # a watch from a resourceVersion replays. A watch from before the one just before the oldest
        # kept (or an open watch that fell that far behind: held events) is answered 410 Gone, as the
        # API server's watch cache answers once its window moved past the resourceVersion (compacted).
        self.watch_window = 1000
        self.events: dict[str, deque[tuple[int, str, dict[str, Any]]]] = {k: deque() for k in KIND_INFO}
        # each kind's oldest resourceVersion a watch may start (or an open one go on) from
        self.compacted: dict[str, int] = {k: 0 for k in KIND_INFO}
        self.held: set[str] = set()
        self.gone_gen: dict[str, int] = {k: 0 for k in KIND_INFO}
        self.drop_gen: dict[str, int] = {k: 0 for k in KIND_INFO}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.requests: list[dict[str, Any]] = []
        self.watchers: dict[str, int] = {k: 0 for k in KIND_INFO}
        self.snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        # continue tokens etcd compacted away (expired_continue), each with the key its list
        # would have continued from: a request with one is answered 410 Expired
        self.compacted_continues: dict[str, str] = {}
        # the "inconsistent" continue tokens those 410 answers carried (see _list)
        self.inconsistent_continues: dict[str, tuple[str, str]] = {}
        # Called with each request's record (verb, kind, query...) before it is answered, in the
        # server's thread: a test changes objects there, between two pages of a list.
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        self._uids = itertools.count(1)
        self._snap_ids = itertools.count(1)
        self.stopping = False
        # The one Bearer token accepted (a test sets it to rotate credentials).
        self.token = TOKEN
        # Tokens still taken besides it: a bound token the kubelet rotated away, until it expires.
        self.old_tokens: set[str] = set()
        # Over TLS: the users (certificate CNs) whose client certificates the server takes; a
        # test takes one out as the API server refuses an expired certificate (401). The
        # certificate comes from make_client_cert(tls_dir, cn), signed by the server's CA.
        self.client_users: set[str] = set()
        # HTTPS with a certificate made in this directory when set; plain HTTP when None.
        self.tls_dir = tls_dir
        self.ca_cert: Path | None = None   # the CA that signed the server's certificate (a pod's ca.crt)
        self.tls_rejected = 0              # TLS handshakes that failed (the client refused us)
        self.server: _Server | None = None
        # Exceptions a request handler raised (anything but CLIENT_GONE), each as its traceback:
        # printed when they happen, and running_fake_kube fails the test with them at its end.
        self.handler_errors: list[str] = []
        self.thread: threading.Thread | None = None
        # How watch events go on the wire: None, one HTTP chunk per event (the API server's
        # way); N, the events ready at once joined and cut into chunks of N bytes (1: an event
        # over hundreds of one-byte chunks; large: several events in one chunk).
        self.watch_chunk_bytes: int | None = None
        # Answers sent compressed with gzip (the client asked, and they were GZIP_THRESHOLD or more),
        # and the bytes of the bodies of every JSON answer (lists, errors) as sent
        self.gzipped = 0
        self.sent_bytes = 0
        # The object of the ERROR event the "status_event" watch fault sends (a Status, or
        # whatever an aggregated API server or a proxy put there: a Status without `code`).
        self.event_status: Any = status(500, "InternalError", "Internal error occurred")
        # Length of the event line the "oversize" watch fault sends (over the informer's cap).
        self.oversize_bytes = 17 << 20
        # Blanks the "bomb" and "endless" list faults pad their page's items with: a gzip bomb
        # (1 GiB of blanks is ~1 MiB compressed) or an uncompressed answer as long; None: without end.
        self.bomb_bytes: int | None = 1 << 30
        # Bytes of padding those faults wrote before the client hung up (or all of them)
        self.bomb_sent = 0
        # Seconds between the bytes of the "trickle" list fault's answer, and how many it sent
        # before the client hung up (or all of them)
        self.trickle_interval = 0.5
        self.trickle_sent = 0
        # How long a watch from a resourceVersion the server has not reached yet waits for it
        # before the answer "Too large resource version" (the API server's watch cache waits 3 s:
        # blockTimeout in k8s.io/apiserver's watch_cache.go; shorter here, for the tests' sake).
        self.too_large_wait = 0.3
        # Seconds before a watch's timeoutSeconds at which the watch cache sends a BOOKMARK at its
        # current (cluster-wide) resourceVersion, when the watch allows bookmarks and nothing else
        # is due: k8s.io/apiserver's cacheWatcher sends one every minute and one 2 s before the
        # deadline (nextBookmarkTime), so a client resumes from the newest resourceVersion even
        # when its kind was quiet. None: only the bookmarks a test sends (bookmark()).
        self.bookmark_before_timeout: float | None = None

    # lifecycle

    def start(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            kube = fake

        if self.tls_dir is None:
            self.server = _Server(("127.0.0.1", 0), Handler)
        else:
            pki = make_pki(self.tls_dir, "fake-kube CA")   # a new CA each time: servers never trust each other
            self.ca_cert = pki.ca
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(pki.cert, pki.key)
            # Client certificates asked for, not required (kube-apiserver's --client-ca-file):
            # one its CA signed authenticates the connection's requests as its CN (client_users)
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(pki.ca)
            self.server = _TLSServer(("127.0.0.1", 0), Handler, ctx)
        self.server.kube = self
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-kube", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'http' if self.tls_dir is None else 'https'}://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, *, token: str = TOKEN) -> Path:
        # JSON is YAML: the client's kubeconfig loader reads it as is.
        cluster: dict[str, str] = {"server": self.url}
        if self.ca_cert is not None:
            cluster["certificate-authority"] = str(self.ca_cert)
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
        path.write_text(json.dumps(cfg))
        return path

    # state changes (what a controller would do)

    def _key(self, obj: dict[str, Any]) -> str:
        m = obj["metadata"]
        return f"{m.get('namespace', '')}/{m['name']}"

    def _record(self, kind: str, typ: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._keep(kind, (self.rv, typ, json.loads(json.dumps(obj))))

    def _keep(self, kind: str, event: tuple[int, str, dict[str, Any]]) -> None:
        """Add an event to the kind's watch cache, the oldest leaving once it holds `watch_window`:
        a watch must start at or after the resourceVersion just before the oldest one kept."""
        events = self.events[kind]
        events.append(event)
        while len(events) > max(1, self.watch_window):
            events.popleft()
            # The watch cache takes a watch from oldest-1 (it replays every event from the oldest
            # on) and refuses anything earlier, whatever the resourceVersions between were: other
            # kinds' changes, which it cannot tell from this kind's it dropped (watch_cache.go,
            # getAllEventsSinceLocked: 410 for resourceVersion < oldest-1).
            self.compacted[kind] = max(self.compacted[kind], events[0][0] - 1)
        self.cond.notify_all()

    def add(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        m = obj.setdefault("metadata", {})
        m.setdefault("uid", f"uid-{next(self._uids)}")
        m.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self.cond:
            self.objects[kind][self._key(obj)] = obj
            self._record(kind, "ADDED", obj)
        return obj

    def modify(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        with self.cond:
            old = self.objects[kind][self._key(obj)]
            for k in ("uid", "creationTimestamp"):
                if k in old["metadata"]:
                    obj["metadata"].setdefault(k, old["metadata"][k])
            self.objects[kind][self._key(obj)] = obj
            self._record(kind, "MODIFIED", obj)
        return obj

    def delete(self, kind: str, name: str, namespace: str = "", *,
               sent: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """`sent`: makes the DELETED event's object from the stored one (bad input a real API
        server does not send, for the tests of what the collector does with it)."""
        with self.cond:
            obj = self.objects[kind].pop(f"{namespace}/{name}")
            self._record(kind, "DELETED", obj if sent is None else sent(json.loads(json.dumps(obj))))

    def bookmark(self, kind: str) -> None:
        _, _, okind, api = KIND_INFO[kind]
        with self.cond:
            self.rv += 1
            self._keep(kind, (self.rv, "BOOKMARK", {
                "kind": okind, "apiVersion": api, "metadata": {"resourceVersion": str(self.rv)}}))

    def hold(self, kind: str) -> None:
        """Stop delivering this kind's events to open watches (they pile up, as if lost)."""
        with self.cond:
            self.held.add(kind)

    def release(self, kind: str) -> None:
        """Deliver this kind's held events again (all that piled up, at once)."""
        with self.cond:
            self.held.discard(kind)
            self.cond.notify_all()

    def expire(self, kind: str) -> None:
        """Compact history: open watches get ERROR 410 and a watch from any resourceVersion before
        the current one is refused; one from the current resourceVersion (what a list returns now)
        is taken. The watch cache after it relisted from etcd at R (its reflector's watch expired)
        holds no event and refuses only what is older than R: k8s.io/apiserver watch_cache.go,
        getAllEventsSinceLocked, `oldest = listResourceVersion + 1` and 410 for
        `resourceVersion < oldest-1`."""
        with self.cond:
            self.compacted[kind] = self.rv
            self.events[kind].clear()
            self.gone_gen[kind] += 1
            self.held.discard(kind)
            self.cond.notify_all()

    def backup(self) -> tuple[int, dict[str, dict[str, dict[str, Any]]]]:
        """An etcd snapshot: the resourceVersion and every object as they are now."""
        with self.cond:
            return self.rv, json.loads(json.dumps(self.objects))

    def restore(self, snapshot: tuple[int, dict[str, dict[str, dict[str, Any]]]]) -> None:
        """etcd restored from `snapshot` (etcdutl snapshot restore without --bump-revision): the
        objects are the snapshot's, the resourceVersion goes back to it, and the history after
        it is gone. A watch from a resourceVersion the server had reached before the restore is
        now one from the future (see _watch); open watches are cut (the API servers restart).
        Their watch caches start again from a list of etcd at the restored resourceVersion R,
        holding no event: they take a watch from R and refuse older ones (as after expire()),
        whatever window an expire() after the backup had left."""
        rv, objects = snapshot
        with self.cond:
            self.rv = rv
            self.objects = json.loads(json.dumps(objects))
            for kind in self.events:
                self.events[kind].clear()
                self.compacted[kind] = rv
                self.drop_gen[kind] += 1
                self.held.discard(kind)
            self.snapshots.clear()
            self.cond.notify_all()

    def drop_watches(self, kind: str) -> None:
        """Cut open watch connections of this kind mid-stream (no final chunk)."""
        with self.cond:
            self.drop_gen[kind] += 1
            self.held.discard(kind)
            self.cond.notify_all()

    def fail(self, kind: str, verb: str, what: str, *, times: int | None = None, after: int = 0) -> None:
        """Inject a fault for list or watch: forbidden, slow_forbidden (403 after 1.2 s),
        unauthorized, garbage, drop, error500, unavailable (503 with Retry-After: 1), error500_event (watch only: the stream's first event is an ERROR
        Status 500 InternalError, then it ends, as an etcd timeout is reported once the watch is open),
        gone_http (HTTP 410 Expired before any stream; to a list, whatever page it asks for),
        too_old_500_http (HTTP 500 "too old resource version", as the watch cache answered before 410),
        status_event (watch only: the stream's first event is an ERROR whose object is `event_status`, then
        it ends), compacted_500_event (watch only: ERROR 500 InternalError wrapping etcd's "required revision has
        been compacted", as etcd3 watches reported it before 410 Expired), bad_request (HTTP 400 BadRequest), throttle (429 with Retry-After: 2), throttle_event
        (watch only: ERROR 429 with details.retryAfterSeconds 3), too_large_event (watch only: ERROR 504
        "Too large resource version", cause ResourceVersionTooLarge, as `_watch` answers a watch from a
        resourceVersion the server has not reached, in the stream), gone (watch only: ERROR 410 at once), empty (watch only: the stream ends at once, cleanly),
        bomb (list only: a 200 list page whose `items` are padded with `bomb_bytes` blanks, sent
        with gzip whether asked for or not, ~1000 times smaller on the wire: a gzip bomb from a
        broken server or proxy; valid JSON, an empty list, when read to its end), endless (list only:
        the same uncompressed), trickle (to a list: the page as it would be, one byte every
        `trickle_interval` seconds, each read well within any read timeout; to a watch: a BOOKMARK at
        the watch's resourceVersion, over and over, at the same pace, never ended at its
        timeoutSeconds, no event passed), oversize (watch only: first a MODIFIED event of `oversize_bytes`, the kind's first object
        moved to address 10.244.0.99 with a huge annotation, in 64 KiB chunks, then the stream goes
        on as usual), slow_oversize (the same after 1.2 s), noitems and
        expired_continue (list only: the page is served but its continue token is already compacted
        away, so the next page gets 410 Expired as the API server answers it, a Status whose
        metadata.continue is the "inconsistent" token that would go on from the current state).
        `after`: the first `after` requests pass before the fault applies (a list whose token expires
        after so many pages)."""
        with self.cond:
            self.faults[(kind, verb)] = Fault(what, times, after)

    def clear(self, kind: str, verb: str) -> None:
        with self.cond:
            self.faults.pop((kind, verb), None)

    def take_fault(self, kind: str, verb: str) -> str | None:
        with self.cond:
            f = self.faults.get((kind, verb))
            if f is None:
                return None
            if f.after > 0:
                f.after -= 1
                return None
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    del self.faults[(kind, verb)]
            return f.what

    def count(self, *, kind: str | None = None, verb: str | None = None) -> int:
        with self.cond:
            return sum(1 for r in self.requests
                       if (kind is None or r["kind"] == kind) and (verb is None or r["verb"] == verb))

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        wait_for(pred, timeout=timeout, what=what)


def wait_for(pred: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition (the informer runs in other threads), failing the test on timeout."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


class _Server(ThreadingHTTPServer):
    """The fake's HTTP server: a client that went away is no error (socketserver would print a
    traceback for it); any other exception of a handler is printed and kept in the fake's
    handler_errors."""

    kube: FakeKube

    def get_request(self) -> tuple[socket.socket, Any]:
        # TCP_NODELAY, as Go sets on every TCP connection (the API server's among them): a
        # streamed answer's small last write (a gzip stream's end, its final chunk) must not
        # wait for the client's delayed ACK (40 ms a page), which a real API server never does
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], CLIENT_GONE):
            return
        with self.kube.cond:
            self.kube.handler_errors.append(traceback.format_exc())
        super().handle_error(request, client_address)


class _TLSServer(_Server):
    """Wraps each accepted connection in TLS; the handshake runs in the connection's own thread
    (`_Handler.handle`), so a client that refuses the certificate does not stall accept()."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 ctx: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.ctx = ctx

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


def _bookmark_object(kind: str, rv: int, meta_only: bool) -> dict[str, Any]:
    """The object of a BOOKMARK the watch cache sends: an empty object of the watched type carrying
    only the resourceVersion (metadata.creationTimestamp null, as Go encodes a zero time; a Pod's
    spec.containers null), or PartialObjectMetadata for a metadata-only watch."""
    meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if meta_only:
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    _, _, okind, api = KIND_INFO[kind]
    obj: dict[str, Any] = {"kind": okind, "apiVersion": api, "metadata": meta}
    if kind == "pods":
        obj["spec"], obj["status"] = {"containers": None}, {}
    return obj


def _accepts_gzip(header: str) -> bool:
    """Accept-Encoding lists the token gzip (the API server's negotiateContentEncoding: a
    comma-separated token that is exactly "gzip", no q-values or wildcards read)."""
    return any(token.strip() == "gzip" for token in header.split(","))


def _meta_only(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    kube: FakeKube

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except OSError:  # ssl.SSLError included: e.g. the client's "unknown ca" alert
                with self.kube.cond:
                    self.kube.tls_rejected += 1
                return
        super().handle()

    # plumbing

    def _send_json(self, code: int, doc: Any, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> None:
        body = raw if raw is not None else json.dumps(doc).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        if len(body) >= GZIP_THRESHOLD and _accepts_gzip(self.headers.get("Accept-Encoding", "")):
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            with self.kube.cond:
                self.kube.gzipped += 1
            sent = 0
            for i in range(0, len(body), GZIP_CHUNK):
                part = gz.compress(body[i:i + GZIP_CHUNK])
                if part:
                    self._chunk(part)
                    sent += len(part)
            part = gz.flush()
            self._chunk(part)
            self._chunk(b"")
            with self.kube.cond:
                self.kube.sent_bytes += sent + len(part)
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.kube.cond:
            self.kube.sent_bytes += len(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        k = self.kube
        u = urlsplit(self.path)
        q = {key: v[-1] for key, v in parse_qs(u.query).items()}
        route = ROUTES.get(u.path)
        watch = q.get("watch") in ("true", "True", "1")
        verb = "watch" if watch else "list"
        kind = route[0] if route else ""
        # The API server takes the scheme in any case (the client's in-cluster loader sends
        # "bearer <token>"): k8s.io/apiserver request/bearertoken lowercases it.
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        token = token if scheme.lower() == "bearer" else ""
        # x509 client certificate authentication (the API server's, per request, of the
        # certificate the connection presented in its handshake)
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        user = next((v for rdn in (peer or {}).get("subject", ()) for k_, v in rdn if k_ == "commonName"), "")
        record = {"verb": verb, "kind": kind, "query": q, "accept": self.headers.get("Accept", ""),
                  "accept_encoding": self.headers.get("Accept-Encoding", ""), "token": token,
                  "user": user}
        with k.cond:
            k.requests.append(record)
            accepted = k.token
            if token in k.old_tokens:
                accepted = token
            cert_ok = bool(user) and user in k.client_users
            hook = k.on_request
        if hook is not None:
            hook(record)
        if route is None:
            self._send_json(404, status(404, "NotFound", f"the server could not find {u.path}"))
            return
        if (not token or token != accepted) and not cert_ok:   # (either one authenticates, as a union)
            self._send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        fault = k.take_fault(kind, verb)
        if fault == "slow_forbidden":  # an authorizer webhook taking its time before saying no
            time.sleep(1.2)
            fault = "forbidden"
        if fault == "forbidden":
            self._send_json(403, status(403, "Forbidden", f'{kind} is forbidden: User "system:serviceaccount:'
                                        f'netobserv:flowscope" cannot {verb} resource "{kind}" at the cluster scope'))
            return
        if fault == "unauthorized":
            self._send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        if fault == "error500":
            self._send_json(500, status(500, "InternalError", "etcdserver: request timed out"))
            return
        if fault == "throttle":
            self._send_json(429, status(429, "TooManyRequests", "too many requests, please try again later"),
                            headers={"Retry-After": "2"})
            return
        if fault == "unavailable":  # an API server shedding load (or an aggregator), with Retry-After
            self._send_json(503, status(503, "ServiceUnavailable", "the server is currently unable to handle the "
                                        "request"), headers={"Retry-After": "1"})
            return
        if fault == "drop":
            self._drop()
            return
        if fault == "bad_request":  # as the API server refuses a resourceVersion it cannot parse
            self._send_json(400, status(400, "BadRequest", f"resourceVersion: Invalid value: "
                                        f"\"{q.get('resourceVersion')}\": must be a non-negative integer"))
            return
        if fault == "too_old_500_http":  # kubernetes/kubernetes#14384: the watch cache's "too old" as a 500
            self._send_json(500, status(500, "InternalError", f"too old resource version: {q.get('resourceVersion')} "
                                        f"({self.kube.rv})"))
            return
        if fault == "gone_http":  # the resourceVersion refused before the stream opens (HTTP 410)
            self._send_json(410, status(410, "Expired", f"too old resource version: {q.get('resourceVersion')}"))
            return
        if watch:
            self._watch(kind, q, fault)
        else:
            self._list(kind, q, fault)

    def _oversize_event(self, kind: str) -> bytes:
        """A MODIFIED event line (newline included) of `oversize_bytes`: a real object grown
        past any size etcd stores, by an annotation."""
        k = self.kube
        with k.cond:
            objs = [o for _, o in sorted(k.objects[kind].items())]
            obj = json.loads(json.dumps(objs[0])) if objs else {"metadata": {"name": "huge"}}
            rv = str(k.rv)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = rv
        meta["annotations"] = {"padding": ""}
        status = obj.get("status")
        if isinstance(status, dict) and "podIP" in status:
            status["podIP"], status["podIPs"] = "10.244.0.99", [{"ip": "10.244.0.99"}]
        line = json.dumps({"type": "MODIFIED", "object": obj}).encode()
        pad = max(0, k.oversize_bytes - len(line))
        meta["annotations"]["padding"] = "x" * pad
        return json.dumps({"type": "MODIFIED", "object": obj}).encode() + b"\n"

    def _padded_list(self, list_kind: str, api: str, *, compress: bool) -> None:
        """A list page of no items padded with `bomb_bytes` blanks (see fail: bomb, endless),
        chunked, compressed as the API server does when `compress`, until the client hangs up."""
        k = self.kube
        with k.cond:
            total, rv = k.bomb_bytes, str(k.rv)
            k.bomb_sent = 0
        head = json.dumps({"kind": list_kind, "apiVersion": api, "metadata": {"resourceVersion": rv}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if compress:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        gz = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if compress else None

        def send(data: bytes, *, last: bool = False) -> None:
            if gz is not None:
                data = gz.compress(data) + (gz.flush() if last else gz.flush(zlib.Z_SYNC_FLUSH))
            self._chunk(data)

        send(head[:-1].encode() + b', "items": [')
        blanks = b" " * (1 << 20)
        while total is None or k.bomb_sent < total:
            n = len(blanks) if total is None else min(len(blanks), total - k.bomb_sent)
            send(blanks[:n])
            with k.cond:
                k.bomb_sent += n
        send(b"]}", last=True)
        self._chunk(b"")

    def _list(self, kind: str, q: dict[str, str], fault: str | None) -> None:
        k = self.kube
        if fault == "garbage":
            self._send_json(200, None, raw=b"<html><body>502 Bad Gateway</body></html>")
            return
        _, list_kind, _, api = KIND_INFO[kind]
        if fault in ("bomb", "endless"):
            self._padded_list(list_kind, api, compress=fault == "bomb")
            return
        if fault == "noitems":  # a list kind and resourceVersion, but no "items" at all
            self._send_json(200, {"kind": list_kind, "apiVersion": api,
                                  "metadata": {"resourceVersion": str(k.rv)}})
            return
        meta_only = "as=PartialObjectMetadataList" in self.headers.get("Accept", "")
        limit = int(q.get("limit", "0") or 0)
        cont = q.get("continue")
        with k.cond:
            if cont and cont in k.compacted_continues:
                # k8s.io/apiserver storage/etcd3 (interpretListError, handleCompactedErrorForPaging):
                # etcd compacted the revision a paged list reads: 410, reason Expired, and a Status
                # whose metadata.continue goes on from the same key at the latest revision (its
                # resourceVersion -1), "an inconsistent list" of objects from two points in time.
                token = base64.b64encode(f"inconsistent-{next(k._snap_ids)}".encode()).decode()
                k.inconsistent_continues[token] = (kind, k.compacted_continues[cont])
                st = status(410, "Expired", INCONSISTENT_CONTINUE)
                st["metadata"] = {"continue": token}
                self._send_json(410, st)
                return
            if cont and cont in k.inconsistent_continues:
                # the rest of the list, from the key the expired token stopped at, as it is now
                _, key = k.inconsistent_continues[cont]
                rv = k.rv
                items = [json.loads(json.dumps(o)) for name, o in sorted(k.objects[kind].items()) if name >= key]
            elif cont:
                snap = k.snapshots.get(cont)
                if snap is None:
                    self._send_json(410, status(410, "Expired", "The provided continue parameter is too old "
                                                "to display a consistent list result. You can start a new list "
                                                "without the continue parameter."))
                    return
                rv, items = snap
            else:
                rv = k.rv
                items = [json.loads(json.dumps(o)) for _, o in sorted(k.objects[kind].items())]
        page, rest = (items[:limit], items[limit:]) if limit else (items, [])
        if fault == "trickle":
            rest = []   # (one page: the client hangs up before its end)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if rest:
            token = base64.b64encode(f"snap-{next(k._snap_ids)}".encode()).decode()
            with k.cond:
                if fault == "expired_continue":
                    k.compacted_continues[token] = k._key(rest[0])
                else:
                    k.snapshots[token] = (rv, rest)
            meta["continue"] = token
            meta["remainingItemCount"] = len(rest)
        if meta_only:
            doc = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                   "items": [_meta_only(o) for o in page]}
        else:
            doc = {"kind": list_kind, "apiVersion": api, "metadata": meta, "items": page}
        if fault == "trickle":
            self._trickle(json.dumps(doc).encode())
            return
        self._send_json(200, doc)

    def _trickle(self, body: bytes) -> None:
        """`body` (a list page) with its Content-Length, one byte every `trickle_interval`
        seconds until the client hangs up (a broken proxy, a congested link)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        self._trickle_bytes(body, self.wfile.write)

    def _trickle_bytes(self, body: bytes, write: Callable[[bytes], object], *, again: bool = False) -> None:
        """Write `body` one byte every `trickle_interval` seconds (over and over with `again`)
        until the client hangs up or the server stops; counted in `trickle_sent`."""
        k = self.kube
        with k.cond:
            k.trickle_sent = 0
            interval = k.trickle_interval
        while True:
            for i in range(len(body)):
                with k.cond:
                    if k.stopping:
                        return
                write(body[i:i + 1])
                self.wfile.flush()
                with k.cond:
                    k.trickle_sent += 1
                time.sleep(interval)
            if not again:
                return

    def _watch(self, kind: str, q: dict[str, str], fault: str | None) -> None:
        k = self.kube
        try:
            rv = int(q.get("resourceVersion", "0") or 0)
        except ValueError:
            self._send_json(400, status(400, "BadRequest", "bad resourceVersion"))
            return
        bookmarks = q.get("allowWatchBookmarks") in ("true", "True", "1")
        meta_only = "as=PartialObjectMetadata" in self.headers.get("Accept", "")
        timeout = float(q.get("timeoutSeconds", "1800"))
        deadline = time.monotonic() + timeout
        ahead = k.bookmark_before_timeout
        bookmark_at = deadline - ahead if bookmarks and ahead is not None else None
        with k.cond:
            # A resourceVersion the server has not reached (a watch that goes to an API server
            # whose cache lags, or from before an etcd restore that took the resourceVersion
            # back): the watch cache waits for it a while, then answers 504 Timeout with the cause
            # ResourceVersionTooLarge and a Retry-After of 1 s (storage.NewTooLargeResourceVersionError).
            wait_until = time.monotonic() + k.too_large_wait
            while rv > k.rv and not k.stopping and time.monotonic() < wait_until:
                k.cond.wait(max(0.0, wait_until - time.monotonic()))
            current = k.rv
        if rv > current:
            st = status(504, "Timeout", f"Timeout: Too large resource version: {rv}, current: {current}")
            st["details"] = {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                             "retryAfterSeconds": 1}
            self._send_json(504, st, headers={"Retry-After": "1"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if fault == "garbage":
            self._chunk(b"this is not json\n")
            self._drop()
            return
        if fault == "empty":  # a proxy that ends every stream at once, cleanly, with nothing in it
            self._chunk(b"")
            return
        if fault == "throttle_event":  # the Status of a 429 as an event, with its retry delay
            st = status(429, "TooManyRequests", "the server is currently unable to handle the request")
            st["details"] = {"retryAfterSeconds": 3}
            self._chunk(json.dumps({"type": "ERROR", "object": st}).encode() + b"\n")
            self._chunk(b"")
            return
        if fault == "error500_event":  # k8s.io/apiserver transformErrorToEvent: NewInternalError's Status
            st = status(500, "InternalError", "Internal error occurred: etcdserver: request timed out")
            st["details"] = {"causes": [{"message": "etcdserver: request timed out"}]}
            self._chunk(json.dumps({"type": "ERROR", "object": st}).encode() + b"\n")
            self._chunk(b"")
            return
        if fault == "status_event":  # an ERROR whose object is the test's `event_status`, then the end
            with k.cond:
                obj = k.event_status
            self._chunk(json.dumps({"type": "ERROR", "object": obj}).encode() + b"\n")
            self._chunk(b"")
            return
        if fault == "compacted_500_event":  # etcd3's ErrCompacted before interpretWatchError made it 410
            st = status(500, "InternalError", "Internal error occurred: etcdserver: mvcc: required revision has "
                        "been compacted")
            st["details"] = {"causes": [{"message": "etcdserver: mvcc: required revision has been compacted"}]}
            self._chunk(json.dumps({"type": "ERROR", "object": st}).encode() + b"\n")
            self._chunk(b"")
            return
        if fault == "too_large_event":  # the Status of "Too large resource version" as an event
            st = status(504, "Timeout", f"Timeout: Too large resource version: {rv}, current: {rv - 1}")
            st["details"] = {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                             "retryAfterSeconds": 1}
            self._chunk(json.dumps({"type": "ERROR", "object": st}).encode() + b"\n")
            self._chunk(b"")
            return
        if fault == "gone":  # a lagging server: whatever the resourceVersion, it is too old
            self._chunk(json.dumps({"type": "ERROR", "object": status(
                410, "Expired", f"too old resource version: {q.get('resourceVersion')}")}).encode() + b"\n")
            self._chunk(b"")
            return
        with k.cond:
            gone_gen, drop_gen = k.gone_gen[kind], k.drop_gen[kind]
            initial: list[bytes] = []
            if rv == 0:
                # resourceVersion "0" (or none): "start at any", never too old. The watch cache
                # sends the state it holds as synthetic ADDED events (each object at its own
                # resourceVersion), then the events after its current resourceVersion
                # (k8s.io/apiserver watch_cache.go, getAllEventsSinceLocked: resourceVersion 0).
                for _, obj in sorted(k.objects[kind].items()):
                    initial.append(json.dumps({"type": "ADDED", "object": _meta_only(obj) if meta_only else obj})
                                   .encode() + b"\n")
                rv = k.rv
            too_old = rv < k.compacted[kind]
            k.watchers[kind] += 1
        try:
            if fault == "trickle":
                # a proxy (or a broken server) keeping the stream alive past its timeoutSeconds
                # with a byte now and then, the bytes of one BOOKMARK at the watch's own
                # resourceVersion over and over, while the events it should pass are held back
                line = json.dumps({"type": "BOOKMARK", "object": _bookmark_object(kind, rv, meta_only)}).encode()
                self._trickle_bytes(line + b"\n", self._chunk, again=True)
                return
            for line in initial:
                self._chunk(line)
            if fault in ("oversize", "slow_oversize"):
                if fault == "slow_oversize":
                    time.sleep(1.2)
                line = self._oversize_event(kind)
                for i in range(0, len(line), 64 << 10):
                    self._chunk(line[i:i + (64 << 10)])
            if too_old:
                self._chunk(json.dumps({"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {rv} ({k.compacted[kind]})")}).encode() + b"\n")
                self._chunk(b"")
                return
            while True:
                with k.cond:
                    while True:
                        if k.stopping or k.drop_gen[kind] != drop_gen:
                            out, end = [], "drop"
                            break
                        if k.gone_gen[kind] != gone_gen or rv < k.compacted[kind]:
                            # (expired, or fell behind the watch cache's window: events it has
                            # not sent are gone)
                            out, end = [], "gone"
                            break
                        if time.monotonic() >= deadline:
                            out, end = [], "timeout"
                            break
                        out = [] if kind in k.held else [e for e in k.events[kind] if e[0] > rv]
                        if out:
                            end = ""
                            break
                        if bookmark_at is not None and time.monotonic() >= bookmark_at and kind not in k.held:
                            bookmark_at = None
                            out, end = [(max(rv, k.rv), "BOOKMARK", _bookmark_object(kind, k.rv, meta_only))], ""
                            break
                        k.cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                if end == "drop":
                    self._drop()
                    return
                if end == "gone":
                    self._chunk(json.dumps({"type": "ERROR", "object": status(
                        410, "Expired", "too old resource version")}).encode() + b"\n")
                    self._chunk(b"")
                    return
                if end == "timeout":
                    self._chunk(b"")
                    return
                lines = []
                for erv, typ, obj in out:
                    rv = erv
                    if typ == "BOOKMARK" and not bookmarks:
                        continue
                    if meta_only and typ != "BOOKMARK":
                        obj = _meta_only(obj)
                    lines.append(json.dumps({"type": typ, "object": obj}).encode() + b"\n")
                size = k.watch_chunk_bytes
                if size is None:
                    for line in lines:
                        self._chunk(line)
                else:
                    data = b"".join(lines)
                    for i in range(0, len(data), size):
                        self._chunk(data[i:i + size])
        except OSError:
            return
        finally:
            with k.cond:
                k.watchers[kind] -= 1


@contextmanager
def running_fake_kube(*, tls_dir: Path | None = None) -> Iterator[FakeKube]:
    """A started FakeKube, stopped at the end; the block fails (when nothing else failed it) if a
    request handler raised anything but a client going away."""
    fake = FakeKube(tls_dir=tls_dir).start()
    try:
        yield fake
    finally:
        fake.stop()
    with fake.cond:
        errors = list(fake.handler_errors)
    if errors:
        raise AssertionError(f"the fake API server's request handlers raised {len(errors)} time(s):\n" + "\n".join(errors))


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """A started FakeKube; stopped after the test."""
    with running_fake_kube() as fake:
        yield fake


# Builders of realistic API objects (only what a real server would send and the tests need).

def pod(name: str, ns: str = "default", *, ips: list[str] | None = None, node: str | None = "node-a",
        host_ip: str | None = "10.0.0.1", owner: tuple[str, str] | None = None, uid: str | None = None,
        created: str | None = None, phase: str = "Running", host_network: bool = False,
        host_ips: list[str] | None = None, annotations: dict[str, str] | None = None,
        owner_uid: str | None = None) -> dict[str, Any]:
    """A Pod; `host_ips`: status.hostIPs when they are more than hostIP (a dual-stack node);
    `owner_uid`: its owner's uid in ownerReferences (by default the one replicaset() gives)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = dict(annotations)
    if uid:
        meta["uid"] = uid
    if created:
        meta["creationTimestamp"] = created
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": owner_uid or f"owner-{owner[1]}", "controller": True}]
    st: dict[str, Any] = {"phase": phase}
    if host_ip:
        st["hostIP"] = host_ip
        st["hostIPs"] = [{"ip": h} for h in (host_ips or [host_ip])]
    if ips:
        st["podIP"] = ips[0]
        st["podIPs"] = [{"ip": i} for i in ips]
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": st}


def node(name: str, *, internal: list[str], external: list[str] = (), zone: str | None = None,  # type: ignore[assignment]
         subnets: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if zone:
        meta["labels"]["topology.kubernetes.io/zone"] = zone
    if subnets is not None:
        meta["annotations"] = {"k8s.ovn.org/node-subnets": subnets if isinstance(subnets, str) else json.dumps(subnets)}
    addrs = [{"type": "InternalIP", "address": a} for a in internal]
    addrs += [{"type": "ExternalIP", "address": a} for a in external]
    addrs.append({"type": "Hostname", "address": name})
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "status": {"addresses": addrs}}


def service(name: str, ns: str = "default", *, ips: list[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ports": [{"port": 80}]}}


def replicaset(name: str, ns: str = "default", *, owner: tuple[str, str] | None,
               uid: str | None = None) -> dict[str, Any]:
    """A ReplicaSet; its uid by default the one pod() names its owner by (`owner-NAME`)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"owner-{name}"}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": f"owner-{owner[1]}", "controller": True}]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta,
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}


def run_enrich_config(tmp_path: Path, argv: list[str], environ: dict[str, str] | None = None) -> Any:
    """The EnrichConfig `flowscope run ARGV` would start its informers with (a kubeconfig naming
    an address nothing serves: the credentials are not loaded, nothing is contacted)."""
    import argparse

    from collector import config as C
    from collector.cli import _enrichment

    p = argparse.ArgumentParser(allow_abbrev=False)
    C.add_arguments(p)
    kc = tmp_path / "kc"
    kc.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                  "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                  "current-context: x\n")
    cfg = C.load(p.parse_args(["--kubeconfig", str(kc), *argv]), environ=environ or {})
    ecfg, _, problem = _enrichment(cfg, credentials=False)
    assert not problem, problem
    return ecfg
