"""List+watch informers for Pods, Nodes, Services and ReplicaSets, feeding the Index.

Why threads and raw responses: the collector's event loop runs the hot path, so the informers
live in their own daemon threads (one per kind) and only ever touch the Index through its writer
methods. They call the official `kubernetes` client's generated list methods with
`_preload_content=False` and parse the JSON themselves: deserializing 100k pods into client model
objects would cost seconds and hundreds of MB, while the index keeps a dozen fields per pod.

Layering (after kopf's watching.py):
  `Informer.run`          forever: list-then-watch, with exponential backoff between failures;
  `_list_then_watch`      list (paged; from its first page again, in larger pages, when a continue
                          token expires), replace the kind's cache atomically, then watch from the
                          list's resourceVersion, re-watching after each stream ends; returns on
                          410 Gone (or an older server's 500 saying the same: _expired) and on
                          "Too large resource version", so the outer loop relists; a list answer
                          over page_max_bytes (decompressed) drops the connection;
  `_watch_stream`         one HTTP watch stream: events, bookmarks, ERROR Status objects; an
                          event line over WATCH_EVENT_MAX_BYTES drops the connection.
Failures are counted by cause and logged once per cause (again only after a recovery); the last
good cache keeps serving throughout.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import urllib3
from kubernetes.client.exceptions import ApiException

from .config import EnrichConfig
from .index import KINDS, NODES, PODS, REPLICASETS, SERVICES, Index

log = logging.getLogger("flowscope.enrich")

# Ask for PartialObjectMetadata: the ReplicaSet spec (a whole pod template) is never needed
# (sent by MetadataLister).
_RS_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
_RS_WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

# (resource, API group) per kind, for RBAC messages.
RESOURCES = {PODS: ("pods", ""), NODES: ("nodes", ""), SERVICES: ("services", ""),
             REPLICASETS: ("replicasets", "apps")}


class Gone(Exception):
    """HTTP 410 / ERROR event with code 410: the resourceVersion is too old; relist."""


class TooLarge(Gone):
    """HTTP 504 / ERROR event "Too large resource version" (cause ResourceVersionTooLarge): the
    server has not reached the resourceVersion the watch resumes from. An API server whose cache
    lags answers so after waiting 3 s for it; so does every API server after etcd was restored
    from a backup without --bump-revision (the resourceVersion went back, and the history after
    it is another one): resuming later from that resourceVersion would skip or misapply what
    happened since. Relist, as client-go's reflector does (a watch error other than 429 or a
    refused connection ends its ListAndWatch)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


RETRY_AFTER_MAX = 120.0  # seconds: a server's Retry-After is honoured up to this
WATCH_FAILURES_BEFORE_RELIST = 5  # failed watches in a row after which the informer lists again
RELIST_CAUSES = frozenset(("forbidden", "bad_response", "server_error", "oversize_event"))  # ... of these causes
STATUS_CAUSES = frozenset(("forbidden", "unauthorized", "server_error"))  # answered with an HTTP status
# Failures a watch resumed from the same resourceVersion meets again, however long the stream ran
# first (the same event comes next): each counts towards a relist, as a refusal does.
REPEATING_CAUSES = frozenset(("oversize_event",))
# Failures of what an open watch stream sent (an event too large or malformed): the next stream
# the API server opens says nothing about them, only an event it delivers (or a stream that runs)
# does. Any other failure is answered by the next watch that opens, unless the stream it ended
# had failed at once (see _list_then_watch and _watch_stream).
STREAM_CONTENT_CAUSES = frozenset(("oversize_event", "bad_response"))
# The largest watch event line accepted, in bytes. etcd refuses objects over 1.5 MiB
# (--max-request-bytes), so a real event stays far below this; a longer line (or a stream that
# never sends its newline) is a broken server or proxy, and must not grow the buffer unbounded.
WATCH_EVENT_MAX_BYTES = 16 << 20
# At most this much is read from a watch stream or a list answer at once (one HTTP chunk may be
# larger), counted decompressed: urllib3 from 2.6 (pyproject requires it) inflates no more than the
# amount asked for; before it, a read inflated all the compressed bytes it took, up to ~1000 times
# as many (deflate's ratio): ~64 MiB of a gzip bomb held before the list's bound was checked.
READ_BYTES = 64 << 10
# The most one list answer (a page) may take once decompressed, in bytes: a server or proxy that
# sends more (a gzip bomb, 1 MB inflating to 1 GB of blanks; an answer without end) is not read
# on (oversize_page: the connection dropped, the last good cache kept, the list retried with
# backoff). A page of `limit` objects may take LIST_OBJECT_MAX_BYTES each on average, and at
# least LIST_PAGE_MAX_BYTES: real pods are 3-20 KB of JSON (a page of 500 ~3 MB), so pages up to
# 4096 objects (--enrich-list-chunk-size 500, grown 4 times after expiries: 2000) get 256 MiB,
# ten times what real ones take. An unpaged list (--enrich-list-chunk-size 0) is the whole kind in
# one answer: LIST_UNPAGED_MAX_BYTES, over what Kubernetes' largest supported cluster (150k pods)
# lists, and larger pages get no more.
LIST_PAGE_MAX_BYTES = 256 << 20
LIST_OBJECT_MAX_BYTES = 64 << 10
LIST_UNPAGED_MAX_BYTES = 4 << 30
# A paged list whose continue token expired (etcd compacted the revision its first page read: a
# list slower than the API server's compaction interval, 5 min by default) is listed again from
# its first page (each expiry counted as continue_expired) up to this many times before the
# attempt is given up (counted as list_expired, retried with backoff). Each expiry since the
# last completed list doubles the page, up to LIST_PAGE_GROWTH_MAX times list_chunk_size: fewer
# requests (each queued by API Priority and Fairness, each a round trip) for the list to beat
# the compaction, at a bounded cost in memory.
LIST_RESTARTS = 2
LIST_PAGE_GROWTH_MAX = 4


