"""`flowscope decode FILE`: decode a capture offline, one JSON flow per line.

The same decoder and encoder as `flowscope run`, fed from a pcap/pcapng instead of a socket:
each datagram goes in with its source address and its capture timestamp as the receive time, in
file order, so templates, options and sampling learned from earlier packets apply to later ones.
It is how operators check what flowscope makes of an exporter before pointing it at Kafka, and
how the golden tests drive the decoders.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson

from collector.config import add_option_flag, parse_map
from collector.pcap import PcapError, PcapStats, iter_udp
from collector.util import positive_seconds, udp_port
from decoders import Decoder, DecoderConfig

__all__ = ["add_arguments", "enrich_config", "run"]

# `flowscope run`'s enrichment options that enrich.add_cli_arguments does not add, taken from
# run's schema (flag, parser, range, help) so that decode enriches as run would: the page size
# of the informers' lists (a large cluster lists as slowly here, and meets the same continue
# token expiry), and how long a deleted pod keeps its addresses (a long decode sees deletions:
# every flow of the capture started before them), whether lists ask for gzip, and how long one
# list page may take.
RUN_ENRICH_OPTIONS = ("enrich.list_chunk_size", "enrich.tombstone_seconds", "enrich.list_gzip",
                      "enrich.list_page_timeout_seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flowscope decode`."""
    # Shown as `flowscope run` shows its options: an upper-case metavar for every value (run's
    # N for a count), the default as `[default: X]` at the end of the help.
    parser.add_argument("file", metavar="FILE", help="pcap or pcapng capture holding the exporters' UDP "
                                                     "datagrams (gzip-compressed or not)")
    parser.add_argument("--stats", action="store_true",
                        help="print to stderr at the end what the capture held (frames, UDP datagrams, frames "
                             "skipped by reason, and whether the file was cut) and per-exporter statistics "
                             "(datagrams, flows, errors by reason, missing-template sets, templates)")
    parser.add_argument("--sampling", action="append", default=[], metavar="CIDR=RATE",
                        help="sampling rate for exporters in CIDR that send none, repeatable, or several separated by "
                        "commas or spaces (as `flowscope run --sampling`) [default: (none)]")
    parser.add_argument("--default-sampling", type=int, default=400, metavar="N",
                        help="rate for IPFIX/v9 exporters that send none, like Open vSwitch (400 is what "
                             "OVN-Kubernetes configures); 0 = leave unset [default: 400]")
    parser.add_argument("--counters", action="store_true",
                        help="also print sFlow counter records (JSON objects with RecordType); without it counter samples "
                        "are not decoded, counted as counter_samples_ignored (--stats), as by `flowscope run`")
    parser.add_argument("--options", action="store_true",
                        help="also print IPFIX/v9 options data records (RecordType options)")
    parser.add_argument("--dedup", action="store_true",
                        help="drop records marked Duplicate (ingress+egress twins of one packet)")
    parser.add_argument("--split-biflows", action="store_true",
                        help="an IPFIX biflow record (RFC 5103) as a flow per direction; off: one flow per record")
    parser.add_argument("--renormalize", action="store_true",
                        help="Bytes and Packets times the sampling rate the exporter sent (v5 header, "
                             "IPFIX/v9 record or options data, sFlow sample); not rates from --sampling or "
                             "--default-sampling (Open vSwitch's counts already are estimates)")
    parser.add_argument("--max-templates", type=int, default=1024, metavar="N",
                        help="templates kept per exporter [default: 1024]")
    parser.add_argument("--port", type=udp_port, action="append", default=[], metavar="PORT",
                        help="only decode datagrams sent to this UDP port (1-65535), repeatable [default: all]")
    try:
        import enrich
    except ImportError:  # enrichment is optional at this seam
        return
    parser.add_argument("--sync-timeout", type=positive_seconds, default=60.0, metavar="SECONDS",
                        help="with --kubeconfig: how long to wait for every informer's first full list "
                             "before giving up (exit 1, naming the kinds not listed and why) [default: 60]")
    add = getattr(enrich, "add_cli_arguments", None)
    if add is not None:
        group = add(parser)
        for key in RUN_ENRICH_OPTIONS:
            add_option_flag(group, key)


