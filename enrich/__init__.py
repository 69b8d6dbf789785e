"""Kubernetes enrichment for flowscope: informers + the IP -> identity index.

The collector's composition root does:

    cfg = enrich.config_from_args(args)            # after enrich.add_cli_arguments(parser)
    enricher = enrich.Enricher(cfg) if cfg.enabled else None
    enricher.start()                               # non-blocking; informer threads
    enricher.wait_ready(timeout)                   # or gate /readyz on enricher.ready
    batch.to_json(enricher=enricher)               # the encoder calls enricher.enrich(...)
    enricher.stop()

`Enricher.enrich` is the Enricher contract of docs/INTERNALS.md. `Enricher.from_objects` builds a
ready enricher from plain API dicts, without an API server (tests, benchmarks, offline decode).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .config import EnrichConfig, EnrichConfigError, add_cli_arguments, config_from_args, parse_bool
from .index import FLOW_DIRECTIONS, KINDS, NODES, PODS, REPLICASETS, SERVICES, Index  # noqa: F401
from .informer import Informer, Lister, make_listers

_log = logging.getLogger("flowscope.enrich")

__all__ = [
    "EnrichConfig", "EnrichConfigError", "Enricher", "Index", "add_cli_arguments", "config_from_args",
    "parse_bool", "load_api_client", "check_kubeconfig", "Credentials",
]


def load_api_client(config: EnrichConfig) -> Any:
    """A kubernetes ApiClient per the config: explicit kubeconfig, in-cluster, or default kubeconfig.

    Raises kubernetes.config.ConfigException with the client's message when nothing is usable,
    so the collector can fail at start with it.
    """
    return Credentials(config).api_client()


# 401s from the four informers at once load the credentials once, and an exec plugin whose
# token keeps being refused is not run more often than this.
CREDENTIALS_RELOAD_MIN_SECONDS = 5.0
# How old the copy of a kubeconfig's tokenFile gets before the file is read again: client-go's
# file token source (transport.NewCachedFileTokenSource) keeps it a minute, so a projected
# token the kubelet rotated is taken well before the old one expires.
TOKEN_FILE_MAX_AGE_SECONDS = 60.0
# TCP keepalive on the API server connections: a watch is quiet for up to a minute between
# bookmarks (longer where the API server sends none), and a peer that went away without a word
# (its node powered off, a balancer that drops idle flows silently, as Azure's does after 4 min,
# a NAT entry expired) left the informer reading for its read timeout, the watch's timeout plus
# the slack (up to 330 s), the cache frozen meanwhile. Probes after KEEPALIVE_IDLE_SECONDS of
# quiet, KEEPALIVE_INTERVAL_SECONDS apart, KEEPALIVE_PROBES unanswered ones ending the
# connection: a dead one is noticed within a minute (client-go asks for keepalive too, and
# pings its HTTP/2 connections every 30 s), and the probes keep an idle balancer's flow alive.
KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 3


class _ClientErrors(logging.Handler):
    """Errors the `kubernetes` client logs while it loads credentials instead of raising them:
    an exec plugin (`aws eks get-token`, kubelogin) that cannot be run or fails, an auth
    provider that cannot refresh. It logs them with the root logger's `logging.error`, which also
    set up Python's default stderr handler when the root logger had none (a line in another
    format, outside --log-format json), and goes on without credentials: every request was then
    refused (401) with nothing saying why. Attached to the root logger while loading, it takes
    those records (and none other) so that the load can fail with them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "root" and "kubernetes" in record.pathname.replace("\\", "/").split("/")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))

    def __enter__(self) -> _ClientErrors:
        root = logging.getLogger()
        self._others_handlers = [h for h in root.handlers]
        for h in self._others_handlers:          # kept from the handlers already there, for the load
            h.addFilter(self._others)
        root.addHandler(self)
        return self

    def _others(self, record: logging.LogRecord) -> bool:
        return not self.filter(record)

    def __exit__(self, *_exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        for h in self._others_handlers:
            h.removeFilter(self._others)


class Credentials:
    """The API server credentials in one client Configuration (shared by every ApiClient the
    informers use), loaded again when they go stale.

    The `kubernetes` client loads a kubeconfig's credentials once: a user's `tokenFile` is read
    at start and never again, and an exec plugin's token without `expirationTimestamp` is kept
    for good, so once the API server stopped taking them (a bound token expired, a token
    revoked) every request was refused (401) until a restart, the cache frozen. client-go reads a
    tokenFile again once its copy is a minute old and runs the exec plugin again on a 401
    (plugin/pkg/client/auth/exec); so does this: `refused()` (an informer got a 401) loads the
    credentials again, and a tokenFile user's are loaded again before a request once
    TOKEN_FILE_MAX_AGE_SECONDS old. (In a pod without --kubeconfig the client reads the
    ServiceAccount token again every minute itself.) A client certificate authenticates a
    connection, not a request: when one is refused, or a reload names other TLS files, the
    ApiClients' connection pools are made again (_renew_pools)."""

    def __init__(self, config: EnrichConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes import client

        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded = float("-inf")
        self._token_file = False
        self._inner: Callable[[Any], None] | None = None
        self.conf: Any = client.Configuration()
        # The ApiClients made on `conf` (api_client(), and the ones given to track()): each
        # holds a connection pool made with the TLS files `conf` named then (see _renew_pools).
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()

    def api_client(self) -> Any:
        """Load the credentials and make the ApiClient that uses them."""
        from kubernetes import client

        _check_kubeconfig_shape(self._config)
        self._load()
        # No urllib3 retries inside a request: the informers retry with their own backoff, log
        # once per cause, honour Retry-After where stop() can interrupt it, and count every
        # failure (urllib3's retries logged a warning each and slept out Retry-After unseen).
        self.conf.retries = False
        # (taken by the client's RESTClientObject where Configuration has socket_options)
        self.conf.socket_options = keepalive_socket_options()
        return self.track(client.ApiClient(self.conf))

    def track(self, api_client: Any) -> Any:
        """Keep `api_client` (made on `conf`) in step with credentials loaded again: its
        connections are renewed when they change how the client authenticates (_renew_pools)."""
        self._clients.add(api_client)
        return api_client

    def refused(self) -> None:
        """The API server answered 401: load the credentials again (unless just done)."""
        with self._lock:
            if self._clock() - self._loaded < CREDENTIALS_RELOAD_MIN_SECONDS:
                return
            self._reload("the API server refused them (401)", refused=True)

    def _load(self) -> None:
        import os

        from kubernetes import config as kconfig

        config, conf = self._config, self.conf
        # (a user without a token leaves the hook as it is: it must not chain to itself)
        conf.refresh_api_key_hook = None
        with _ClientErrors() as errors:
            if config.kubeconfig:
                kconfig.load_kube_config(config_file=config.kubeconfig, context=config.context,
                                         client_configuration=conf, persist_config=False)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                kconfig.load_incluster_config(client_configuration=conf)
            else:
                # None: the client's default, $KUBECONFIG or ~/.kube/config.
                kconfig.load_kube_config(context=config.context, client_configuration=conf, persist_config=False)
        self._loaded = self._clock()
        self._token_file = _uses_token_file(config)
        # the client's own hook (exec expiry, the in-cluster token file) of this load, chained
        self._inner = conf.refresh_api_key_hook
        conf.refresh_api_key_hook = self._refresh
        if errors.messages:
            # (after the hook is set again: a failed reload keeps the earlier credentials working)
            from kubernetes.config import ConfigException

            raise ConfigException("its credentials cannot be loaded (the kubeconfig user's exec plugin or auth "
                                  f"provider failed): {'; '.join(dict.fromkeys(errors.messages))}")

    def _refresh(self, c: Any) -> None:
        """The Configuration's refresh_api_key_hook, run before each request."""
        inner = self._inner   # (read now: the hook of the latest load, never one a reload replaced)
        if inner is not None:
            inner(c)
            c.refresh_api_key_hook = self._refresh   # (the client's hook sets itself again as it runs)
        if self._token_file and self._clock() - self._loaded >= TOKEN_FILE_MAX_AGE_SECONDS:
            with self._lock:
                if self._clock() - self._loaded >= TOKEN_FILE_MAX_AGE_SECONDS:
                    self._reload(f"its tokenFile copy is {TOKEN_FILE_MAX_AGE_SECONDS:g} s old", logging.DEBUG)

    def _reload(self, why: str, level: int = logging.INFO, *, refused: bool = False) -> None:
        conf = self.conf
        tls = (conf.ssl_ca_cert, conf.cert_file, conf.key_file)
        try:
            self._load()
        except Exception as e:  # noqa: BLE001 - the old credentials stay; the next 401 tries again
            self._loaded = self._clock()
            _log.warning("enrich: loading the API credentials again (%s) failed: %s", why, " ".join(str(e).split()))
        else:
            _log.log(level, "enrich: API credentials loaded again (%s)", why)
            # A token goes with each request; a client certificate with each connection. Refused
            # (401) with one, or given other TLS files, the connections go: the ones kept alive
            # would present the old certificate again.
            if (conf.ssl_ca_cert, conf.cert_file, conf.key_file) != tls or (refused and conf.cert_file):
                self._renew_pools()

    def _renew_pools(self) -> None:
        """Each tracked ApiClient's connection pool made again from `conf`. The client makes
        its pool once, with the TLS files (CA, client certificate and key) `conf` named then:
        credentials loaded again whose certificate is inline (client-certificate-data, an exec
        plugin's clientCertificateData) are in another file, which the old pool never reads. As
        client-go closes its connections when its client certificate changes. Requests under
        way finish on the old pool's connections, which close as they are released."""
        from kubernetes.client import rest

        for c in list(self._clients):
            old = c.rest_client
            c.rest_client = rest.RESTClientObject(self.conf)
            try:
                old.pool_manager.clear()
            except Exception:  # noqa: BLE001 - best effort: the old pool is dropped anyway
                pass


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    """urllib3's socket options (TCP_NODELAY) plus TCP keepalive with the KEEPALIVE_* timings
    (an option the platform does not define is left out)."""
    import socket

    import urllib3

    opts = list(urllib3.connection.HTTPConnection.default_socket_options)
    opts.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        opt = getattr(socket, name, None)
        if opt is not None:
            opts.append((socket.IPPROTO_TCP, opt, value))
    return opts


# The oldest urllib3 whose stream(amt) returns no more than `amt` decompressed (2.6:
# CVE-2025-66471); pyproject requires it, but a `pip install --no-deps` (or an image's own
# urllib3) can bring an older one.
URLLIB3_BOUNDED_READS = (2, 6)


def urllib3_warning(version: str | None = None) -> str:
    """What to warn of at start when the installed urllib3 (or `version`) is older than
    URLLIB3_BOUNDED_READS; "" when it is not (or its version cannot be read). Enrichment works
    with it, but one read of a compressed answer inflates all the compressed bytes it took (up
    to ~1000 times as many): a gzip bomb from a broken API server or proxy takes ~64 MiB per
    READ_BYTES read before the informer's page bound is checked."""
    import re

    if version is None:
        import urllib3

        version = str(getattr(urllib3, "__version__", ""))
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m[1]), int(m[2])) >= URLLIB3_BOUNDED_READS:
        return ""
    need = ".".join(map(str, URLLIB3_BOUNDED_READS))
    return (f"urllib3 {version} is installed; Kubernetes enrichment needs {need} or later (flowscope's "
            f"requirement; a --no-deps install leaves an older one): before {need} one read of a compressed "
            "answer from the API server inflates all it took, ~1000 times as much (64 KiB of a gzip bomb from "
            f"a broken server or proxy: ~64 MiB) before the informers' bounds apply. Install urllib3>={need}")