class ContinueExpired(Exception):
    """HTTP 410 to a list's continue request: etcd compacted the revision the list reads."""

    def __init__(self, objects: int) -> None:
        super().__init__(f"continue token expired after {objects} objects")
        self.objects = objects  # objects the pages read before it held


class ApiProblem(Exception):
    """A failed request or stream, with the counter label (cause) and a message for the log."""

    def __init__(self, cause: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After)


class Stopped(Exception):
    """stop() was called while a request was in flight."""


class Backoff:
    """Exponential backoff with jitter; reset after a success."""

    def __init__(self, *, initial: float, factor: float, maximum: float, jitter: float) -> None:
        self._initial, self._factor, self._max, self._jitter = initial, factor, maximum, jitter
        self._next = initial

    def reset(self) -> None:
        self._next = self._initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._max, self._next * self._factor)
        return delay * (1 + random.uniform(-self._jitter, self._jitter))


class KindStats:
    """Counters of one informer, read by the collector's metrics exporter."""

    __slots__ = ("events", "lists", "relists", "errors", "synced", "state", "resource_version",
                 "objects", "last_sync", "list_seconds", "last_error", "watches_overdue")

    def __init__(self) -> None:
        self.events: dict[str, int] = {"ADDED": 0, "MODIFIED": 0, "DELETED": 0, "BOOKMARK": 0}
        self.lists = 0          # completed full lists (first sync included)
        self.relists = 0        # lists after the first (410 Gone, or recovery from a failure)
        self.errors: dict[str, int] = {}
        self.synced = False     # a full list has been applied at least once
        self.state = "idle"     # idle | listing | watching | backoff | stopped
        self.resource_version = ""
        self.objects = 0        # objects in the last full list plus watch adds/deletes
        self.last_sync = 0.0    # wall time of the last completed list
        self.list_seconds = 0.0  # how long it took, first page to last (its continue token expires
                                 # when this exceeds the API server's etcd compaction interval)
        self.last_error = ""    # the latest failure while not recovered ("" after a recovery, or
                                # once a watch opens after most failures: see Informer._watch_stream)
        self.watches_overdue = 0  # watch streams the server had not ended its timeoutSeconds plus the
                                  # read timeout's slack after their answer began: cut and resumed

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k in self.__slots__ for v in [getattr(self, k)]}


Lister = Callable[..., Any]


def make_listers(api_client: Any, *, track: Callable[[Any], Any] | None = None,
                 gzip: bool = True) -> dict[str, Lister]:
    """Generated client list methods per kind (they accept watch=True, _preload_content=False).
    `track`: called with each ApiClient made here (enrich.Credentials.track). `gzip`: lists ask
    for a gzip-compressed answer (LIST_ENCODING; see ByVerb)."""
    from kubernetes import client

    lists = api_client
    if gzip:
        lists = client.ApiClient(api_client.configuration)
        lists.set_default_header("Accept-Encoding", LIST_ENCODING)
        if track is not None:
            track(lists)
    core, core_lists = client.CoreV1Api(api_client), client.CoreV1Api(lists)
    return {
        # (the pods' lister closes the ApiClient the three share: enrich.Enricher.stop)
        PODS: ByVerb(core_lists.list_pod_for_all_namespaces, core.list_pod_for_all_namespaces,
                     owns=[lists] if lists is not api_client else []),
        NODES: ByVerb(core_lists.list_node, core.list_node),
        SERVICES: ByVerb(core_lists.list_service_for_all_namespaces, core.list_service_for_all_namespaces),
        REPLICASETS: MetadataLister(api_client, track=track, gzip=gzip),
    }


# What lists ask for, with gzip on: client-go asks every request so (Go's transport does, unless
# the kubeconfig's disable-compression), and the API server compresses an answer of 128 KiB or
# more (APIResponseCompression, on since 1.16): a page of 500 pods is ~3 MB of JSON, ~10 times
# less compressed, and a 100k-pod list hundreds of MB. Watches do not ask: the API server never
# compresses their streams, and a proxy that did would hold events back to fill its blocks.
LIST_ENCODING = "gzip"


class ByVerb:
    """A kind's list method through two ApiClients: lists through one whose default headers ask
    for gzip (LIST_ENCODING; urllib3 decodes the answer as it is read), watches through the
    caller's. (The generated methods take no per-call header: see MetadataLister.) `owns`: the
    ApiClients close() closes."""

    def __init__(self, list_method: Lister, watch_method: Lister, *, owns: list[Any] | None = None) -> None:
        self._methods = {False: list_method, True: watch_method}
        self._owns = owns or []

    def __call__(self, **kwargs: Any) -> Any:
        return self._methods[bool(kwargs.get("watch"))](**kwargs)

    def close(self) -> None:
        for c in self._owns:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


class MetadataLister(ByVerb):
    """The ReplicaSets' list method, asking for PartialObjectMetadata(List) (see _RS_*_ACCEPT).

    Why not a per-call Accept (`_headers`): the generated methods of the client versions
    pyproject allows take none. kubernetes 29 to 35 refuse the argument (ApiTypeError: the
    informer failed every list and readiness never came), 36 takes it and then sets its own
    Accept over it (whole ReplicaSets, pod templates and all). An ApiClient's default headers
    are applied over the method's in every version (`header_params.update(self.default_headers)`
    in __call_api and param_serialize), so one ApiClient per verb, sharing the caller's
    Configuration (its credentials and their refresh), carries each Accept.
    """

    def __init__(self, api_client: Any, *, track: Callable[[Any], Any] | None = None, gzip: bool = True) -> None:
        from kubernetes import client

        clients = []
        for watch, accept in ((False, _RS_LIST_ACCEPT), (True, _RS_WATCH_ACCEPT)):
            c = client.ApiClient(api_client.configuration)
            c.set_default_header("Accept", accept)
            if gzip and not watch:
                c.set_default_header("Accept-Encoding", LIST_ENCODING)
            if track is not None:
                track(c)
            clients.append(c)
        super().__init__(*(client.AppsV1Api(c).list_replica_set_for_all_namespaces for c in clients), owns=clients)