def _enricher(args: argparse.Namespace) -> tuple[Any, Callable[[], None]]:
    """Start Kubernetes enrichment when asked for (--kubeconfig, or an explicit --enrich: the
    client's default access, in-cluster ServiceAccount else $KUBECONFIG or ~/.kube/config);
    returns (enricher, stop). A kubeconfig that cannot be loaded is a usage error: one line,
    exit 2."""
    asked = getattr(args, "enrich", None)   # None: not given; True/False: given
    if asked is False or not (getattr(args, "kubeconfig", None) or asked):
        return None, lambda: None
    import enrich
    from collector.app import kube_access_error, kubeconfig_env_ignored

    cfg = enrich_config(args)
    if not cfg.enabled:
        return None, lambda: None
    # (first: it also explains an in-cluster config that cannot be used below)
    for w in (kubeconfig_env_ignored(cfg, "--kubeconfig", "--kubeconfig"), enrich.urllib3_warning()):
        if w:
            print(f"flowscope decode: warning: {w}", file=sys.stderr)
    problem = kube_access_error(cfg, "--kubeconfig", "--kube-context", enabled_name="--enrich")
    if problem:
        print(f"flowscope decode: {problem}", file=sys.stderr)
        raise SystemExit(2)
    enricher = enrich.Enricher(cfg)
    enricher.start()
    timeout = getattr(args, "sync_timeout", 60.0)
    if not enricher.wait_ready(timeout=timeout):
        # which kinds, and each one's latest failure (an RBAC verb missing, a server not reachable)
        why = "; ".join(enricher.unsynced())
        enricher.stop()
        raise SystemExit(f"flowscope decode: Kubernetes informers did not sync within {timeout:g} s"
                         + (f": {why}" if why else ""))
    return enricher, enricher.stop


def enrich_config(args: argparse.Namespace) -> Any:
    """The enrich.EnrichConfig of decode's enrichment flags (RUN_ENRICH_OPTIONS given or not)."""
    import enrich

    given = {key.partition(".")[2]: v for key in RUN_ENRICH_OPTIONS
             if (v := getattr(args, key.partition(".")[2], None)) is not None}
    return enrich.config_from_args(args, **given)


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered would otherwise be flushed into the
    closed pipe at exit, and the interpreter would print the error it gets and exit 120."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def run(args: argparse.Namespace) -> int:
    """Decode args.file to stdout; returns the process exit code."""
    try:
        try:
            # as `flowscope run` reads it (CIDR=RATE items separated by commas or spaces, the
            # flag repeated; CIDRs and rates checked): a `--sampling a=1,b=2` copied from a run
            # configuration was refused here, and a bad CIDR went unsaid until the decoder's check
            sampling = parse_map(args.sampling)
        except ValueError as e:
            raise ValueError(f"--sampling: {e}") from None
        cfg = DecoderConfig(default_sampling=args.default_sampling, sampling=sampling, dedup=args.dedup,
                            max_templates_per_exporter=args.max_templates, split_biflows=args.split_biflows,
                            renormalize=args.renormalize, keep_counters=args.counters)
        dec = Decoder(cfg)
    except ValueError as e:
        print(f"flowscope decode: {e}", file=sys.stderr)
        return 2
    enricher, stop = _enricher(args)
    out = sys.stdout.buffer
    pstats = PcapStats()
    ports = set(args.port)
    decoded = 0
    try:
        try:
            for dg in iter_udp(args.file, stats=pstats):
                if ports and dg.dport not in ports:
                    continue
                decoded += 1
                batch = dec.decode(dg.payload, dg.src, dg.sport, dg.ts)
                lines = batch.to_json(enricher)
                if args.counters:
                    lines += [orjson.dumps(c) for c in batch.counters]
                if args.options:
                    lines += [orjson.dumps(o) for o in batch.options]
                if lines:
                    out.write(b"\n".join(lines) + b"\n")
        finally:
            out.flush()  # the flows decoded before a bad record of the file still go out
    # BrokenPipeError is an OSError: it must be caught first, or a closed stdout is blamed on the file
    except BrokenPipeError:  # `flowscope decode x.pcap | head`: the reader has what it wanted
        _discard_stdout()
        return 0
    except (OSError, PcapError) as e:
        print(f"flowscope decode: {args.file}: {e}", file=sys.stderr)
        return 1
    finally:
        stop()
    if not decoded and not pstats.truncated:
        # Nothing was decoded, so nothing was printed: say why rather than exit 0 with no output
        # (the wrong file, a capture filtered on the wrong port, a --port typo), as replay does.
        seen = f"{pstats.datagrams} UDP datagrams, none to port {', '.join(map(str, sorted(ports)))}" \
            if ports and pstats.datagrams else f"no UDP datagrams found in {pstats.frames} frames"
        print(f"flowscope decode: {args.file}: {seen}", file=sys.stderr)
    if pstats.truncated:
        # The flows of the complete records are out; the file still lost its end (tshark: "cut
        # short in the middle of a packet"): say so on one line and exit 1, as for a bad capture.
        print(f"flowscope decode: {args.file}: {pstats.truncated}", file=sys.stderr)
    if args.stats:
        capture: dict[str, Any] = {"frames": pstats.frames, "udp_datagrams": pstats.datagrams,
                                   "skipped": pstats.skipped}
        if pstats.truncated:
            capture["truncated"] = pstats.truncated
        report = {"capture": capture, "exporters": dec.stats()}
        sys.stderr.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if pstats.truncated or not decoded else 0