def _uses_token_file(config: EnrichConfig) -> bool:
    """True when the kubeconfig user in use takes its token from `tokenFile` (no token, exec
    plugin or auth provider before it, as the client chooses)."""
    files = _kubeconfig_files(config)
    if not files:
        return False
    try:
        from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

        merged = KubeConfigMerger(files)
        if merged.config is None:
            return False
        user = KubeConfigLoader(config_dict=merged.config, active_context=config.context,
                                config_base_path=None)._user
    except Exception:  # noqa: BLE001 - loaded already: this only decides the periodic re-read
        return False
    return user is not None and "tokenFile" in user and not any(k in user for k in ("token", "exec", "auth-provider"))


def _kubeconfig_files(config: EnrichConfig) -> str:
    """The kubeconfig PATH[:PATH...] load_api_client reads ("" in a pod without --kubeconfig)."""
    import os

    return config.kubeconfig or ("" if os.environ.get("KUBERNETES_SERVICE_HOST")
                                 else os.environ.get("KUBECONFIG") or "~/.kube/config")


def _check_kubeconfig_shape(config: EnrichConfig) -> None:
    import os

    from kubernetes.config import ConfigException

    paths = [os.path.expanduser(p) for p in _kubeconfig_files(config).split(os.pathsep) if p]
    for path in paths:
        problem = kubeconfig_shape_error(path)
        if problem:   # (the caller names the setting, and so the file when it is the only one)
            raise ConfigException(f"{path}: {problem}" if len(paths) > 1 else problem)