class Informer:
    """One kind's list+watch loop, run in its own daemon thread by `start()`."""

    def __init__(self, *, kind: str, lister: Lister, index: Index, config: EnrichConfig,
                 on_synced: Callable[[], None] | None = None,
                 on_unauthorized: Callable[[], None] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self.kind = kind
        self.stats = KindStats()
        self._lister = lister
        self._index = index
        self._cfg = config
        self._on_synced = on_synced
        # called after a 401, before the retry: the credentials are loaded again (enrich.Credentials)
        self._on_unauthorized = on_unauthorized
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        self._logged: set[str] = set()
        self._gone_streak = 0   # watches in a row that expired (410) right after their list
        self._watch_failures = 0  # watches in a row that failed (errors, not 410) since one worked
        self._list_expiries = 0   # lists whose continue token expired since one completed
        self._opened_at = 0.0     # when the current watch stream opened (monotonic; 0: not open)
        self._stream_events = 0   # events the last watch stream applied (set when it ends)
        self._open_clears = True  # the next watch that opens ends the failing state (last_error)
        self._said_overdue = False  # a watch the client had to cut was logged (at WARNING, once)
        self._backoff = Backoff(initial=config.backoff_initial_seconds, factor=config.backoff_factor,
                                maximum=config.backoff_max_seconds, jitter=config.backoff_jitter)

    # lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.run, name=f"flowscope-informer-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        self.signal_stop()
        self.join(timeout)

    def signal_stop(self) -> None:
        """Tell the thread to stop (a watch stream it reads is cut) without waiting for it."""
        self._stop.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _abort(resp)
        self.stats.state = "stopped"

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the thread (a daemon: one stuck in a request to an
        API server that does not answer is left behind)."""
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))

    # layer 1: forever

    def run(self) -> None:
        """Thread body: list-then-watch until stopped, backing off after failures."""
        try:
            while not self._stop.is_set():
                pause = 0.0
                try:
                    self._list_then_watch()
                    # Returned: the watch's resourceVersion expired (410 Gone): relist, at once
                    # the first time (the server asked for it), backing off while watches keep
                    # expiring right after their list (a lagging API server behind a balancer).
                    if self._gone_streak > 1:
                        pause = self._backoff.next()
                except ApiProblem as e:
                    self._failed(e)
                    # Retry-After (429, 503) is honoured in the pause, where stop() can interrupt it
                    pause = max(self._backoff.next(), min(e.retry_after, RETRY_AFTER_MAX))
                except Stopped:
                    raise
                except Exception as e:  # noqa: BLE001 - a bug must not kill the informer forever
                    if self._stop.is_set():
                        # stop() closed the response under a read: http.client's close() sets
                        # its fp to None, and urllib3's reader then fails with AttributeError,
                        # not an OSError. That is the stop, not a failure to log and count.
                        raise Stopped from None
                    self._failed(ApiProblem("internal", f"{type(e).__name__}: {e}"))
                    log.debug("enrich: %s informer internal error", self.kind, exc_info=True)
                    pause = self._backoff.next()
                # The pause comes after the except blocks, which drop the failure: its traceback
                # holds the frames it went through, a list's among them, and with them whatever
                # they held (a page of raw objects) for the whole pause (up to RETRY_AFTER_MAX).
                if pause:
                    self._sleep(pause)
        except Stopped:
            pass
        finally:
            self.stats.state = "stopped"

    # layer 2: list, then watch from the list's resourceVersion

    def _list_then_watch(self) -> None:
        self.stats.state = "listing"
        recs, rv = self._list()
        self._index.replace(self.kind, recs)
        listed = len(recs)
        # the list's records are the index's now; this frame watches for as long as the watch
        # lasts, and must not keep every listed record alive beside its replacements
        del recs
        st = self.stats
        if st.lists:
            st.relists += 1
        st.lists += 1
        st.objects = self._index.kind_count(self.kind)
        st.resource_version = rv
        st.last_sync = time.time()
        self._recovered(after_list=True)
        if not st.synced:
            st.synced = True
            log.info("enrich: %s synced (%d objects, resourceVersion %s)", self.kind, listed, rv)
            if self._on_synced is not None:
                self._on_synced()
        while not self._stop.is_set():
            st.state = "watching"
            started = time.monotonic()
            failed = ""   # the cause of a failed watch, paused for after the except block
            try:
                rv, n = self._watch_stream(rv)
            except TooLarge as g:
                # The server answers this after waiting for the resourceVersion (3 s): the time it
                # took is no watch that worked. Counted (a relist from a lagging server, or after
                # an etcd restore, is worth seeing), and repeated ones back off as expiries do.
                st.errors["rv_too_large"] = st.errors.get("rv_too_large", 0) + 1
                self._gone_streak += 1
                level = logging.WARNING if self._gone_streak == 1 else logging.DEBUG
                log.log(level, "enrich: %s watch from resourceVersion %s refused: %s (the API server has not "
                        "reached it: its cache lags, or etcd was restored from a backup): relisting%s", self.kind,
                        rv, g.message,
                        "" if self._gone_streak == 1 else f" (again: {self._gone_streak} in a row, backing off)")
                return
            except Gone:
                # not an error (the relist is counted in relists): the normal end of a long watch
                if time.monotonic() - started >= 1.0:
                    self._gone_streak = 0  # the watch had worked a while: a new episode
                self._gone_streak += 1
                level = logging.INFO if self._gone_streak == 1 else logging.DEBUG
                log.log(level, "enrich: %s watch from resourceVersion %s expired (410 Gone): relisting%s", self.kind,
                        rv, "" if self._gone_streak == 1 else f" (again: {self._gone_streak} in a row, backing off)")
                return
            except ApiProblem as e:
                # Resume from the last resourceVersion we applied: cheaper than a relist, and
                # the server answers 410 when that is no longer possible.
                rv = st.resource_version  # the last event applied before the failure
                # A watch refused or out of reach, or a stream that worked (an event applied, or
                # open a while) and then was cut: the next watch the API server opens is the
                # recovery. Not a stream that failed at once, nor one that sent what cannot be
                # taken (it comes again): its next stream opens as easily.
                opened = self._opened_at
                worked = bool(opened) and (self._stream_events > 0 or time.monotonic() - opened >= 1.0)
                self._failed(e, open_clears=not opened or (worked and e.cause not in STREAM_CONTENT_CAUSES))
                # An HTTP status (403, 5xx) means the watch never opened, however long the answer
                # took; a bad body counts when it came at once. Refusals while a list may be
                # allowed count towards a relist; an outage (connection refused, TLS) or
                # throttling (Retry-After) does not: no heavy lists while the server is down or
                # recovering, the watch keeps resuming.
                # An event too large to take comes again on the resumed watch, after however
                # long a stream: it counts always, so a relist steps past it.
                # Any other client error (400, 404, 422: a resourceVersion the server will not take,
                # a resource it does not serve) is a refusal too: it counts, as client-go's
                # reflector lists again after any watch error but throttling (429).
                client_error = e.cause.startswith("http_4") and e.cause != "http_429"
                never_ran = e.cause in STATUS_CAUSES or client_error or time.monotonic() - started < 1.0
                counted = ((never_ran or e.cause in REPEATING_CAUSES) and (e.cause in RELIST_CAUSES or client_error)
                           and not e.retry_after)
                if counted:
                    self._watch_failures += 1
                elif not never_ran:
                    # it had worked a while (a dropped stream: a balancer's idle timeout on a quiet
                    # watch, a server restart): not stuck, and resuming soon loses nothing
                    self._watch_failures = 0
                    self._backoff.reset()
                pause = max(self._backoff.next(), min(e.retry_after, RETRY_AFTER_MAX))
                failed = e.cause
            if failed:
                # Paused out of the except block, which drops the failure: its traceback holds the
                # stream's frame, and with it the event line read so far (up to
                # WATCH_EVENT_MAX_BYTES of an oversize one), for the whole pause otherwise.
                self._sleep(pause)
                if counted and self._watch_failures % WATCH_FAILURES_BEFORE_RELIST == 0:
                    self._relist_after_failed_watches(failed)
                    return
                continue
            st.resource_version = rv
            if n == 0 and time.monotonic() - started < 1.0:
                # A server (a proxy) that ends streams at once with nothing in them must not make
                # us spin, nor freeze the cache at the last list: back off, count it, and list
                # again after as many such streams as failed watches.
                self._failed(ApiProblem("empty_watch", f"watch {self._resource()}: the stream ended at once "
                                        "without an event"), open_clears=False)
                self._watch_failures += 1
                self._sleep(self._backoff.next())
                if self._watch_failures % WATCH_FAILURES_BEFORE_RELIST == 0:
                    self._relist_after_failed_watches("empty_watch")
                    return
            else:
                self._recovered()  # a stream that ran (quiet or not): resets backoff and logging
        raise Stopped

    def _relist_after_failed_watches(self, cause: str) -> None:
        # A watch that keeps failing (RBAC granting list but not watch, a proxy that breaks
        # streams, repeated 5xx) would freeze the cache at the last list: list again, as
        # client-go's reflector does, so lists keep it current meanwhile (the backoff keeps
        # growing until a watch works).
        level = logging.WARNING if self._watch_failures == WATCH_FAILURES_BEFORE_RELIST else logging.DEBUG
        log.log(level, "enrich: %s: %d watches in a row failed (%s): listing again, and again after each %d "
                "failed watches until one works", self.kind, self._watch_failures, cause, WATCH_FAILURES_BEFORE_RELIST)

    def _list(self) -> tuple[list[Any], str]:
        # Paged and consistent (no resourceVersion), first list and relists alike, unlike
        # client-go's reflector (resourceVersion 0, then the last synced one, unpaged): the API
        # server answers those from its watch cache in one response, the limit ignored, which
        # for 100k pods is ~0.6 GiB of JSON decoded whole (a few GiB) in a collector that keeps
        # a few fields a pod; and a cache-served list may be behind what the watch applied.
        # Pages keep one page of objects alive, every page reads one etcd revision (no going
        # back in time), and from Kubernetes 1.31 (ConsistentListFromCache) the cache serves
        # them anyway.
        chunk = self._cfg.list_chunk_size
        restarts = 0
        while True:
            limit = self._page_size()
            started = time.monotonic()
            try:
                recs, rv = self._list_pages(limit)
            except ContinueExpired as x:
                objects = x.objects
            else:
                self._list_expiries = 0
                self.stats.list_seconds = round(time.monotonic() - started, 3)
                return recs, rv
            # (out of the except block: the attempt's records went with its frame)
            took = time.monotonic() - started
            # k8s.io/apiserver storage/etcd3: "The provided continue parameter is too old to display
            # a consistent list result. You can start a new list without the continue parameter, or
            # use the continue token in this response to retrieve the remainder of the results.
            # Continuing with the provided token results in an inconsistent list". Not that token:
            # the watch would start after changes to objects on the pages already read (a pod
            # deleted there stays in the cache for good). Nor client-go pager's answer, one unpaged
            # list: ~0.6 GiB of JSON decoded whole for 100k pods. A new paged list from the first
            # page (a fresh consistent snapshot), in larger pages (see LIST_RESTARTS).
            st = self.stats
            st.errors["continue_expired"] = st.errors.get("continue_expired", 0) + 1
            self._list_expiries += 1
            if restarts == LIST_RESTARTS:
                raise ApiProblem(
                    "list_expired", f"list {self._resource()}: the continue token expired {restarts + 1} times in a "
                    f"row, the last one after {took:.0f} s and {objects} objects (pages of {limit}): the list is slower "
                    "than the API server's etcd compaction (--etcd-compaction-interval, 5 min by default); the next lists "
                    f"read {chunk * LIST_PAGE_GROWTH_MAX} objects a page. Raise enrich.list_chunk_size "
                    f"(--enrich-list-chunk-size, now {chunk}: larger pages list faster, and hold more in memory "
                    "while listing) or the compaction interval; 0 lists unpaged, which never expires but decodes "
                    "the whole kind at once (GiBs of memory for 100k pods)")
            restarts += 1
            first = "continue_expired" not in self._logged
            self._logged.add("continue_expired")   # once an episode: again only after a list completes
            log.log(logging.WARNING if first else logging.DEBUG,
                    "enrich: %s list's continue token expired (410 Expired) after %.0f s and %d objects (pages of "
                    "%d): the list is slower than the API server's etcd compaction; listing again from the first "
                    "page, %d objects a page (restart %d of %d; the last good cache keeps serving)", self.kind, took,
                    objects, limit, self._page_size(), restarts, LIST_RESTARTS)

    def _page_size(self) -> int:
        """list_chunk_size, doubled for each list whose continue token expired since one
        completed, up to LIST_PAGE_GROWTH_MAX times (0 stays 0: unpaged)."""
        return self._cfg.list_chunk_size * min(LIST_PAGE_GROWTH_MAX, 1 << min(self._list_expiries, 8))

    def _list_pages(self, limit: int) -> tuple[list[Any], str]:
        """One paged list (`limit` objects a page, 0: unpaged) from its first page: its parsed
        records and resourceVersion. ContinueExpired when a continue token expires."""
        recs: list[Any] = []
        cont: str | None = None
        parse = self._index.parse
        doc: Any = None
        try:
            while True:
                kwargs: dict[str, Any] = {}
                if limit:
                    kwargs["limit"] = limit
                if cont:
                    kwargs["_continue"] = cont
                try:
                    body = self._request("list", kwargs, read_timeout=max(60.0, self._cfg.read_timeout_slack_seconds),
                                         max_bytes=page_max_bytes(limit),
                                         deadline=self._cfg.list_page_timeout_seconds)
                except Gone:
                    if not cont:
                        # No continue token to expire, nor a resourceVersion (lists ask for the
                        # latest): not etcd compaction racing a slow list (continue_expired), which
                        # larger pages help; an API server or a proxy in front of it misbehaving.
                        raise ApiProblem("list_gone", f"list {self._resource()}: 410 Gone to a list's first "
                                         "request, which names no resourceVersion nor continue token") from None
                    raise ContinueExpired(len(recs)) from None
                try:
                    doc = orjson.loads(body)
                except orjson.JSONDecodeError as e:
                    raise ApiProblem("bad_response",
                                     f"list {self._resource()} returned non-JSON: {e}") from None
                del body   # one page alive at a time: not this one's bytes while the next is read
                if isinstance(doc, dict) and doc.get("kind") == "Status":
                    raise ApiProblem("bad_response",
                                     f"list {self._resource()} returned a Status: {doc.get('message')}")
                # "items" must be there (null is taken as empty): a reply without it is not a list,
                # and taking it for an empty one would wipe this kind's cache.
                if not isinstance(doc, dict) or "items" not in doc or not isinstance(doc["items"] or [], list):
                    raise ApiProblem("bad_response", f"list {self._resource()} returned no items list")
                # Parse page by page so at most one page of raw objects is alive at a time.
                for obj in doc.get("items") or ():
                    rec = parse(self.kind, obj)
                    if rec is not None:
                        recs.append(rec)
                meta_v = doc.get("metadata")
                meta: dict[str, Any] = meta_v if isinstance(meta_v, dict) else {}
                rv = meta.get("resourceVersion")
                cont = meta.get("continue") or None
                del doc
                if not cont:
                    if not isinstance(rv, str) or not rv:
                        raise ApiProblem("bad_response",
                                         f"list {self._resource()} has no metadata.resourceVersion")
                    return recs, rv
        except BaseException:
            # Whoever keeps the failure (the backoff's pause in run() did, up to RETRY_AFTER_MAX;
            # a log handler that keeps records, an error reporter) keeps its traceback and this
            # frame with it: what the list read goes now, not when the failure is dropped.
            recs.clear()
            doc = obj = rec = None
            raise

    # layer 3: one watch stream

    def _watch_stream(self, rv: str) -> tuple[str, int]:
        """Apply the events of one watch stream; returns (last resourceVersion, events)."""
        timeout = watch_timeout(self._cfg.watch_timeout_seconds)
        kwargs: dict[str, Any] = {
            "watch": True, "resource_version": rv, "allow_watch_bookmarks": True, "timeout_seconds": timeout,
        }
        self._opened_at, self._stream_events = 0.0, 0
        slack = self._cfg.read_timeout_slack_seconds
        # (twice the slack: a read of the stream, which starts after the answer did, must not
        # time out at the cut below or before it, as a failure instead of an overdue stream)
        resp = self._open("watch", kwargs, read_timeout=timeout + 2 * slack)
        self._opened_at = opened = time.monotonic()
        if self._open_clears:
            # The API server answered the watch (200, the stream open): reachable, our
            # credentials taken, the watch allowed. The kind is not failing from now, not from the
            # stream's first event: a quiet kind's may come a minute later (Nodes: a BOOKMARK a
            # minute), and an alert on kinds_<kind>_failing would keep firing that long after the
            # API server is back. The rest of a recovery (backoff, relist count, the log's
            # "recovered") still waits for that event or a stream that runs (_recovered): a
            # balancer cutting quiet watches is not logged as an outage and a recovery each time.
            self.stats.last_error = ""
        n = 0
        index, kind, st = self._index, self.kind, self.stats
        limit = WATCH_EVENT_MAX_BYTES
        # Events are newline-delimited JSON, one per line, cut into reads anywhere. Each read is
        # searched for newlines once and kept as is; a line's pieces are joined once, when its
        # newline comes (appending to one buffer and searching it all again per read is
        # quadratic in an event sent in many small chunks).
        parts: list[bytes] = []   # the pieces of the current line, received so far
        held = 0                  # their total length
        ended = False             # the stream was read to its end
        # A real API server ends the stream at its timeoutSeconds; one that has not, the read
        # timeout's slack after it (a server or proxy keeping it alive with a byte now and then,
        # or bookmarks only, while events are held back), is cut and resumed from the last
        # resourceVersion applied, as if it had ended. Counted from the answer's start, not the
        # request's: the server's timeoutSeconds runs from when it takes the request up (k8s.io/
        # apiserver handlers ListResource, context.WithTimeout before the watch's answer begins),
        # after the connection, API Priority and Fairness' queue and authentication took their
        # time, which would otherwise come off the slack.
        with _cut_at(resp, opened + timeout + slack) as overdue:
            try:
                for chunk in resp.stream(amt=READ_BYTES, decode_content=True):
                    start = 0
                    end = chunk.find(b"\n")
                    while end >= 0:
                        if held + end - start > limit:
                            raise self._oversize(held + end - start, limit, rv)
                        if parts:
                            parts.append(chunk[start:end])
                            line = b"".join(parts)
                            parts.clear()
                            held = 0
                        else:
                            line = chunk[start:end]
                        if line and not line.isspace():
                            rv = self._event(line, rv, index, kind, st, n == 0)
                            n += 1
                        start = end + 1
                        end = chunk.find(b"\n", start)
                    if start < len(chunk):
                        held += len(chunk) - start
                        if held > limit:
                            raise self._oversize(held, limit, rv)
                        parts.append(chunk[start:] if start else chunk)
                if overdue.is_set():
                    raise OSError("the stream ended as it was cut")   # (it may end quietly)
                line = b"".join(parts)
                if line and not line.isspace():
                    rv = self._event(line, rv, index, kind, st)
                    n += 1
                ended = True
            except (ApiProblem, Gone):
                raise
            except Exception as e:
                # (cut under a read, urllib3 may fail with anything: AttributeError once http.client's
                # close() set its fp to None)
                if self._stop.is_set():
                    raise Stopped from None
                if overdue.is_set():
                    self._overdue(timeout, rv, n)
                elif isinstance(e, (urllib3.exceptions.HTTPError, OSError)):
                    raise ApiProblem(_conn_cause(e), f"watch {self._resource()} connection lost: {e}") from None
                else:
                    raise
            finally:
                self._stream_events = n
                if not ended:
                    # Left mid-stream (a bad or oversized event, an ERROR, 410): the rest of the
                    # response is still coming on this connection, which must not go back to the pool.
                    _abort(resp)
                self._close(resp)
        if self._stop.is_set():
            raise Stopped
        return rv, n

    def _overdue(self, timeout: int, rv: str, n: int) -> None:
        """A watch stream the client cut: the server had not ended it timeoutSeconds + the slack
        after its answer began. Not a failure (the watch resumes from `rv`, nothing is lost), but events
        were held back meanwhile: counted (watches_overdue), said once."""
        self.stats.watches_overdue += 1
        level = logging.DEBUG if self._said_overdue else logging.WARNING
        self._said_overdue = True
        log.log(level, "enrich: %s watch not ended by the API server %d s (its timeoutSeconds) + %g s after its "
                "answer began (%d events in it; a proxy keeping it open?): cut, resuming from resourceVersion %s "
                "(counted in kinds_%s_watches_overdue; said once)", self.kind, timeout,
                self._cfg.read_timeout_slack_seconds, n, rv, self.kind)

    def _oversize(self, size: int, limit: int, rv: str) -> ApiProblem:
        return ApiProblem("oversize_event", f"watch {self._resource()} sent an event line over {limit} bytes "
                          f"(read up to {size}, after resourceVersion {rv}): connection dropped")

    def _event(self, line: bytes, rv: str, index: Index, kind: str, st: KindStats, first: bool = False) -> str:
        try:
            ev = orjson.loads(line)
            typ = ev["type"]
            obj = ev["object"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise ApiProblem("bad_response", f"watch {self._resource()} sent a malformed event: {line[:200]!r}") from None
        if typ == "ERROR":
            code = _event_code(obj)
            if code == 410 or _expired(obj):
                raise Gone
            if _too_large(obj):
                raise TooLarge(str(obj.get("message") or "Too large resource version"))
            msg = obj.get("message") if isinstance(obj, dict) else obj
            # a Status's details.retryAfterSeconds (429, 5xx) is the Retry-After of an event
            details = obj.get("details") if isinstance(obj, dict) else None
            wait = details.get("retryAfterSeconds") if isinstance(details, dict) else None
            wait = float(wait) if isinstance(wait, int) and not isinstance(wait, bool) and wait > 0 else 0.0
            reason = obj.get("reason") if isinstance(obj, dict) else None
            said = f"{code}" if code is not None else f"without a code (reason {reason!r:.60})"
            raise ApiProblem(_status_cause(code) if code is not None else "error_no_code",
                             f"watch {self._resource()} ERROR event {said}: {msg}"
                             + (f" (retry after {wait:g} s)" if wait else ""), wait)
        if first:
            self._gone_streak = 0
        if first and self._logged:
            # A stream's first well-formed event: the watch works again, so the next outage is
            # logged. Said before the event is applied: whoever sees the event sees the recovery.
            self._recovered()
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        new_rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(new_rv, str) or not new_rv:
            new_rv = rv
        st.resource_version = new_rv
        if typ == "BOOKMARK":
            st.events["BOOKMARK"] += 1
            index.sweep()
            return new_rv
        if typ not in ("ADDED", "MODIFIED", "DELETED"):
            index.problem("bad_event", f"watch {self._resource()} sent unknown event type {typ!r}")
            return rv
        rec = index.parse(kind, obj)
        if rec is not None:
            if typ == "DELETED":
                index.delete(kind, rec)
            else:
                index.upsert(kind, rec)
            # what the cache holds (a DELETED for an unknown object, a repeated ADDED or a
            # MODIFIED before its ADDED would make a running tally drift)
            st.objects = index.kind_count(kind)
        st.events[typ] += 1   # after the index has it: a reader that saw the count sees the change
        return new_rv

    # HTTP plumbing

    def _open(self, verb: str, kwargs: dict[str, Any], *, read_timeout: float) -> Any:
        if self._stop.is_set():
            raise Stopped
        try:
            resp = self._lister(_preload_content=False,
                                _request_timeout=(self._cfg.connect_timeout_seconds, read_timeout), **kwargs)
        except ApiException as e:
            raise self._api_error(verb, e) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiProblem(_conn_cause(e), f"{verb} {self._resource()}: cannot reach the API server: {e}") from None
        with self._resp_lock:
            self._resp = resp
        if self._stop.is_set():
            self._close(resp)
            raise Stopped
        return resp

    def _request(self, verb: str, kwargs: dict[str, Any], *, read_timeout: float, max_bytes: int,
                 deadline: float) -> bytes:
        """The answer's body, decompressed; ApiProblem oversize_page past `max_bytes` (not read
        on: a gzip bomb or an endless answer must not grow it until the pod is OOM-killed), and
        list_timeout when it is not all there `deadline` seconds after the request (a trickle,
        each read within `read_timeout`, must not hold the list for ever)."""
        started = time.monotonic()
        resp = self._open(verb, kwargs, read_timeout=read_timeout)
        ended = False
        size = 0
        with _cut_at(resp, started + deadline) as overdue:
            try:
                # pieces joined once at the end: growing one bytearray instead peaked 3-5 MiB higher
                # (benchmarks/RESULTS.md)
                parts: list[bytes] = []
                for chunk in resp.stream(amt=READ_BYTES, decode_content=True):
                    parts.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        parts.clear()   # (the failure's traceback keeps this frame)
                        raise ApiProblem("oversize_page", f"{verb} {self._resource()}: the answer took over {max_bytes} "
                                         f"bytes (read up to {size}, decompressed): connection dropped")
                if overdue.is_set():
                    raise OSError("the answer ended as it was cut")   # (it may end quietly)
                ended = True
                body = b"".join(parts)
                parts.clear()
                return body
            except ApiProblem:
                raise
            except Exception as e:
                # (cut under a read, urllib3 may fail with anything: AttributeError once http.client's
                # close() set its fp to None, as under a stop)
                if self._stop.is_set():
                    raise Stopped from None
                if overdue.is_set():
                    raise ApiProblem("list_timeout", f"{verb} {self._resource()}: the answer was not all there "
                                     f"{deadline:g} s after the request (read {size} bytes of it, decompressed; "
                                     "--enrich-list-page-timeout-seconds): connection dropped") from None
                if isinstance(e, (urllib3.exceptions.HTTPError, OSError)):
                    raise ApiProblem(_conn_cause(e), f"{verb} {self._resource()}: response cut: {e}") from None
                raise
            finally:
                if not ended:
                    _abort(resp)   # the rest may still be coming: this connection must not go back to the pool
                self._close(resp)

    def _close(self, resp: Any) -> None:
        with self._resp_lock:
            if self._resp is resp:
                self._resp = None
        try:
            resp.release_conn()
        except Exception:  # noqa: BLE001 - best effort on a dead connection
            pass

    def _api_error(self, verb: str, e: ApiException) -> Exception:
        code = e.status or 0
        res = self._resource()
        detail = _status_message(e.body) or e.reason or ""
        if code == 410 or (verb == "watch" and _expired(_status_doc(e.body))):
            return Gone()
        if verb == "watch" and _too_large(_status_doc(e.body)):
            return TooLarge(detail or "Too large resource version")
        if code == 403:
            return ApiProblem("forbidden", f"forbidden: needs '{verb}' on '{res}' (grant list and watch on "
                              f"{res} to flowscope's ServiceAccount): {detail}")
        if code == 401:
            return ApiProblem("unauthorized", f"unauthorized: the API server rejected our credentials for "
                              f"'{verb}' on '{res}' (expired token or wrong kubeconfig?): {detail}")
        if code == 0:
            # the client folds urllib3's failure into the reason, "SSLError\n[SSL: ...] ...":
            # one line, and a certificate the CA does not vouch for told apart from a dead server
            reason = " ".join(str(e.reason or "").split())
            if reason.startswith("SSLError"):
                return ApiProblem("tls", f"{verb} {res}: TLS: {reason[len('SSLError'):].strip()} (check the CA: "
                                  "the kubeconfig's certificate-authority, or the ServiceAccount's ca.crt in a pod)")
            return ApiProblem("connection", f"{verb} {res}: {reason}")
        retry_after = _retry_after(e.headers)
        return ApiProblem(_status_cause(code), f"{verb} {res}: HTTP {code}: {detail}"
                          + (f" (Retry-After {retry_after:g} s)" if retry_after else ""), retry_after)

    def _resource(self) -> str:
        res, group = RESOURCES[self.kind]
        return f"{res}.{group}" if group else res

    # bookkeeping

    def _failed(self, e: ApiProblem, *, open_clears: bool = True) -> None:
        """Count and keep (last_error) a failure; `open_clears`: the next watch the API server
        opens ends it (see _watch_stream); else only a recovery does (_recovered: an event, a
        stream that ran, a list while no watch fails)."""
        st = self.stats
        st.errors[e.cause] = st.errors.get(e.cause, 0) + 1
        st.state = "backoff"
        st.last_error = str(e)
        self._open_clears = open_clears
        if e.cause == "unauthorized" and self._on_unauthorized is not None:
            # The API server no longer takes the credentials (a bound token expired, a token
            # revoked): the next attempt presents them loaded again, as client-go's do.
            self._on_unauthorized()
        if e.cause not in self._logged:
            self._logged.add(e.cause)
            level = logging.ERROR if e.cause in ("forbidden", "unauthorized") else logging.WARNING
            # its text, not the exception: a handler that keeps records (a test's, a buffering
            # one) would keep its traceback, and the frames and pages that holds, with it
            log.log(level, "enrich: %s informer: %s (retrying with backoff; the last good cache keeps "
                    "serving; repeats of this cause are counted, not logged)", self.kind, str(e))
        else:
            log.debug("enrich: %s informer: %s", self.kind, str(e))

    def _recovered(self, *, after_list: bool = False) -> None:
        # A list that works does not end a run of watches expiring right after their lists:
        # only a watch that works (or runs a while) does, and then the backoff starts over.
        if not after_list:
            self._gone_streak = 0
            self._watch_failures = 0
        if not self._gone_streak and not self._watch_failures:
            self._backoff.reset()
        if after_list and self._watch_failures:
            return  # a list that works while watches fail: not recovered (nor logged as such)
        self.stats.last_error = ""
        if self._logged:
            log.info("enrich: %s informer recovered", self.kind)
            self._logged.clear()

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped


def watch_timeout(longest: int) -> int:
    """The timeoutSeconds one watch asks for: at random between half of `longest` and all of it.

    client-go's reflector asks each watch for a random timeout (minWatchTimeout 5 min, times 1
    to 2), so the watches of many clients reconnected at once (an API server restart) do not
    end and re-watch in the same second ever after: a DaemonSet of collectors, four watches
    each, would hit the API server in lockstep every `longest` seconds. Spread below `longest`,
    not above: the read timeout that notices a dead connection is the watch's timeout plus the
    slack, and must keep its bound."""
    return max(1, round(longest * (0.5 + random.random() / 2)))


def page_max_bytes(limit: int) -> int:
    """The most one list answer of `limit` objects a page (0: unpaged) may take, decompressed
    (see LIST_PAGE_MAX_BYTES)."""
    if not limit:
        return LIST_UNPAGED_MAX_BYTES
    return min(LIST_UNPAGED_MAX_BYTES, max(LIST_PAGE_MAX_BYTES, limit * LIST_OBJECT_MAX_BYTES))


@contextlib.contextmanager
def _cut_at(resp: Any, deadline: float) -> Iterator[threading.Event]:
    """Cut `resp`'s connection (as signal_stop does) at `deadline` (time.monotonic()) unless the
    block ended before; the event yielded is set once it was cut. A read blocks until it has
    READ_BYTES or the answer ends: a server or proxy that trickles a byte now and then (each
    read within the read timeout) holds it for ever, and only a cut from another thread ends it."""
    overdue = threading.Event()

    def cut() -> None:
        overdue.set()
        _abort(resp)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        yield overdue
    finally:
        timer.cancel()


def _abort(resp: Any) -> None:
    # shutdown() (urllib3 >= 2.3) unblocks a thread stuck in a socket read; close() may not.
    for name in ("shutdown", "close"):
        fn = getattr(resp, name, None)
        if fn is not None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort
                pass


def _status_doc(body: Any) -> Any:
    """The Status object of an error answer's body (None when it is not JSON)."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# What API servers said instead of 410 for a resourceVersion etcd compacted away: "too old
