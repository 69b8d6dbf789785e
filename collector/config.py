"""The collector's configuration: one schema fed by flags, FLOWSCOPE_* variables and a YAML file.

Why one schema: operators configure the same collector from a Helm values file, a container
environment and an ad-hoc command line, and must get the same validation and the same error
messages from all three. Every option is a documented dataclass field; the command-line flags,
the environment variable names, the YAML keys, `flowscope run --help`, `flowscope config` and
the options table in docs/collector.md are all derived from these fields.

Precedence (lowest to highest): defaults, the YAML file (`--config`), `FLOWSCOPE_*` variables,
flags. Key names: `kafka.brokers` in YAML is `kafka: {brokers: ...}`, the variable
`FLOWSCOPE_KAFKA_BROKERS` and the flag `--kafka-brokers`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

ENV_PREFIX = "FLOWSCOPE_"
SCHEMES = ("netflow", "ipfix", "sflow")
DEFAULT_LISTEN = ["netflow://0.0.0.0:2055", "ipfix://0.0.0.0:4739", "sflow://0.0.0.0:6343"]
SECRET_KEYS = {"kafka.sasl_password"}
# What `flowscope config` prints instead of a secret; refused as a value (see validate()).
REDACTED = "<redacted>"
# setsockopt(SO_RCVBUF) takes a C int: a larger --rcvbuf would make every worker fail at start.
MAX_RCVBUF = 2**31 - 1
# Sampling rates are 32-bit in the decoder (decoders/config.py: DecoderConfig.validate refuses more).
MAX_SAMPLING = 2**32 - 1


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the source and what is accepted."""


# ---------------------------------------------------------------------------------------------
# Value parsers. Each takes the raw value (a string from a flag or variable, or whatever YAML
# produced) and returns the typed value or raises ValueError with the accepted values.

# (Ki, Mi, Gi: how Kubernetes writes the binary units, `memory: 512Mi`, in the same manifests)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3}
_SIZE_HELP = ("expected a size such as 33554432, 32MiB or 256MB (units: k, KB, M, MB, G, GB, powers of 1000; "
              "KiB, Ki, MiB, Mi, GiB, Gi, powers of 1024)")


def parse_size(v: Any) -> int:
    """Bytes: an integer or a number with a unit (32MiB, 256M, 1.5GiB, 64k, 512Mi)."""
    if isinstance(v, bool):
        raise ValueError(_SIZE_HELP)
    if isinstance(v, int):
        n = v
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(v))
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            try:   # a byte count written as parse_int takes it (0x2000000, 33_554_432), as YAML read it
                n = parse_int(v)
            except ValueError:
                raise ValueError(_SIZE_HELP) from None
        else:
            n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n < 0:
        raise ValueError("must not be negative")
    return n


def parse_int(v: Any) -> int:
    """An integer, decimal whatever its leading zeros (`010` is ten, as an operator padding a
    value means it: nothing here is a file mode), or with an explicit base prefix (0x, 0o, 0b)."""
    # A float (YAML `2.9` or `2.0`) is refused like the same text from a flag or variable,
    # instead of being truncated.
    if isinstance(v, (bool, float)):
        raise ValueError("expected an integer")
    if not isinstance(v, str):
        try:
            return int(v)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
    s = v.strip()
    for base in (10, 0):   # (int(s, 0) alone refuses `010`: Python 3 has no C octal)
        try:
            return int(s, base)
        except ValueError:
            pass
    raise ValueError("expected an integer")


def parse_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        n = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    # nan passes every range check (each comparison is false); inf is no duration either
    if not math.isfinite(n):
        raise ValueError(f"{n} is not a finite number")
    return n


# unit -> (multiplier, divisor): 100us is 100 / 1e6 = 0.0001, not 100 * 1e-6 = 9.999999999999999e-05
_DURATION_UNITS = {"ns": (1, 1e9), "us": (1, 1e6), "\u00b5s": (1, 1e6), "ms": (1, 1e3), "s": (1, 1), "m": (60, 1),
                   "h": (3600, 1)}
_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ns|us|\u00b5s|ms|s|m|h)"


def _duration(number: str, unit: str) -> float:
    mul, div = _DURATION_UNITS[unit]
    return float(number) * mul / div


def parse_seconds(v: Any) -> float:
    """Seconds: a number, or a duration as Go and Kubernetes write it (10s, 500ms, 2m, 1h, and
    Go's compound form, 1m30s or 1h0m0s as time.Duration prints it)."""
    if isinstance(v, str):
        s = v.strip().lower()
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(ns|us|\u00b5s|ms|s|m|h)", s)   # (`10 s` too, as before)
        if m:
            return _duration(m.group(1), m.group(2))
        if re.fullmatch(f"(?:{_DURATION_PART})+", s):
            return sum(_duration(n, u) for n, u in re.findall(_DURATION_PART, s))
    try:
        return parse_float(v)
    except ValueError as exc:
        if str(exc) != "expected a number":
            raise
        raise ValueError("expected seconds such as 10, 0.5, 10s, 500ms, 2m or 1m30s") from None


def parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    if not s:  # an empty variable (a Helm value left blank) is an error, as for the other types
        raise ValueError("empty: expected true or false (also yes/no, on/off, 1/0)")
    raise ValueError("expected true or false (also yes/no, on/off, 1/0)")


def parse_auto_bool(v: Any) -> str:
    """auto, or a switch in any of parse_bool's spellings: "auto", "true" or "false"."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        return "true" if parse_bool(v) else "false"
    except ValueError:
        raise ValueError(f"{v!r}: expected auto, true or false (also yes/no, on/off, 1/0)") from None


parse_auto_bool.accepted = ("auto", "true", "false")  # type: ignore[attr-defined]  # (--help's metavar)


def parse_str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        raise ValueError("expected a string")
    return str(v)


def parse_list(v: Any) -> list[str]:
    """A YAML list, or a string of items separated by commas or spaces (flags and variables;
    `FLOWSCOPE_LISTEN="netflow://:2055 sflow://:6343"`). No list option's item can hold a space
    (listeners, brokers, CIDRs, CIDR=RATE, namespace prefixes), so spaces are unambiguous: a
    space-separated value was taken as one item, refused as a bad listener or broker without
    a word about separators, or, for namespace prefixes, accepted as one prefix matching nothing."""
    if v is None:
        return []
    items = v if isinstance(v, (list, tuple)) else [v]
    out: list[str] = []
    for item in items:
        if isinstance(item, (dict, list)):
            raise ValueError("expected a list of strings")
        out.extend(p for p in re.split(r"[,\s]+", str(item)) if p)
    return out


def parse_map(v: Any) -> dict[str, int]:
    """CIDR -> rate: a YAML mapping, or `CIDR=RATE[,CIDR=RATE...]` strings."""
    if v is None:
        return {}
    if isinstance(v, Mapping):
        pairs = [(str(k), val) for k, val in v.items()]
    else:
        pairs = []
        # (`10.0.0.0/8 = 100` read as one pair before items could be separated by spaces)
        items = v if isinstance(v, (list, tuple)) else [v]
        v = [re.sub(r"\s*=\s*", "=", str(i)) if isinstance(i, str) else i for i in items]
        for item in parse_list(v):
            if "=" not in item:
                raise ValueError(f"{item!r}: expected CIDR=RATE, e.g. 10.0.0.0/8=100")
            k, _, val = item.partition("=")
            pairs.append((k.strip(), val.strip()))
    out: dict[str, int] = {}
    given: dict[str, str] = {}
    for k, val in pairs:
        net = parse_cidr(k, "e.g. 10.0.0.0/8 or fd00::/8")
        try:
            rate = parse_int(val)
        except ValueError:
            raise ValueError(f"{k}: sampling rate: expected an integer, got {val!r}") from None
        if not 1 <= rate <= MAX_SAMPLING:
            raise ValueError(f"{k}: sampling rate must be between 1 and {MAX_SAMPLING}, got {rate}")
        if str(net) in given:
            raise ValueError(f"{given[str(net)]} and {k} are the same network ({net}): give it once")
        given[str(net)] = k
        out[str(net)] = rate
    return out


def parse_addr(v: Any) -> str:
    """HOST:PORT (IPv6 as [::1]:9400); empty disables the endpoint."""
    s = parse_str(v).strip()
    if s:
        split_hostport(s)
    return s


def split_hostport(s: str) -> tuple[str, int]:
    """HOST:PORT, IPv6 as [ADDR]:PORT (with an optional %scope); an empty host is 0.0.0.0."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+(?:%[\w.-]+)?)\]:([0-9]+)|([^:\[\]%]*):([0-9]+)", s)
    if not m:
        raise ValueError(f"{s!r}: expected HOST:PORT (IPv6 as [::]:PORT)")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"{s!r}: port must be 1-65535")  # (0, which this lets through, every caller refuses)
    return host or "0.0.0.0", port