def check_kubeconfig(config: EnrichConfig) -> None:
    """What load_api_client checks of the kubeconfig (its files, the context and the cluster and
    user it names) without loading the credentials: no exec plugin (`aws eks get-token`,
    kubelogin) or auth provider is run, nothing is read from the network. In a pod without
    --kubeconfig there is nothing to check. Raises kubernetes.config.ConfigException."""
    from kubernetes.config import ConfigException
    from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

    files = _kubeconfig_files(config)
    if not files:
        return
    _check_kubeconfig_shape(config)
    merged = KubeConfigMerger(files)   # (expands ~, skips missing files, as the client does)
    if merged.config is None:
        raise ConfigException("Invalid kube-config file. No configuration found.")
    # (the constructor resolves the context, its cluster and user, as load_kube_config does
    # before it loads the credentials, with the same messages)
    loader = KubeConfigLoader(config_dict=merged.config, active_context=config.context, config_base_path=None)
    # The files the cluster and user name (certificate-authority, client-certificate, client-key,
    # relative to the kubeconfig's directory): load_kube_config reads them after the credentials
    # (_load_cluster_info, "File does not exist: PATH"), so without this `flowscope config` printed
    # a kubeconfig whose CA file is missing and `run` refused it. An exec plugin may hand over the
    # client certificate itself, and then the client skips the user's files: with one, only the
    # cluster's CA is checked (the plugin is not run).
    user = loader._user
    if user is not None and "exec" in user:
        loader.cert_file = loader.key_file = None
    loader._load_cluster_info()