# resource version: RV (OLDEST)" as a 500 (kubernetes/kubernetes#14384, the watch cache before
# 1.2), and etcd3's own error wrapped in a 500 InternalError before interpretWatchError turned it
# into 410 Expired ("Internal error occurred: etcdserver: mvcc: required revision has been
# compacted"). Resuming from that resourceVersion can only get the same answer: relist.
EXPIRED_MESSAGES = ("too old resource version", "required revision has been compacted")


def _expired(status: Any) -> bool:
    """A Status saying the resourceVersion expired, whatever its code: reason Expired or Gone
    (client-go's IsResourceExpired and IsGone go by the reason), or a 500 with the message of a
    compacted revision (EXPIRED_MESSAGES)."""
    if not isinstance(status, dict):
        return False
    if status.get("reason") in ("Expired", "Gone"):
        return True
    msg = status.get("message")
    return (status.get("code") == 500 and isinstance(msg, str)
            and any(m in msg.lower() for m in EXPIRED_MESSAGES))


def _too_large(status: Any) -> bool:
    """A Status saying "Too large resource version" (k8s.io/apiserver storage
    NewTooLargeResourceVersionError: 504 Timeout, details.causes reason ResourceVersionTooLarge;
    some releases sent it without the cause, the message then says it)."""
    if not isinstance(status, dict) or status.get("code") != 504:
        return False
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if isinstance(causes, list) and any(isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge"
                                        for c in causes):
        return True
    msg = status.get("message")
    return isinstance(msg, str) and "Too large resource version" in msg


