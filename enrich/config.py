"""Configuration of Kubernetes enrichment, and the CLI flags that fill it.

One dataclass, every field documented with its default and checked in ``validate()``, so the
collector's composition root can build it from flags, ``FLOWSCOPE_*`` variables or YAML and fail
at start with a clear message instead of misbehaving later inside an informer thread.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field

# Where the kubelet mounts the ServiceAccount namespace in every pod (the Downward API
# POD_NAMESPACE variable wins when the manifest sets it).
SERVICEACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# K8S_FlowLayer rules (EnrichConfig.flow_layer_rule), the default first.
FLOW_LAYER_RULES = ("any-infra", "netobserv")

# The least read_timeout_slack_seconds: the margin by which the informer's cut of a watch stream
# comes after the API server's own end of it at its timeoutSeconds. The server's clock starts when
# the request reaches it and its stream's end takes the network's time to come back: with no
# margin the cut races that end, and a stream the server ended is counted in watches_overdue.
READ_TIMEOUT_SLACK_MIN_SECONDS = 1.0

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


class EnrichConfigError(ValueError):
    """A setting of EnrichConfig is invalid; the message names the field."""


def parse_bool(value: str | bool) -> bool:
    """Parse a flag or environment value such as ``--enrich=false``."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def detect_own_namespace(*, environ: dict[str, str] | None = None,
                         namespace_file: str = SERVICEACCOUNT_NAMESPACE_FILE) -> str:
    """The namespace flowscope itself runs in, or "" outside a cluster.

    Flows to and from the collector are infrastructure traffic, like NetObserv's own namespace.
    """
    env = os.environ if environ is None else environ
    ns = env.get("POD_NAMESPACE", "").strip()
    if ns:
        return ns
    try:
        with open(namespace_file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class EnrichConfig:
    """Settings of the Kubernetes enrichment (informers + index)."""

    # Attach Kubernetes identity to flows at all (--enrich=false turns it off).
    enabled: bool = True
    # Path of a kubeconfig file. None: in-cluster ServiceAccount config when
    # KUBERNETES_SERVICE_HOST is set (a $KUBECONFIG is not read then: in a pod only this field
    # selects a file), else $KUBECONFIG, else ~/.kube/config.
    kubeconfig: str | None = None
    # kubeconfig context to use; None = the file's current-context.
    context: str | None = None
    # Written as K8S_ClusterName on every enriched flow when non-empty.
    cluster_name: str = ""
    # A side whose namespace starts with one of these is infrastructure (K8S_FlowLayer "infra").
    infra_namespace_prefixes: list[str] = field(default_factory=lambda: ["openshift", "kube-"])
    # How K8S_FlowLayer combines the two sides (FLOW_LAYER_RULES): "any-infra", infra when either
    # side is in an infrastructure namespace, else app; "netobserv", NetObserv's EnrichLayer: app
    # when either side is an application's pod or Service (a namespace outside the infrastructure
    # ones, not the `kubernetes`/`openshift` Service of `default`), else infra (nodes, nobody).
    flow_layer_rule: str = "any-infra"
    # The collector's own namespace, also infra. None = detect (POD_NAMESPACE, then the
    # ServiceAccount namespace file); "" = none.
    own_namespace: str | None = None
    # How long a deleted pod (Node, Service) keeps its IP attribution for flows that started before the
    # deletion (exporters report flows up to their active timeout late). One value for every kind:
    # it bounds how late a flow record may come, which is the exporters' doing, not the kind's.
    # A Node's address reused by a new Node is told apart by time whatever it is (the new Node
    # holds it from its own creation); a longer one for Nodes would only serve flows later than
    # pods' flows are served.
    tombstone_seconds: float = 300.0
    # Also index the pod addresses its network annotations list beyond status.podIPs
    # (OVN-Kubernetes k8s.ovn.org/pod-networks: user-defined networks, a primary UDN's address
    # included; Multus k8s.v1.cni.cncf.io/network-status, or networks-status from Multus
    # releases before the rename: secondary networks). On by default:
    # a pod of a namespace with a primary UDN sends its traffic from its UDN address only.
    pod_networks: bool = True
    # Longest server-side timeoutSeconds of a watch request: each asks for a random value between
    # half of this and this (as client-go spreads its watches, so that many collectors do not
    # re-watch in lockstep); the client re-watches from the last resourceVersion afterwards, so
    # this only bounds how long one HTTP stream lives.
    watch_timeout_seconds: int = 300
    # How long after its timeoutSeconds, counted from the start of its answer, a watch stream the
    # server has not ended is cut (a silent dead connection, or a proxy keeping it open with a
    # byte now and then, each read in time, while events wait): it resumes from the last
    # resourceVersion, counted in KindStats.watches_overdue. A watch's answer is waited for
    # watch_timeout_seconds + twice this at most. At least READ_TIMEOUT_SLACK_MIN_SECONDS.
    read_timeout_slack_seconds: float = 30.0
    # Connect timeout for every request to the API server.
    connect_timeout_seconds: float = 10.0
    # Page size of list requests (limit/continue); 0 = one unpaged list (never expires, but the
    # whole kind is decoded at once). A list whose continue token expires starts again from its
    # first page, in pages up to 4 times as large (enrich.informer.LIST_RESTARTS).
    list_chunk_size: int = 500
    # The longest one list request (a page; with list_chunk_size 0 the whole list) may take from
    # its request to its last byte. read_timeout_slack_seconds (at least 60 s) bounds each read
    # only: a server or proxy trickling a byte every few seconds held a list (and the informer's
    # first sync, or its relist) for ever. Past it the connection is dropped, counted as
    # list_timeout, and the list retried with backoff while the last good cache keeps serving.
    # The API server's own --request-timeout is 60 s: a page of 500 takes well under a second.
    list_page_timeout_seconds: float = 300.0
    # Lists ask for gzip (Accept-Encoding, as client-go does): the API server compresses pages of
    # 128 KiB or more, ~10 times less to send; the informer thread decompresses them.
    list_gzip: bool = True
    # Reconnect backoff: first delay, multiplier, ceiling, and +-jitter fraction.
    backoff_initial_seconds: float = 0.5
    backoff_factor: float = 2.0
    backoff_max_seconds: float = 30.0
    backoff_jitter: float = 0.1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise EnrichConfigError naming the first bad field."""
        if not isinstance(self.enabled, bool):
            raise EnrichConfigError(f"enabled must be a boolean, got {self.enabled!r}")
        if self.kubeconfig is not None and not isinstance(self.kubeconfig, str):
            raise EnrichConfigError(f"kubeconfig must be a path or None, got {self.kubeconfig!r}")
        if not isinstance(self.list_gzip, bool):
            raise EnrichConfigError(f"list_gzip must be a boolean, got {self.list_gzip!r}")
        if not isinstance(self.pod_networks, bool):
            raise EnrichConfigError(f"pod_networks must be a boolean, got {self.pod_networks!r}")
        if not isinstance(self.cluster_name, str):
            raise EnrichConfigError(f"cluster_name must be a string, got {self.cluster_name!r}")
        if isinstance(self.infra_namespace_prefixes, str) or not all(
            isinstance(p, str) and p for p in self.infra_namespace_prefixes
        ):
            raise EnrichConfigError(
                f"infra_namespace_prefixes must be a list of non-empty strings, "
                f"got {self.infra_namespace_prefixes!r}")
        self.infra_namespace_prefixes = list(self.infra_namespace_prefixes)
        if self.flow_layer_rule not in FLOW_LAYER_RULES:
            raise EnrichConfigError(f"flow_layer_rule must be one of {', '.join(FLOW_LAYER_RULES)}, "
                                    f"got {self.flow_layer_rule!r}")
        if self.own_namespace is not None and not isinstance(self.own_namespace, str):
            raise EnrichConfigError(f"own_namespace must be a string or None, got {self.own_namespace!r}")
        for name in ("tombstone_seconds", "backoff_jitter"):
            if getattr(self, name) < 0:
                raise EnrichConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.read_timeout_slack_seconds >= READ_TIMEOUT_SLACK_MIN_SECONDS:
            raise EnrichConfigError(
                f"read_timeout_slack_seconds must be >= {READ_TIMEOUT_SLACK_MIN_SECONDS:g}, got "
                f"{self.read_timeout_slack_seconds!r}: a watch the API server has not ended this long after its "
                "timeoutSeconds is cut, and with less the cut races the server's own end of the stream (a "
                "stream it ended would be counted in watches_overdue)")
        for name in ("connect_timeout_seconds", "backoff_initial_seconds", "backoff_max_seconds",
                     "list_page_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise EnrichConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not isinstance(self.watch_timeout_seconds, int) or self.watch_timeout_seconds < 1:
            raise EnrichConfigError(
                f"watch_timeout_seconds must be an integer >= 1, got {self.watch_timeout_seconds!r}")
        if not isinstance(self.list_chunk_size, int) or self.list_chunk_size < 0:
            raise EnrichConfigError(f"list_chunk_size must be an integer >= 0, got {self.list_chunk_size!r}")
        if self.backoff_factor < 1:
            raise EnrichConfigError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise EnrichConfigError("backoff_max_seconds must be >= backoff_initial_seconds")
        if self.backoff_jitter >= 1:
            raise EnrichConfigError(f"backoff_jitter must be < 1, got {self.backoff_jitter!r}")

    def resolved_own_namespace(self) -> str:
        """own_namespace, detected from the environment when left as None."""
        return detect_own_namespace() if self.own_namespace is None else self.own_namespace


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the enrichment flags to a collector (or `flowscope decode`) parser; returns their group."""
    g = parser.add_argument_group("Kubernetes enrichment options")
    g.add_argument("--enrich", dest="enrich", nargs="?", const=True, default=None, type=parse_bool,
                   metavar="BOOL", help="attach Kubernetes identity to flows. Default: only with --kubeconfig "
                   "(a capture is not enriched from whatever cluster kubectl points at by accident); "
                   "--enrich (true) without --kubeconfig uses the in-cluster ServiceAccount when running in "
                   "a pod ($KUBECONFIG is not read there), else $KUBECONFIG or ~/.kube/config; --enrich=false "
                   "or --no-enrich disables it")
    g.add_argument("--no-enrich", dest="enrich", action="store_false", help="same as --enrich=false")
    g.add_argument("--kubeconfig", default=None, metavar="PATH",
                   help="kubeconfig file to enrich from (turns enrichment on; in a pod, the way to use a "
                   "kubeconfig rather than the ServiceAccount)")
    g.add_argument("--kube-context", dest="kube_context", default=None, metavar="NAME",
                   help="kubeconfig context to enrich from [default: the kubeconfig's current-context]")
    g.add_argument("--cluster-name", default="", metavar="NAME", help="value of K8S_ClusterName on every flow")
    g.add_argument("--infra-namespace-prefix", dest="infra_namespace_prefixes", action="append",
                   default=None, metavar="PREFIX",
                   help="namespace prefix marking infrastructure traffic (K8S_FlowLayer=infra), repeatable "
                   "[default: openshift,kube-]")
    g.add_argument("--flow-layer-rule", choices=FLOW_LAYER_RULES, default=None,
                   help="K8S_FlowLayer: any-infra (infra when either side's namespace is infrastructure, "
                   "else app) or netobserv (NetObserv's: app when either side is an application's pod or "
                   "Service, else infra) [default: any-infra]")
    # (a bare --enrich-pod-networks is true, as in `flowscope run`; collector.cli.bare_optional_flags
    # keeps a capture's name after it from being read as its value)
    g.add_argument("--enrich-pod-networks", dest="pod_networks", nargs="?", const=True, default=None,
                   type=parse_bool, metavar="BOOL",
                   help="also give pods the addresses their network annotations list beyond status.podIPs "
                   "(OVN-Kubernetes user-defined networks, Multus secondary networks) [default: true]")
    g.add_argument("--no-enrich-pod-networks", dest="pod_networks", action="store_false", default=None,
                   help="same as --enrich-pod-networks=false")
    return g


def config_from_args(args: argparse.Namespace, **overrides: object) -> EnrichConfig:
    """Build an EnrichConfig from the flags of add_cli_arguments (extra fields as keywords)."""
    kwargs: dict[str, object] = {
        "enabled": getattr(args, "enrich", None) is not False,
        "kubeconfig": getattr(args, "kubeconfig", None),
        "cluster_name": getattr(args, "cluster_name", "") or "",
    }
    if getattr(args, "kube_context", None):
        kwargs["context"] = args.kube_context
    prefixes = getattr(args, "infra_namespace_prefixes", None)
    if prefixes is not None:
        # separated by commas or spaces as `flowscope run` takes them (collector.config.parse_list;
        # no namespace name holds either): `--infra-namespace-prefix openshift,kube-` was one prefix
        kwargs["infra_namespace_prefixes"] = [p for v in prefixes for p in re.split(r"[,\s]+", v) if p]
    if getattr(args, "flow_layer_rule", None):
        kwargs["flow_layer_rule"] = args.flow_layer_rule
    if getattr(args, "pod_networks", None) is not None:
        kwargs["pod_networks"] = args.pod_networks
    kwargs.update(overrides)
    return EnrichConfig(**kwargs)  # type: ignore[arg-type]