def kubeconfig_shape_error(path: str) -> str | None:
    """What is wrong with the layout of a kubeconfig file, in its terms (the client's own errors
    for a wrong layout are Python's: "'int' object is not iterable"); None when it looks like a
    kubeconfig, or cannot be read (the client says why)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError):
        return None
    except yaml.YAMLError as exc:
        return f"not YAML: {' '.join(str(exc).split())}"
    if doc is None:
        return None     # empty: the client's "no configuration found"
    if not isinstance(doc, dict):
        return f"expected a kubeconfig (a mapping with clusters, contexts and users), got a {type(doc).__name__}"
    for section, inner in (("clusters", "cluster"), ("contexts", "context"), ("users", "user")):
        entries = doc.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            return f"{section}: expected a list of {{name, {inner}}}, got {entries!r:.60}"
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get(inner), dict):
                return f"{section}[{i}]: expected a mapping with a name and a {inner} mapping"
            server = e[inner].get("server") if section == "clusters" else None
            if server is not None and not isinstance(server, str):
                return f"{section}[{i}] ({e['name']}): server: expected a URL, got {server!r:.60}"
    cur = doc.get("current-context")
    if cur is not None and not isinstance(cur, str):
        return f"current-context: expected a context name, got {cur!r:.60}"
    return None


def kubeconfig_contexts(files: str) -> list[str] | None:
    """The context names of a kubeconfig PATH[:PATH...] list (as the client merges it: the files
    that exist, ~ expanded), or None when one of them cannot be read as a kubeconfig (the
    client's own error says why)."""
    import os

    import yaml

    names: list[str] = []
    for path in (os.path.expanduser(p) for p in files.split(os.pathsep) if p):
        if not os.path.exists(path):
            continue
        if kubeconfig_shape_error(path):
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        for entry in doc.get("contexts") or []:
            if entry["name"] not in names:
                names.append(entry["name"])
    return names


def _direction_only(src: bytes, dst: bytes, agent: bytes, t_ms: int, direction: int) -> bytes:
    """The enrich() of a disabled Enricher: the exporter's direction, nothing of Kubernetes."""
    return FLOW_DIRECTIONS[direction + 1] if -1 <= direction <= 2 else b""


class Enricher:
    """The index plus the four informers that keep it current."""

    def __init__(self, config: EnrichConfig | None = None, *, api_client: Any = None,
                 listers: dict[str, Lister] | None = None, clock: Callable[[], float] | None = None,
                 compiled: bool | None = None) -> None:
        self.config = config if config is not None else EnrichConfig()
        kwargs: dict[str, Any] = {}
        if clock is not None:
            kwargs["clock"] = clock
        self.index = Index(cluster_name=self.config.cluster_name,
                           infra_namespace_prefixes=self.config.infra_namespace_prefixes,
                           flow_layer_rule=self.config.flow_layer_rule,
                           own_namespace=self.config.resolved_own_namespace(),
                           tombstone_seconds=self.config.tombstone_seconds, pod_networks=self.config.pod_networks,
                           compiled=compiled, **kwargs)
        # The hot path, bound straight to the index's fastest reader (compiled when built,
        # compiled=False forces the pure-Python reference) so a call is one C or Python frame.
        self.enrich: Callable[[bytes, bytes, bytes, int, int], bytes] = self.index.enrich_fn
        if not self.config.enabled:
            # Disabled: no Kubernetes field at all (not even K8S_FlowLayer), the direction as given.
            self.enrich = _direction_only
        else:
            # With the compiled reader, the decoders' encoder calls it in C (see enrich/_fast.pyx).
            reader = self.index._reader
            if reader is not None:
                self.c_api = reader.c_api
        self._api_client = api_client
        self._listers = listers
        self._made_listers: dict[str, Lister] = {}  # the listers start() made (closed by stop())
        self._informers: dict[str, Informer] = {}
        self._ready = threading.Event()
        self._static = False

    @classmethod
    def from_objects(cls, *, pods: Iterable[dict[str, Any]] = (), nodes: Iterable[dict[str, Any]] = (),
                     services: Iterable[dict[str, Any]] = (), replicasets: Iterable[dict[str, Any]] = (),
                     config: EnrichConfig | None = None, clock: Callable[[], float] | None = None,
                     compiled: bool | None = None) -> Enricher:
        """A ready enricher built from API objects as plain dicts (no informers)."""
        self = cls(config, clock=clock, compiled=compiled)
        idx = self.index
        # ReplicaSets and Nodes first so pods render with their owners and zones at once.
        for kind, objs in ((REPLICASETS, replicasets), (NODES, nodes), (SERVICES, services), (PODS, pods)):
            idx.replace(kind, [r for r in (idx.parse(kind, o) for o in objs) if r is not None])
        self._static = True
        self._set_ready()
        return self

    # lifecycle

    def start(self) -> None:
        """Start the informer threads (non-blocking). No-op when disabled or already started."""
        if self._static or self._informers or not self.config.enabled:
            if not self.config.enabled:
                self._set_ready()
            return
        listers = self._listers
        refused: Callable[[], None] | None = None
        if listers is None:
            track: Callable[[Any], Any] | None = None
            if self._api_client is None:
                credentials = Credentials(self.config)
                self._api_client = credentials.api_client()
                refused = credentials.refused   # (an ApiClient given to us: its owner's business)
                track = credentials.track
            listers = self._made_listers = make_listers(self._api_client, track=track, gzip=self.config.list_gzip)
        for kind in KINDS:
            self._informers[kind] = Informer(kind=kind, lister=listers[kind], index=self.index,
                                             config=self.config, on_synced=self._check_ready,
                                             on_unauthorized=refused)
        for inf in self._informers.values():
            inf.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the informers, waiting for them up to `timeout` seconds together; the index keeps
        serving what it has. All are told first and then waited for at once: one by one, each
        stuck in a request to an API server that answers nothing held the stop its own 5 s (four
        kinds, 20 s past the collector's --shutdown-timeout)."""
        deadline = time.monotonic() + timeout
        for inf in self._informers.values():
            inf.signal_stop()
        for inf in self._informers.values():
            inf.join(deadline - time.monotonic())
        for lister in self._made_listers.values():
            close = getattr(lister, "close", None)  # (the ApiClients the listers made: ByVerb)
            if close is not None:
                close()
        if self._api_client is not None:
            try:
                self._api_client.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass

    def unsynced(self) -> list[str]:
        """Why not ready: each kind without a first full list, with its latest failure."""
        out = []
        for kind, inf in self._informers.items():
            st = inf.stats
            if not st.synced:
                fails = sum(st.errors.values())
                out.append(f"{kind} not synced" + (f" ({st.last_error}; {fails} failures)" if st.last_error else ""))
        return out

    def _check_ready(self) -> None:
        if all(inf.stats.synced for inf in self._informers.values()):
            self._set_ready()

    def _set_ready(self) -> None:
        if self._ready.is_set():
            return
        # The first full index (hundreds of thousands of tuples, strings and records) holds no
        # reference cycles and is freed by reference counting; move it, and whatever else the
        # process holds at this point, out of the cyclic collector's view so full collections
        # do not traverse it again and again while the hot path runs (gc.freeze).
        gc.freeze()
        self._ready.set()

    @property
    def ready(self) -> bool:
        """True once every kind has been fully listed once (then stays true)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # observability

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for the collector's /metrics (no prometheus import here).

        {"enabled", "ready",
         "kinds": {kind: {"synced", "state", "events": {type: n}, "lists", "relists",
                          "errors": {cause: n}, "objects", "resource_version", "last_sync", "list_seconds",
                          "last_error", "watches_overdue"}},
         "index": {"pods", "nodes", "services", "replicasets", "tombstones", "address_tombstones", "addresses", ...},
         "problems": {cause: n},   # bad input: bad_pod, bad_node, bad_owner, bad_annotation, bad_pod_networks, stale_delete,
                                   # pod_delete_without_uid, pod_delete_unmatched,
                                   # and conflicts: pod_network_ambiguous, pod_network_shadowed, ...
         "lookups_cached", "lookups_index", "flows_identified", "flows_unidentified",
         "addresses_pod", "addresses_node", "addresses_service", "addresses_none"}  # compiled reader
        """
        return {
            "enabled": self.config.enabled,
            "ready": self.ready,
            "kinds": {k: inf.stats.as_dict() for k, inf in self._informers.items()},
            "index": self.index.counts(),
            "problems": dict(self.index.problems),
            **self._cache_stats(),
        }

    def _cache_stats(self) -> dict[str, int]:
        # The compiled reader's per-address cache: lookups answered from it vs from the index;
        # flows given an identity on at least one side vs on none; flow addresses by kind.
        r = self.index._reader
        if r is None:
            return {}
        return {"lookups_cached": int(r.hits), "lookups_index": int(r.misses),
                "flows_identified": int(r.flows_identified), "flows_unidentified": int(r.flows_unidentified),
                **{f"addresses_{k}": int(n) for k, n in r.addresses.items()}}

    def lookup(self, addr: str, t_ms: int = 0) -> dict[str, Any] | None:
        """The identity of an address as a dict with Src-side keys (debugging, `flowscope decode`)."""
        return self.index.lookup(addr, t_ms)