def _status_message(body: Any) -> str:
    if not body:
        return ""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return doc["message"]
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return text[:200]


# The HTTP code of each metav1.StatusReason (k8s.io/apimachinery/pkg/apis/meta/v1 types.go documents
# one per reason): a Status whose `code` is missing (an aggregated API server's or a proxy's ERROR
# event) is counted by its reason as the same answer with its code would be.
REASON_CODES = {
    "BadRequest": 400, "Unauthorized": 401, "Forbidden": 403, "NotFound": 404, "MethodNotAllowed": 405,
    "NotAcceptable": 406, "AlreadyExists": 409, "Conflict": 409, "Gone": 410, "Expired": 410,
    "RequestEntityTooLarge": 413, "UnsupportedMediaType": 415, "Invalid": 422, "TooManyRequests": 429,
    "InternalError": 500, "ServerTimeout": 500, "StoreReadError": 500, "ServiceUnavailable": 503, "Timeout": 504,
}


def _event_code(status: Any) -> int | None:
    """The HTTP code of a watch ERROR event's Status: its `code` (an integer), else the one its
    `reason` stands for (REASON_CODES), else None (counted as error_no_code, not as "http_None")."""
    if not isinstance(status, dict):
        return None
    code = status.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and code > 0:
        return code
    reason = status.get("reason")
    return REASON_CODES.get(reason) if isinstance(reason, str) else None


def _status_cause(code: Any) -> str:
    if code == 401:
        return "unauthorized"
    if code == 403:
        return "forbidden"
    if isinstance(code, int) and code >= 500:
        return "server_error"
    return f"http_{code}"


def _retry_after(headers: Any) -> float:
    """Seconds from a Retry-After header in its delay-seconds form (0 when absent or a date)."""
    try:
        v = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(v)) if v is not None else 0.0
    except (TypeError, ValueError, AttributeError):
        return 0.0


def _conn_cause(e: BaseException) -> str:
    if isinstance(e, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "timeout"
    return "connection"