def local_host(host: str) -> str:
    """A listening address's host as a destination on this host: the wildcard (an empty host,
    0.0.0.0, ::) is asked on loopback, 127.0.0.1 or ::1; any other host is itself."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host


@dataclass(frozen=True)
class Listener:
    """One UDP listener: `scheme` selects which protocols the socket accepts."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_listener(s: str) -> Listener:
    m = re.fullmatch(r"([a-z0-9]+)://(.+)", s.strip())
    if not m or m.group(1) not in SCHEMES:
        raise ValueError(f"{s!r}: expected SCHEME://HOST:PORT with SCHEME one of {', '.join(SCHEMES)}"
                         " (e.g. netflow://0.0.0.0:2055, sflow://[::]:6343)")
    if "?" in m.group(2):
        # goflow2's listener URLs carry its socket options (sflow://:6343?count=4&workers=8): a
        # listen list copied from its -listen was refused as "expected HOST:PORT", the options unnamed
        raise ValueError(f"{s!r}: a listener takes no URL options (goflow2's ?count=, ?workers=, ...): "
                         f"give {m.group(1)}://{m.group(2).partition('?')[0]}, and --workers N for N "
                         "SO_REUSEPORT sockets per listener, --rcvbuf for their buffer")
    host, port = split_hostport(m.group(2))
    if port == 0:  # each worker would bind another random port, none known to the exporters
        raise ValueError(f"{s!r}: port must be 1-65535 (0 would be a random port)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{s!r}: host must be an IP address (0.0.0.0, ::, 127.0.0.1)") from None
    return Listener(m.group(1), host, port)


def parse_listen(v: Any) -> list[str]:
    items = parse_list(v)
    return [str(parse_listener(s)) for s in items]


def parse_cidr(s: str, example: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network or one address (a /32 or /128). One with bits set past its prefix (10.0.0.1/8)
    is refused, not widened: it is a network written wrong or one address with a wrong prefix,
    and which one the operator meant decides what is matched."""
    try:
        return ipaddress.ip_network(s)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise ValueError(f"{s!r} is not a CIDR ({example})") from None
    addr = s.partition("/")[0]
    raise ValueError(f"{s!r} has bits set past its /{net.prefixlen}: write the network, {net}, or the one "
                     f"address, {addr}") from None


def parse_cidrs(v: Any) -> list[str]:
    return [str(parse_cidr(s, "e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8")) for s in parse_list(v)]


def choice(*accepted: str, lower: bool = True, aliases: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    """One of `accepted`; `aliases`: other spellings operators write for one of them, taken as it
    (Kafka's acks=-1 for all, Python's and Go loggers' warn for warning)."""
    def parse(v: Any) -> str:
        if isinstance(v, bool) and "on" in accepted and "off" in accepted:
            v = "on" if v else "off"   # YAML reads an unquoted on/off (yes/no, true/false) as a boolean
        s = parse_str(v).strip()
        key = s.lower() if lower else s
        if aliases and key in aliases:
            return aliases[key]
        for a in accepted:
            if key == (a.lower() if lower else a):
                return a
        if "on" in accepted and "off" in accepted:
            # a switch's other spellings, as the file gives them (above) and every switch takes
            # them: FLOWSCOPE_...=false was refused where `false` in the file was off
            try:
                return "on" if parse_bool(s) else "off"
            except ValueError:
                pass
            raise ValueError(f"{s!r} is not one of {', '.join(accepted)} (also true/false, yes/no, 1/0)")
        raise ValueError(f"{s!r} is not one of {', '.join(accepted)}")

    parse.__doc__ = "one of " + ", ".join(accepted)
    parse.accepted = accepted  # type: ignore[attr-defined]
    return parse


def ranged(parse: Callable[[Any], Any], lo: float | None = None, hi: float | None = None) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        n = parse(v)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"{n} is out of range: must be {bounds}")
        return n

    check.base = parse  # type: ignore[attr-defined]  # (what the value is read as: see _numbers_as_written)
    return check


def _idle_ms(v: Any) -> int:
    # (0 is off, as None is for aiokafka, whose idle check would wake without pause at 0; a limit
    # under a second would close and reopen connections between the batches of ordinary traffic)
    n = int(ranged(parse_int, 0, 86400000)(v))
    if 0 < n < 1000:
        raise ValueError(f"{n} is out of range: must be 0 (never close idle connections) or between 1000 and 86400000")
    return n


_idle_ms.base = parse_int  # type: ignore[attr-defined]


def opt(default: Any, help: str, parse: Callable[[Any], Any], *, flag: str | None = None,
        metavar: str | None = None, repeat: bool = False, secret: bool = False) -> Any:
    """A schema field: default, one-line help, parser/validator and flag details."""
    meta = {"help": help, "parse": parse, "flag": flag, "metavar": metavar, "repeat": repeat, "secret": secret}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)  # type: ignore[misc]
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# The schema.


@dataclass
class EnrichSection:
    """Kubernetes enrichment (enrich/): pod, node, service and owner identity for both ends."""

    enabled: str = opt("auto", "auto (on in a pod with a ServiceAccount token, or given --kubeconfig or "
                       "$KUBECONFIG; ~/.kube/config alone does not turn it on), true (on, ~/.kube/config "
                       "included; no usable cluster access is a start-up error) or false (yes/no, on/off, "
                       "1/0 as for every switch)", parse_auto_bool, flag="--enrich")
    kubeconfig: str = opt("", "kubeconfig file; empty = in-cluster config (ServiceAccount) when in a pod "
                          "(a $KUBECONFIG set there is ignored with a warning), else $KUBECONFIG (with --enrich "
                          "true, else ~/.kube/config); a file that cannot be loaded is a start-up error",
                          parse_str, flag="--kubeconfig", metavar="PATH")
    context: str = opt("", "kubeconfig context; empty = its current context; in a pod without --kubeconfig "
                       "(in-cluster config: no contexts) ignored with a warning", parse_str,
                       flag="--kube-context", metavar="NAME")
    cluster_name: str = opt("", "value of K8S_ClusterName in every flow; empty = not written", parse_str,
                            flag="--cluster-name", metavar="NAME")
    infra_namespace_prefixes: list[str] = opt(["openshift", "kube-"], "namespace prefixes whose flows are "
                                              "K8S_FlowLayer infra (the collector's own namespace too), "
                                              "repeatable", parse_list, flag="--infra-namespace-prefix",
                                              metavar="PREFIX", repeat=True)
    flow_layer_rule: str = opt("any-infra", "K8S_FlowLayer: any-infra (infra when either side's namespace "
                               "is an infrastructure one, else app) or netobserv (NetObserv's rule: app when "
                               "either side is an application's pod or Service, one outside those namespaces and "
                               "not the kubernetes/openshift Service of default; else infra: nodes, unresolved)",
                               choice("any-infra", "netobserv"), flag="--flow-layer-rule")
    tombstone_seconds: float = opt(300.0, "how long a deleted pod (and a deleted Node or Service) keeps "
                                   "its IP for flows that started before the deletion (IP reuse)", ranged(parse_seconds, 0, 86400),
                                   flag="--pod-tombstone-seconds", metavar="SECONDS")
    pod_networks: bool = opt(True, "also give pods the addresses their network annotations list beyond "
                             "status.podIPs: OVN-Kubernetes k8s.ovn.org/pod-networks (user-defined networks: a "
                             "primary UDN's pods send from those) and Multus k8s.v1.cni.cncf.io/network-status "
                             "(secondary networks; k8s.v1.cni.cncf.io/networks-status, as Multus wrote it before, "
                             "when a pod has no network-status); status.podIPs keep priority, an address two live pods claim "
                             "this way is nobody's (counted)", parse_bool, flag="--enrich-pod-networks")
    list_chunk_size: int = opt(500, "objects per page of the informers' list requests (limit/continue, as kubectl's "
                               "--chunk-size); a list whose continue token expires (a list slower than the API "
                               "server's etcd compaction, 5 min by default) starts again from its first page in "
                               "pages up to 4 times as large. Larger pages list faster and hold more in memory "
                               "while listing; 0 = one unpaged list, which never expires but decodes the whole "
                               "kind at once (GiBs for 100k pods)", ranged(parse_int, 0, 100000),
                               flag="--enrich-list-chunk-size", metavar="N")
    list_page_timeout_seconds: float = opt(300.0, "the longest one list request of the informers may take, from "
                                           "its request to its last byte (a page; with --enrich-list-chunk-size 0 "
                                           "the whole list): a server or proxy that trickles its answer (each read "
                                           "within the read timeout) would hold the list for ever. Past it the "
                                           "connection is dropped, counted as list_timeout, and the list retried "
                                           "with backoff while the last good cache keeps serving",
                                           ranged(parse_seconds, 1, 86400), flag="--enrich-list-page-timeout-seconds",
                                           metavar="SECONDS")
    list_gzip: bool = opt(True, "the informers' list requests ask for gzip (Accept-Encoding: gzip, as client-go's "
                          "do): the API server compresses list pages of 128 KiB or more, about 10 times less to "
                          "send (a 100k-pod list is hundreds of MB of JSON), for the CPU to compress and "
                          "decompress them; false asks for them uncompressed (a collector next to its API server, "
                          "as a kubeconfig's disable-compression: true). Watches never ask", parse_bool,
                          flag="--enrich-list-gzip")


# kafka.compression_level: what each codec accepts (0 always: flowscope's default level);
# snappy and none have no levels.
COMPRESSION_LEVELS = {"lz4": (0, 16), "zstd": (-7, 22), "gzip": (0, 9)}


@dataclass
class KafkaConfig:
    """Kafka output (aiokafka record-batch appends). Used when `brokers` is set."""

    brokers: list[str] = opt([], "bootstrap brokers HOST:PORT[,...], repeatable; empty = no Kafka (stdout or "
                             "file sink)", parse_list, metavar="HOST:PORT[,...]", repeat=True)
    topic: str = opt("flowscope-flows", "topic for flow records", parse_str, metavar="NAME")
    counters_topic: str = opt("flowscope-counters", "topic for sFlow counter records (with --counters)",
                              parse_str, metavar="NAME")
    key: str = opt("none", "message key and partitioning: none (spread load), exporter (one partition per "
                   "exporter) or conversation (both IPs sorted: both directions share a partition)",
                   choice("none", "exporter", "conversation"))
    compression: str = opt("none", "record-batch compression: none, gzip, snappy, lz4, zstd",
                           choice("none", "gzip", "snappy", "lz4", "zstd"))
    compression_level: int = opt(0, "compression level: 0 = flowscope's default (lz4: flowscope's field-anchored "
                                 "encoder, zstd 3, gzip 1); lz4 1-2 liblz4's fast mode, 3-16 HC, zstd -7 to 22, gzip 1-9 "
                                 "trade CPU for smaller batches; snappy has none. "
                                 "Applies to the flows' record batches; sFlow counter records compress through "
                                 "aiokafka at its own levels",
                                 ranged(parse_int, -7, 22))
    compression_thread: str = opt("auto", "compress the fast path's batches (lz4 at levels 0-2, zstd) on a thread "
                                  "of their own instead of the event loop's (lz4 level 0 with flowscope's encoder, 1-2 with the "
                                  "system's liblz4, zstd with its libzstd): "
                                  "on, off, or auto (on when the process may run on two or more CPUs, its cgroup's "
                                  "CPU limit is none or 2+, and the library, if one is needed, loads)", choice("auto", "on", "off"))
    acks: str = opt("1", "acknowledgements the broker waits for: 0, 1 or all (with 0 a batch counts as "
                    "delivered once written to the connection: nothing confirms it); -1 is all, as for Kafka's producers",
                    choice("0", "1", "all", aliases={"-1": "all"}))
    linger_ms: int = opt(5, "how long a batch may wait for more records (ms)", ranged(parse_int, 0, 60000))
    batch_bytes: int = opt(1048576, "maximum record-batch size in bytes (batches are made no larger than the "
                           "topic's max.message.bytes, read from the cluster at start; where it cannot be read, a "
                           "batch refused as too large is cut in two and sent again, and new batches are made "
                           "smaller)", ranged(parse_size, 1024, 64 * 1024**2), metavar="SIZE")
    connections: int = opt(4, "producer connections to the brokers (direct produce: up to two produce requests "
                           "in flight on each; aiokafka's producers: one per broker); with key none batches rotate over them (no order across batches), "
                           "with the other key modes a partition always uses the same one (order per key kept)",
                           ranged(parse_int, 1, 64))
    direct: bool = opt(True, "write the fast path's record batches (key none) to the partition leaders on "
                       "flowscope's own connections, framed in place without copies (plaintext, no SASL; "
                       "compressed in place when kafka.compression is set; otherwise, or with "
                       "--no-kafka-direct, through aiokafka)", parse_bool)
    request_timeout_ms: int = opt(10000, "produce request timeout, the broker's to wait for its replicas; a "
                                  "batch not acknowledged by then (direct produce: 5 s later) is re-queued (ms)", ranged(parse_int, 100, 600000))
    keepalive_s: int = opt(30, "TCP keepalive on every connection to the brokers (direct produce and aiokafka's): "
                           "a probe after this many idle seconds, then one every third of it; with 3 unanswered (about "
                           "twice this idle) the connection is given up and replaced (one a NAT, conntrack or firewall dropped silently; counted in "
                           "flowscope_kafka_connections_dropped_total); the probes also keep such a middlebox "
                           "from forgetting an idle connection. 0 = the system's (no keepalive)",
                           ranged(parse_int, 0, 7200), metavar="SECONDS")
    connections_max_idle_ms: int = opt(540000, "close a connection to the brokers (direct produce and aiokafka's) "
                                       "that has had no request and nothing in flight this long, and open a new one at "
                                       "the next batch: not counted as a lost connection (Kafka producers' "
                                       "connections.max.idle.ms; below the brokers' own, 600000 by default, which "
                                       "otherwise close it and it counts as lost) (ms). 0 = never; else at least 1000",
                                       _idle_ms, metavar="MS")
    client_id: str = opt("flowscope", "Kafka client id", parse_str)
    tls: bool = opt(False, "connect with TLS (implied by --kafka-tls-ca/cert/key)", parse_bool)
    tls_ca: str = opt("", "CA bundle (PEM) to verify the brokers", parse_str, metavar="PATH")
    tls_cert: str = opt("", "client certificate (PEM) for mutual TLS", parse_str, metavar="PATH")
    tls_key: str = opt("", "client private key (PEM) for mutual TLS", parse_str, metavar="PATH")
    sasl_mechanism: str = opt("none", "SASL mechanism: none, PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
                              choice("none", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_user: str = opt("", "SASL user name", parse_str)
    sasl_password: str = opt("", "SASL password (prefer FLOWSCOPE_KAFKA_SASL_PASSWORD); the "
                              "placeholder `<redacted>` that `flowscope config` prints is refused", parse_str, secret=True)
    create_topic: bool = opt(False, "create the topic(s) at start if missing", parse_bool)
    partitions: int = opt(4, "partition count for --kafka-create-topic", ranged(parse_int, 1, 100000))
    replication_factor: int = opt(1, "replication factor for --kafka-create-topic", ranged(parse_int, 1, 100))


@dataclass
class Config:
    """Everything `flowscope run` needs; see docs/collector.md for the generated table."""

    listen: list[str] = opt(DEFAULT_LISTEN, "UDP listener SCHEME://HOST:PORT, repeatable; netflow:// accepts "
                            "v5, v9 and IPFIX, v1 and v7 too (detected per datagram), ipfix:// and sflow:// as named; "
                            "IPv6 as netflow://[::]:2055, which takes IPv6 only (IPV6_V6ONLY: list 0.0.0.0 too for "
                            "both families)", parse_listen, metavar="SCHEME://HOST:PORT",
                            repeat=True)
    rcvbuf: int = opt(32 * 1024**2, "SO_RCVBUF per socket, at most 2147483647 (2 GiB - 1); the kernel caps "
                      "it at net.core.rmem_max (the granted size is logged), and Linux at 1073741823 whatever "
                      "rmem_max allows; 0 = the kernel's default, net.core.rmem_default",
                      ranged(parse_size, 0, MAX_RCVBUF),
                      metavar="SIZE")
    workers: int = opt(1, "worker processes, each with its own SO_REUSEPORT sockets, decoder state and "
                       "producer", ranged(parse_int, 1, 256), metavar="N")
    loop: str = opt("uvloop", "event loop: uvloop or asyncio", choice("uvloop", "asyncio"))
    max_datagram: int = opt(65535, "largest datagram accepted; larger ones are counted as "
                            "flowscope_decode_errors_total{reason=\"too_large\"}",
                            ranged(parse_int, 64, 65535), metavar="BYTES")
    max_exporter_rate: int = opt(0, "datagrams per second accepted from one exporter (source address, per "
                                 "worker; bursts of one second's worth); the rest are refused before decoding "
                                 "and counted as flowscope_decode_errors_total{reason=\"rate_limited\"}; "
                                 "0 = no limit", ranged(parse_int, 0, 1 << 31), metavar="N")
    allow_exporters: list[str] = opt([], "only accept datagrams from these CIDRs (others dropped, counted "
                                     "as not_allowed), repeatable; empty = accept all", parse_cidrs,
                                     metavar="CIDR[,...]", repeat=True)
    max_templates_per_exporter: int = opt(1024, "templates (all domains and source ports) kept per exporter; "
                                          "a new one past it evicts the least recently refreshed (counted in "
                                          "flowscope_templates_evicted_total)", ranged(parse_int, 1, 1_000_000),
                                          metavar="N")
    max_template_fields: int = opt(4_000_000, "fields of all exporters' templates together per worker, each "
                                   "template counting 24 more for its own objects (memory bound: about 12 bytes "
                                   "each, whatever the templates' shape: 4M is about 50 MB); past it the exporters "
                                   "seen least recently are forgotten (counted in flowscope_exporters_evicted_total); "
                                   "what one exporter cannot fit alone is refused (template_limit)", ranged(parse_int, 1000, 1 << 31), metavar="N")
    max_exporters: int = opt(16384, "exporters (source addresses) with decoder state per worker; when a new one "
                             "arrives with the table full, the eighth seen least recently are forgotten and "
                             "counted", ranged(parse_int, 16, 10_000_000), metavar="N")
    max_exporter_state: int = opt(1024**3, "estimated memory of all exporters' decoder state beside templates, "
                                  "per worker: about 2.5 kB an exporter, 200 bytes per options-learned rate or "
                                  "clock and per sFlow drops source, 56 bytes plus its length per learned "
                                  "interface name, 450 bytes per sequence stream, 64 KiB per "
                                  "--dedup table; past it, the eighth of the exporters seen least recently are "
                                  "forgotten and counted, as at --max-exporters", ranged(parse_size, 1024**2, 1 << 62),
                                  metavar="SIZE")
    default_sampling: int = opt(400, "sampling rate for IPFIX and NetFlow v9 exporters that send none (OVS IPFIX; "
                                "OVN-Kubernetes uses 400; not for NetFlow v5, whose header interval 0 is left "
                                "unset as OVS's unsampled NetFlow sends it, nor firewall event records, NSEL, nor a "
                                "record whose sampler id is 0, which is 1); 0 = leave unset", ranged(parse_int, 0, 1 << 31), metavar="N")
    sampling: dict[str, int] = opt({}, "per-exporter sampling CIDR=RATE for exporters that send no rate of their own, "
                                   "repeatable; longest prefix wins",
                                   parse_map, metavar="CIDR=RATE", repeat=True)
    split_biflows: bool = opt(False, "publish an IPFIX biflow record (RFC 5103: the reverse direction under "
                              "enterprise 29305; YAF, softflowd -b, ipfixprobe) as a flow per direction with "
                              "traffic, the reverse one with the endpoints swapped; off: one flow per record, "
                              "the reverse elements as ie29305_<id> extras", parse_bool)
    renormalize: bool = opt(False, "multiply Bytes and Packets by the sampling rate the exporter sent (NetFlow "
                            "v5 header, IPFIX/v9 sampling elements or options data, sFlow samples), as "
                            "pmacct's renormalize; rates from --sampling / --default-sampling are not "
                            "applied (Open vSwitch's IPFIX counts are already estimates); Sampling still "
                            "carries the rate", parse_bool)
    dedup: bool = opt(False, "drop (and count) egress records duplicating an ingress record (OVS samples "
                      "both directions)", parse_bool)
    counters: bool = opt(False, "publish sFlow counter records (Kafka: to --kafka-counters-topic); without it counter "
                         "samples, which are not flows, are not decoded, only counted per exporter "
                         "(flowscope_counter_samples_ignored_total)", parse_bool)
    sink: str = opt("auto", "output: auto (kafka if --kafka-brokers, else file if --output-file, else "
                    "stdout), stdout, file or kafka", choice("auto", "stdout", "file", "kafka"))
    output_file: str = opt("", "file sink path (JSON lines, appended)", parse_str, metavar="PATH")
    queue_bytes: int = opt(256 * 1024**2, "bound of the queue between the UDP path and the sink, in "
                           "encoded bytes (open batches + queued + in flight); with Kafka at least three times kafka.batch_bytes "
                           "(a record batch is queued whole: two queued besides the open one)", ranged(parse_size, 4096), metavar="SIZE")
    drop_policy: str = opt("newest", "when the queue is full: newest (drop arriving flows) or oldest "
                           "(evict the oldest queued flows)", choice("newest", "oldest"))
    shutdown_timeout: float = opt(10.0, "on SIGTERM/SIGINT/SIGHUP, seconds to drain the queue and flush the sink",
                                  ranged(parse_seconds, 0, 3600), metavar="SECONDS")
    state_file: str = opt("", "file holding templates, options and sampling per exporter across restarts "
                          "(written atomically); its directory must exist and take new files (checked at start); "
                          "empty = off", parse_str, metavar="PATH")
    state_interval: float = opt(5.0, "seconds between state file saves", ranged(parse_seconds, 0.1, 3600),
                                metavar="SECONDS")
    metrics_addr: str = opt("0.0.0.0:9400", "HOST:PORT for /metrics, /healthz and /readyz; empty = off",
                            parse_addr, metavar="HOST:PORT")
    health_addr: str = opt("", "separate HOST:PORT for /healthz and /readyz only; empty = metrics address",
                           parse_addr, metavar="HOST:PORT")
    http_max_connections: int = opt(64, "connections the /metrics, /healthz and /readyz endpoint holds at once "
                                    "(per address); at the cap the oldest one that has not sent its request is "
                                    "closed for a new one, else the new one is closed at once "
                                    "(flowscope_http_connections_closed_total)", ranged(parse_int, 1, 65536),
                                    metavar="N")
    metrics_top_exporters: int = opt(20, "exporters labelled by address in metrics (busiest first; with "
                                     "--workers N chosen once for all workers); the rest are labelled other; a "
                                     "labelled exporter silent for 15 minutes gives its label up to one sending "
                                     "without", ranged(parse_int, 0, 10000),
                                     metavar="N")
    stats_interval: float = opt(1.0, "seconds between decoder statistics reads (and worker metric pushes)",
                                ranged(parse_seconds, 0.05, 60), metavar="SECONDS")
    log_level: str = opt("info", "debug, info, warning (or warn) or error",
                         choice("debug", "info", "warning", "error", aliases={"warn": "warning"}))
    log_format: str = opt("text", "stderr log lines: text (time level logger: message) or json (one object a "
                          "line: time, level, logger, worker, msg, and exporter, reason, suppressed where the "
                          "message has them; for Loki, Elasticsearch, Cloud Logging)", choice("text", "json"))
    kafka: KafkaConfig = field(default_factory=KafkaConfig, metadata={"section": True})
    enrich: EnrichSection = field(default_factory=EnrichSection, metadata={"section": True})

    def __post_init__(self) -> None:
        # Where each option was set (dotted key -> its flag, variable or YAML file), so that what
        # is found wrong after loading (a kubeconfig, a context) is named as load()'s errors are.
        # Not an option, so not a field: to_dict and the schema never see it.
        self.sources: dict[str, str] = {}
        # The YAML file loaded and what named it (--config or FLOWSCOPE_CONFIG); "" for none.
        self.config_file = self.config_file_source = ""

    # -- derived ---------------------------------------------------------------------------------
    def source(self, key: str) -> str:
        """Where option `key` was set: its flag, its FLOWSCOPE_* variable, the YAML file, or "default"."""
        return self.sources.get(key, "default")

    def provenance(self) -> str:
        """Which file was loaded and which options each source set (names only: a value may be a
        secret), for the start-up log: "why is my setting not applied" starts there."""
        by: dict[str, list[str]] = {}
        for key, source in self.sources.items():
            kind = ("file" if source == self.config_file else "flags" if source.startswith("--")
                    else "variables")
            by.setdefault(kind, []).append(f"{key} ({source})" if kind == "variables" else key)
        parts = [f"file {self.config_file} (from {self.config_file_source}) sets "
                 f"{', '.join(by.get('file', [])) or 'nothing'}" if self.config_file else "no file"]
        parts += [f"{kind} set {', '.join(by[kind])}" for kind in ("variables", "flags") if kind in by]
        return "; ".join(parts) + "; the rest are defaults"

    def named(self, key: str) -> str:
        """`key (from SOURCE)`, how configuration errors name an option; `key (default)` when no
        flag, variable or file set it."""
        source = self.source(key)
        return f"{key} (default)" if source == "default" else f"{key} (from {source})"

    def listeners(self) -> list[Listener]:
        return [parse_listener(s) for s in self.listen]

    def sink_kind(self) -> str:
        if self.sink != "auto":
            return self.sink
        if self.kafka.brokers:
            return "kafka"
        return "file" if self.output_file else "stdout"


# ---------------------------------------------------------------------------------------------
# Loading.


@dataclass(frozen=True)
class Option:
    """One leaf of the schema with all its spellings."""

    key: str  # dotted: kafka.brokers
    section: str | None
    name: str
    f: dataclasses.Field  # type: ignore[type-arg]

    @property
    def flag(self) -> str:
        return self.f.metadata.get("flag") or "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def dest(self) -> str:
        return "cfg__" + self.key.replace(".", "__")

    @property
    def help(self) -> str:
        return str(self.f.metadata["help"])

    def parse(self, v: Any) -> Any:
        return self.f.metadata["parse"](v)

    @property
    def default(self) -> Any:
        if self.f.default is not dataclasses.MISSING:
            return self.f.default
        return self.f.default_factory()  # type: ignore[misc,operator]


def options() -> list[Option]:
    out = []
    for f in dataclasses.fields(Config):
        if f.metadata.get("section"):
            sub = f.default_factory  # type: ignore[misc]
            for g in dataclasses.fields(sub):  # type: ignore[arg-type]
                out.append(Option(f"{f.name}.{g.name}", f.name, g.name, g))
        else:
            out.append(Option(f.name, None, f.name, f))
    return out


def _fmt_default(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(v) if v else "(none)"
    if isinstance(v, dict):
        return ",".join(f"{k}={r}" for k, r in v.items()) if v else "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v == "":
        return "(empty)"
    return str(v)


def _metavar(o: Option) -> str:
    accepted = getattr(o.f.metadata["parse"], "accepted", None)
    if accepted:
        return "{" + ",".join(accepted) + "}"
    if o.f.metadata.get("metavar"):
        return str(o.f.metadata["metavar"])
    return "TEXT" if o.f.metadata["parse"] is parse_str else "N"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per schema option (plus --config); defaults stay unset so precedence works."""
    parser.add_argument("--config", metavar="FILE", default=os.environ.get(ENV_PREFIX + "CONFIG"),
                        help="YAML file with the options below (keys as in `flowscope config`); "
                             f"env {ENV_PREFIX}CONFIG")
    groups: dict[str | None, Any] = {None: parser.add_argument_group("collector options"),
                                     "kafka": parser.add_argument_group("Kafka options"),
                                     "enrich": parser.add_argument_group("Kubernetes enrichment options")}
    for o in options():
        help_text = f"{o.help} [default: {_fmt_default(o.default)}; env {o.env}]".replace("%", "%%")
        g = groups[o.section]
        if o.f.type in ("bool",) or isinstance(o.default, bool):
            # `--dedup`, `--dedup=false` (any spelling its variable and the file take: a chart
            # writing `--{{ key }}={{ value }}` was refused, "ignored explicit argument") or
            # `--no-dedup`
            g.add_argument(o.flag, dest=o.dest, nargs="?", const="true", default=argparse.SUPPRESS,
                           metavar="BOOL", help=help_text)
            g.add_argument("--no-" + o.flag[2:], dest=o.dest, action="store_const", const="false",
                           default=argparse.SUPPRESS, help=f"same as {o.flag} false")
        elif o.f.metadata.get("repeat"):
            g.add_argument(o.flag, dest=o.dest, action="append", default=argparse.SUPPRESS,
                           metavar=_metavar(o), help=help_text)
        else:
            g.add_argument(o.flag, dest=o.dest, default=argparse.SUPPRESS,
                           metavar=_metavar(o), help=help_text)
        if o.key == "enrich.enabled":
            g.add_argument("--no-enrich", dest=o.dest, action="store_const", const="false",
                           default=argparse.SUPPRESS, help="same as --enrich false")


def add_option_flag(group: Any, key: str) -> str:
    """Schema option `key` as a flag of another command (`flowscope decode` takes the enrichment
    options of run's that apply offline): run's flag, metavar, parser and range (a bad value a
    usage error naming the flag) and help, `[default: X]` (no variable: only run reads them).
    The parsed value lands in the option's name, None when not given; returns that name."""
    o = next(o for o in options() if o.key == key)

    def parse(text: str) -> Any:
        try:
            return o.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = o.name   # (what argparse names in a message it words itself)
    help_text = f"{o.help} [default: {_fmt_default(o.default)}]".replace("%", "%%")
    if isinstance(o.default, bool):
        # as run takes it: `--flag`, `--flag=false` or `--no-flag` (collector.cli.bare_optional_flags
        # keeps a capture's name after a bare one from being read as its value)
        group.add_argument(o.flag, dest=o.name, type=parse, nargs="?", const=True, default=None, metavar="BOOL",
                           help=help_text)
        group.add_argument("--no-" + o.flag[2:], dest=o.name, action="store_false", default=None,
                           help=f"same as {o.flag} false")
        return o.name
    group.add_argument(o.flag, dest=o.name, type=parse, default=None, metavar=_metavar(o), help=help_text)
    return o.name


def _set(cfg: Config, o: Option, raw: Any, source: str) -> None:
    try:
        value = o.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{o.key} (from {source}): {exc}") from None
    target = getattr(cfg, o.section) if o.section else cfg
    setattr(target, o.name, value)
    cfg.sources[o.key] = source


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping: (dotted key, first line, second line)."""


def _check_duplicate_keys(node: yaml.Node, prefix: str = "", seen: set[int] | None = None) -> None:
    """Refuse a key given twice in one mapping (PyYAML silently keeps the last one, so a second
    `kafka:` section appended at the bottom of a file discards the first). Keys are compared as
    options: `max_datagram` and `max-datagram` are the same key."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge" or not isinstance(k, yaml.ScalarNode):
                _check_duplicate_keys(v, prefix, seen)
                continue
            name = prefix + str(k.value).replace("-", "_")
            line = k.start_mark.line + 1
            if name in first:
                raise _DuplicateKey(name, first[name], line)
            first[name] = line
            _check_duplicate_keys(v, name + ".", seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, prefix, seen)


def _safe_load_unique(stream: Any, prepare: Callable[[yaml.Node], None] | None = None) -> Any:
    """yaml.safe_load, refusing duplicate keys (see _check_duplicate_keys); `prepare` may adjust
    the composed nodes before they are constructed."""
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node)
        if prepare is not None:
            prepare(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


# What YAML 1.1 reads from a plain scalar that is not a string: for an option that takes text, the
# text as written is meant (`cluster_name: 0123` is not the octal number 83, `client_id: 1.10` not
# 1.1, `sasl_user: no` not False).
_NOT_STR_TAGS = {"tag:yaml.org,2002:" + t for t in ("bool", "int", "float", "timestamp")}
# What YAML 1.1 reads as an integer that a flag or variable does not: `010` as octal 8, `1:20` as
# sexagesimal 80. For an option that takes a number (and a sampling rate) the text is read by the
# option's own parser instead, as from a flag or variable: `workers: 010` is 10.
_INT_TAGS = {"tag:yaml.org,2002:int"}


def _base_parser(o: Option) -> Callable[[Any], Any]:
    parse = o.f.metadata["parse"]
    return getattr(parse, "base", parse)  # type: ignore[no-any-return]


def _text_as_written(node: yaml.Node) -> None:
    """Re-tag, before construction, the plain scalars given to options that take text (and to the
    items of text lists) as strings, so that they keep their text instead of YAML's reading of it;
    likewise the integers given to options that take numbers (see _INT_TAGS)."""
    if not isinstance(node, yaml.MappingNode):
        return
    tags: dict[str, set[str]] = {}
    for o in options():
        base = _base_parser(o)
        if base in (parse_str, parse_list):
            tags[o.key] = _NOT_STR_TAGS
        elif base in (parse_int, parse_size, parse_seconds, parse_float, parse_map):
            tags[o.key] = _INT_TAGS
    sections = {o.section for o in options() if o.section}

    def retag(v: yaml.Node, which: set[str]) -> None:
        if isinstance(v, yaml.MappingNode):   # (sampling: {CIDR: RATE}: the rates)
            items = [val for _, val in v.value]
        elif isinstance(v, yaml.SequenceNode):
            items = v.value
        else:
            items = [v]
        for item in items:
            if isinstance(item, yaml.ScalarNode) and item.style is None and item.tag in which:
                item.tag = "tag:yaml.org,2002:str"

    def walk(mapping: yaml.MappingNode, prefix: str) -> None:
        for k, v in mapping.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            if k.tag == "tag:yaml.org,2002:merge":   # `<<: *defaults`: its keys are this mapping's
                for m in (v.value if isinstance(v, yaml.SequenceNode) else [v]):
                    if isinstance(m, yaml.MappingNode):
                        walk(m, prefix)
                continue
            name = prefix + str(k.value).replace("-", "_")
            if not prefix and name in sections and isinstance(v, yaml.MappingNode):
                walk(v, name + ".")
            elif name in tags:
                retag(v, tags[name])

    walk(node, "")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line, where it is first: "line L, column C: PROBLEM (CONTEXT)". Its
    own text runs over three lines (context, problem, the mark with the file's name again), and
    a configuration error is one line in the log (`kubectl logs`, a log pipeline's records)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def load_yaml(path: str, source: str = "--config") -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = _safe_load_unique(fh, _text_as_written)
    except _DuplicateKey as exc:
        key, first, second = exc.args
        raise ConfigError(f"{key} (from {path}): given twice, on lines {first} and {second} (only the last "
                          "would apply): keep one") from None
    except OSError as exc:
        raise ConfigError(f"{source} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # a binary or Latin-1 file (the error's offset is within a read chunk)
        raise ConfigError(f"{source} {path}: not UTF-8 text ({_first_non_utf8(path)}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        # (PyYAML's words for a tab say nothing of tabs: "found character '\\t' that cannot start
        # any token"; an editor's tab indent or a tab after a colon is the usual cause)
        hint = (" (a tab character: YAML indents with spaces, and takes none after a key's colon here; "
                "replace it with spaces)" if "'\\t'" in str(exc) else "")
        raise ConfigError(f"{source} {path}: not valid YAML: {_yaml_problem(exc)}{hint}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} {path}: expected a mapping of options at the top level")
    return data


def _first_non_utf8(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        raw.decode("utf-8")
    except OSError as exc:
        return exc.strerror or str(exc)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"byte 0x{raw[exc.start]:02x} on line {line}"
    return "changed while read"


def _flatten_yaml(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    by_key = {o.key: o for o in options()}
    sections = {o.section for o in options() if o.section}
    flat: dict[str, Any] = {}
    for k, v in data.items():
        k = str(k).replace("-", "_")
        if k in sections:
            if v is None:
                # `kafka:` with every option under it commented out (or left out by a template):
                # no options, as an empty file is none
                continue
            if not isinstance(v, Mapping):
                raise ConfigError(f"{k} (from {path}): expected a mapping of {k} options")
            for sk, sv in v.items():
                key = f"{k}.{str(sk).replace('-', '_')}"
                if key not in by_key:
                    raise ConfigError(f"{key} (from {path}): unknown option{_did_you_mean(key)}; {k} options "
                                      "are: " + ", ".join(o.name for o in options() if o.section == k))
                flat[key] = sv
        elif k in by_key:
            flat[k] = v
        else:
            raise ConfigError(f"{k} (from {path}): unknown option{_did_you_mean(k)}; options are: "
                              + ", ".join(o.key for o in options()))
    return flat


def _did_you_mean(key: str) -> str:
    """` (did you mean KEY?)` for a YAML key that names no option, as for an unknown FLOWSCOPE_*
    variable: a close spelling (`worker`, `kafka.topc`), a section's option written at the top
    level or a top-level one in a section (`brokers`, `kafka.workers`), a section written into
    the key (`kafka_brokers`), or the option's variable (`FLOWSCOPE_KAFKA_BROKERS`, a Deployment's
    env list made a file); "" when nothing is close."""
    import difflib

    section, _, name = key.rpartition(".")
    # (from one section to another is no slip: kafka.enabled is not enrich.enabled)
    close = [o.key for o in options() if (o.name == name and not (section and o.section))
             or o.key == name.replace("_", ".", 1) or o.env == name.upper()][:1]
    if not close:
        close = difflib.get_close_matches(key, [o.key for o in options()], n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _config_path(args: argparse.Namespace | None, env: Mapping[str, str]) -> str | None:
    """The YAML file the sources name: --config (whose default is FLOWSCOPE_CONFIG), or the
    variable when there are no parsed flags."""
    return getattr(args, "config", None) if args is not None else env.get(ENV_PREFIX + "CONFIG")


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the effective Config from defaults, YAML, environment and parsed flags; validate it."""
    env = os.environ if environ is None else environ
    cfg = Config()
    cfg_path = _config_path(args, env)
    # (the flag's default is the variable: a path equal to it came from there, as far as anyone can tell)
    source = "--config" if cfg_path and cfg_path != env.get(ENV_PREFIX + "CONFIG") else ENV_PREFIX + "CONFIG"
    opts = options()
    if cfg_path:
        cfg.config_file, cfg.config_file_source = cfg_path, source
        flat = _flatten_yaml(load_yaml(cfg_path, source), cfg_path)
        for o in opts:
            if o.key in flat:
                _set(cfg, o, flat[o.key], cfg_path)
    for o in opts:
        if o.env in env:
            _set(cfg, o, env[o.env], o.env)
    if args is not None:
        for o in opts:
            if hasattr(args, o.dest):
                _set(cfg, o, getattr(args, o.dest), o.flag)
    validate(cfg)
    return cfg


def log_format_asked(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The log format the sources ask for (flag > variable > file), read alone: for the line that
    refuses a configuration whose other settings load() did not take (the manifests' file has
    log_format json; a misspelt key or a bad value in it stopped the pod with a bare text line,
    the one a log pipeline could not parse). "text" where it cannot be told."""
    env = os.environ if environ is None else environ
    o = next(o for o in options() if o.key == "log_format")
    raws: list[Any] = []
    cfg_path = _config_path(args, env)
    if cfg_path:
        try:
            data = load_yaml(cfg_path)
        except ConfigError:
            data = {}
        raws += [v for k, v in data.items() if str(k).replace("-", "_") == "log_format"]
    raws += [env.get(o.env), getattr(args, o.dest, None)]
    fmt = "text"
    for raw in raws:
        if raw is not None:
            try:
                fmt = o.parse(raw)
            except ValueError:
                pass
    return fmt


# FLOWSCOPE_* variables that are not options: build switches read by setup.py, and what the tests
# and the demo read. Everything else with the prefix is an option or a misspelling of one.
NON_OPTION_ENV = {"CONFIG", "DEBUG", "ANNOTATE", "FUZZ", "CORPUS", "SHARED_CORPUS", "KEEP_CAPTURES", "DEMO_KEEP"}


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """FLOWSCOPE_* variables that match no option: a misspelt variable is the classic "why is my
    setting not applied". Every enrichment option is in the schema too (FLOWSCOPE_ENRICH_*), so
    none is exempt. The callers warn instead of refusing to start: an orchestrator may set
    variables meant for another version."""
    env = os.environ if environ is None else environ
    known = {o.env for o in options()} | {ENV_PREFIX + n for n in NON_OPTION_ENV}
    return sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known)


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per unknown FLOWSCOPE_* variable, with the option it probably meant."""
    import difflib

    names = [o.env for o in options()]
    out = []
    for n in unknown_env(environ):
        close = difflib.get_close_matches(n, names, n=1, cutoff=0.8)
        out.append(f"ignoring unknown variable {n}" + (f" (did you mean {close[0]}?)" if close else ""))
    return out


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> str:
    return "IPv6" if ":" in host else "IPv4"


def _same_socket(h1: str, p1: int, h2: str, p2: int) -> str:
    """Whether two bind addresses collide: "same" for one address written twice ([::1] and
    [0::1]), the wildcard host (0.0.0.0 or ::) when one covers the other on the port, else ""."""
    if p1 != p2 or p1 == 0:  # port 0: each socket gets a port of its own
        return ""
    try:
        a1, a2 = ipaddress.ip_address(h1), ipaddress.ip_address(h2)
    except ValueError:  # a host name (metrics address): only the same text is known to collide
        return "same" if h1 == h2 else ""
    if a1 == a2:
        return "same"
    if a1.version != a2.version:  # [::] is IPv6 only (IPV6_V6ONLY): it does not take 0.0.0.0
        return ""
    for h, a in ((h1, a1), (h2, a2)):
        if a.is_unspecified:
            return h
    return ""


def validate(cfg: Config) -> None:
    """Cross-field checks that a single parser cannot make. Each error names every setting it
    involves with where it came from (Config.named), as the parsers' errors do: a value that
    clashes with one from another source is otherwise hard to find."""
    n = cfg.named
    if not cfg.listen:
        raise ConfigError(f"{n('listen')}: at least one listener is needed, e.g. netflow://0.0.0.0:2055")
    listeners = cfg.listeners()
    for i, lst in enumerate(listeners):
        for earlier in listeners[:i]:
            clash = _same_socket(lst.host, lst.port, earlier.host, earlier.port)
            if clash == "same":
                raise ConfigError(f"{n('listen')}: {_hostport(lst.host, lst.port)} is listed twice "
                                  f"({earlier} and {lst})")
            if clash:
                raise ConfigError(f"{n('listen')}: {earlier} and {lst} overlap: {clash} takes every "
                                  f"{_family(clash)} address on port {lst.port}; list one of them")
    for name, addr in (("metrics_addr", cfg.metrics_addr), ("health_addr", cfg.health_addr)):
        if addr and split_hostport(addr)[1] == 0:  # a random port nothing would know to scrape or probe
            raise ConfigError(f"{n(name)}: {addr}: port must be 1-65535 (empty disables it)")
    if cfg.metrics_addr and cfg.health_addr:
        (mh, mp), (hh, hp) = split_hostport(cfg.metrics_addr), split_hostport(cfg.health_addr)
        clash = _same_socket(mh, mp, hh, hp)
        if clash:
            what = (f"is also {n('metrics_addr')}" if clash == "same" else
                    f"overlaps {n('metrics_addr')} {cfg.metrics_addr} ({clash} takes every {_family(clash)} "
                    "address)")
            raise ConfigError(f"{n('health_addr')}: {cfg.health_addr} {what}: leave health_addr empty to serve "
                              "/healthz and /readyz on the metrics address, or give it another port")
    kind = cfg.sink_kind()
    if kind == "kafka" and not cfg.kafka.brokers:
        raise ConfigError(f"{n('kafka.brokers')}: empty, but {n('sink')} is kafka: give the brokers "
                          "(--kafka-brokers HOST:PORT[,...])")
    if kind == "file" and not cfg.output_file:
        raise ConfigError(f"{n('output_file')}: empty, but {n('sink')} is file: give the file "
                          "(--output-file PATH)")
    for b in cfg.kafka.brokers:
        try:
            if split_hostport(b)[1] == 0:
                raise ValueError(f"{b!r}: port must be 1-65535")
            host = b.rsplit(":", 1)[0].strip("[]")
            if not host or not re.fullmatch(r"[A-Za-z0-9._:%-]+", host):
                # (an empty host would mean "any address" to a listener, not a broker to reach)
                raise ValueError(f"{b!r}: expected HOST:PORT with a host name or address")
        except ValueError as exc:
            raise ConfigError(f"{n('kafka.brokers')}: {exc}") from None
    k = cfg.kafka
    if (k.tls_cert == "") != (k.tls_key == ""):
        given, missing = ("kafka.tls_cert", "kafka.tls_key") if k.tls_cert else ("kafka.tls_key", "kafka.tls_cert")
        raise ConfigError(f"{n(given)} is set but {n(missing)} is empty: give both for mutual TLS, or neither")
    if k.sasl_mechanism == "none" and (k.sasl_user or k.sasl_password):
        set_ = [n(key) for key, v in (("kafka.sasl_user", k.sasl_user), ("kafka.sasl_password", k.sasl_password))
                if v]
        raise ConfigError(f"{' and '.join(set_)} {'are' if len(set_) > 1 else 'is'} set but {n('kafka.sasl_mechanism')} "
                          "is none: the collector would connect without authenticating (set "
                          "kafka.sasl_mechanism)")
    if k.sasl_mechanism != "none" and not k.sasl_user:
        raise ConfigError(f"{n('kafka.sasl_user')}: empty, but {n('kafka.sasl_mechanism')} is "
                          f"{k.sasl_mechanism}: SASL needs a user (and kafka.sasl_password)")
    if k.sasl_mechanism != "none" and not k.sasl_password:
        # (the manifests' Secret is optional: one missing, or holding the password under another
        # key, left the variable unset, and the broker's refusal was logged as a wrong password)
        raise ConfigError(f"{n('kafka.sasl_password')}: empty, but {n('kafka.sasl_mechanism')} is "
                          f"{k.sasl_mechanism}: give the password with {ENV_PREFIX}KAFKA_SASL_PASSWORD")
    lo, hi = COMPRESSION_LEVELS.get(k.compression, (0, 0))
    if not lo <= k.compression_level <= hi:
        raise ConfigError(f"{n('kafka.compression_level')}: {k.compression_level} is out of range for "
                          f"{n('kafka.compression')} {k.compression}: {lo} to {hi} (0 = flowscope's default)")
    for key in sorted(SECRET_KEYS):
        sec, _, name = key.partition(".")
        if getattr(getattr(cfg, sec), name) == REDACTED:
            # `flowscope config > f.yaml` then `--config f.yaml` would otherwise authenticate with
            # the placeholder itself and fail at the broker, far from the cause
            env = ENV_PREFIX + key.replace(".", "_").upper()
            raise ConfigError(f"{n(key)}: {REDACTED} is the placeholder `flowscope config` prints instead of "
                              f"the secret, not the secret: set {env} (it beats the file) or remove the key")
    if kind == "kafka" and cfg.queue_bytes < 3 * k.batch_bytes:
        # A record batch is queued whole: one larger than the queue's free room is dropped whole
        # (every flow of it counted queue_full) though most of it would have fitted. The open
        # batches count in queue_bytes too (at least one batch: the queue's own bound is
        # queue_bytes less theirs, Worker), so the queue holds two (one waiting behind one in
        # flight) only from three batches up: at two, every batch filled while one was in flight
        # was dropped
        raise ConfigError(f"{n('queue_bytes')}: {cfg.queue_bytes} is less than three times "
                          f"{n('kafka.batch_bytes')} {k.batch_bytes}: a record batch is queued whole, so besides "
                          "the open batches (which count in queue_bytes too) the queue must hold at least two; "
                          "raise queue_bytes or lower kafka.batch_bytes")
    if not k.topic:
        raise ConfigError(f"{n('kafka.topic')}: must not be empty")
    topic_name_ok(n("kafka.topic"), k.topic)
    if cfg.counters and kind == "kafka" and not k.counters_topic:
        raise ConfigError(f"{n('kafka.counters_topic')}: must not be empty when {n('counters')} is true")
    if cfg.counters and k.counters_topic:
        topic_name_ok(n("kafka.counters_topic"), k.counters_topic)
    if cfg.counters and kind == "kafka" and k.counters_topic == k.topic:
        raise ConfigError(f"{n('kafka.counters_topic')}: {k.counters_topic!r} is also {n('kafka.topic')}: "
                          "counter records would land among the flows that consumers of the flow format read; "
                          "give them a topic of their own")


def topic_name_ok(key: str, name: str) -> None:
    """Kafka's rule for topic names: ASCII letters, digits, '.', '_' and '-', at most 249
    characters, not '.' or '..' (a broker refuses others: the collector would queue every flow
    for a topic that can never exist)."""
    if len(name) > 249 or name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"{key}: {name[:80]!r}{'...' if len(name) > 80 else ''} is not a valid Kafka topic name "
                          "(letters, digits, '.', '_' and '-', at most 249 characters, not '.' or '..')")


def to_dict(cfg: Config, *, redact: bool = True) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    if redact:
        for key in SECRET_KEYS:
            sec, _, name = key.partition(".")
            if d[sec][name]:
                d[sec][name] = REDACTED
    return d


def to_yaml(cfg: Config, *, redact: bool = True) -> str:
    """The effective config as YAML that `--config` accepts back; a redacted secret is named in a
    comment, since loading the file needs it from its variable (the placeholder is refused)."""
    d = to_dict(cfg, redact=redact)
    head = ""
    for key in sorted(SECRET_KEYS):
        sec, _, name = key.partition(".")
        if d[sec][name] == REDACTED:
            env = ENV_PREFIX + key.replace(".", "_").upper()
            head += f"# {key} is set but not shown: give it with {env} when loading this file ({REDACTED} is refused)\n"
    return head + yaml.safe_dump(d, sort_keys=False, default_flow_style=False)


def markdown_table() -> str:
    """The options table for docs/collector.md, generated so docs cannot drift from the schema."""
    rows = ["| flag | env | YAML key | default | meaning |", "|---|---|---|---|---|"]
    for o in options():
        rows.append(f"| `{o.flag}` | `{o.env}` | `{o.key}` | `{_fmt_default(o.default)}` | {o.help} |")
    return "\n".join(rows)
