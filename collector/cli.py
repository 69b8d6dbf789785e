"""`flowscope` command line: run, replay, config and decode.

Why the collector's flags are generated: `flowscope run --help` must document every option and
must never disagree with the YAML keys or environment variables, so the flags come from the
schema in `collector.config` (see there); this module only wires subcommands.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import logging
import os
import signal
import sys
import tempfile
from typing import Any

from . import config as config_mod
from .util import udp_port


def _enrich_module() -> Any:
    try:
        import enrich
    except Exception:
        return None
    if not hasattr(enrich, "add_cli_arguments") or not hasattr(enrich, "config_from_args"):
        return None
    return enrich


def _enrichment(cfg: config_mod.Config, credentials: bool = True) -> tuple[Any, str, str]:
    """Whether `flowscope run` enriches: (enrich.EnrichConfig or None, what to log, error).

    Decided and checked here, once, before any worker is forked: a kubeconfig that cannot be
    loaded is a configuration error (exit 2), not a traceback in every worker."""
    e = cfg.enrich
    if e.enabled == "false":
        return None, "enrichment off (enrich.enabled false)", ""
    enrich = _enrich_module()
    if enrich is None:
        if e.enabled == "true":
            return None, "", f"{cfg.named('enrich.enabled')} is true but the enrich package cannot be imported"
        return None, "enrichment off: the enrich package cannot be imported", ""
    try:
        enrich_cfg = enrich.EnrichConfig(
            enabled=True, kubeconfig=e.kubeconfig or None, context=e.context or None,
            cluster_name=e.cluster_name, infra_namespace_prefixes=list(e.infra_namespace_prefixes),
            flow_layer_rule=e.flow_layer_rule, tombstone_seconds=e.tombstone_seconds, pod_networks=e.pod_networks,
            list_chunk_size=e.list_chunk_size, list_gzip=e.list_gzip,
            list_page_timeout_seconds=e.list_page_timeout_seconds)
        enrich_cfg.validate()
    except ValueError as exc:
        return None, "", f"enrich: {exc}"
    from .app import cluster_access, kube_access_error

    source = cluster_access(enrich_cfg)
    if not source and e.enabled == "auto":
        where = ("in a pod without a ServiceAccount token" if os.environ.get("KUBERNETES_SERVICE_HOST")
                 else "not in a pod")
        kc = os.environ.get("KUBECONFIG", "")
        env = (f"$KUBECONFIG {kc} names no existing file" if kc else "no --kubeconfig / $KUBECONFIG")
        return None, (f"enrichment off: {where} and {env} (~/.kube/config alone "
                      "does not turn it on: use --kubeconfig or --enrich true)"), ""
    problem = kube_access_error(enrich_cfg, f"{cfg.named('enrich.kubeconfig')}:",
                                f"{cfg.named('enrich.context')}:", cfg.named("enrich.enabled"),
                                credentials=credentials)
    if problem:
        return None, "", problem
    return enrich_cfg, f"enrichment on: {source or 'the kubeconfig client default (~/.kube/config)'}", ""


def _start_checks(cfg: config_mod.Config, credentials: bool = True) -> tuple[Any, str, str]:
    """The checks `flowscope run` makes at start beyond the schema's, which read files and
    libraries but start nothing: the Kafka sink's codec library and TLS files, then the cluster
    access (see _enrichment, whose result this is). `flowscope config` makes them too, so a
    configuration it prints is one `run` accepts, but with credentials=False: the kubeconfig's
    files and context are checked, its credentials not loaded (no exec plugin is run)."""
    from .sinks import check_compression, check_tls

    state_problem = state_file_problem(cfg)
    if state_problem:
        return None, "", state_problem
    if cfg.sink_kind() == "kafka":
        problem = check_compression(cfg.kafka, cfg.named) or check_tls(cfg.kafka, cfg.named)
        if problem:
            return None, "", problem
    return _enrichment(cfg, credentials)


def state_file_problem(cfg: config_mod.Config) -> str:
    """Why --state-file can never be written, said at start (exit 2) rather than by every save
    (logged and counted while the collector looks fine, its templates lost at the next
    restart): the path is a directory, or its directory does not exist or takes no new file
    from this process (a save writes a temporary file there and renames it over the path; with
    --workers N each worker's PATH.N is there too). A file there that cannot be read is left to
    the load, and failures that come later (a full disk, a volume gone) to the saves."""
    path = cfg.state_file
    if not path:
        return ""
    name = f"{cfg.named('state_file')}: {path}"
    if os.path.isdir(path):
        return (f"{name} is a directory: give the path of a file, such as {os.path.join(path, 'state.json')} "
                "(with --workers N each worker writes PATH.N beside it)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            return f"{name}: {parent} is not a directory: give a path in a writable directory"
        return (f"{name}: its directory {parent} does not exist: create it (a volume's mount path), or give a "
                "path in a writable directory")
    # (tried, not asked of os.access: root passes that everywhere, also where nothing can be
    # created, a read-only mount or /proc; the file is a save's temporary one, removed at once)
    from .state import TEMP_PREFIX

    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
    except OSError as exc:
        return (f"{name}: cannot create files in its directory {parent} ({exc.strerror or exc}), where each save "
                "writes a temporary file and renames it over the path: give a path in a writable directory "
                "(a volume), or let the collector's user write there")
    os.close(fd)
    os.unlink(tmp)
    return ""


def _output_file_problem(cfg: config_mod.Config) -> str:
    """What `run` would say of a file sink's file it cannot open (`cannot start: output file
    PATH: cannot open: ...`, exit 2), said by `config` without creating the file: `run` opens it
    in each worker as it starts, so this check is `config`'s alone."""
    if cfg.sink_kind() != "file" or not cfg.output_file:
        return ""
    path = cfg.output_file
    if os.path.isdir(path):
        err = errno.EISDIR
    elif os.path.exists(path):
        err = 0 if os.access(path, os.W_OK) else errno.EACCES
    else:
        parent = os.path.dirname(os.path.abspath(path))
        err = (errno.ENOENT if not os.path.isdir(parent)
               else 0 if os.access(parent, os.W_OK | os.X_OK) else errno.EACCES)
    return f"{cfg.named('output_file')}: output file {path}: cannot open: {os.strerror(err)}" if err else ""


def _library_warnings(enrich_cfg: Any) -> list[str]:
    """Libraries installed that the configuration can use, but not safely: with enrichment on,
    a urllib3 older than the one flowscope requires (enrich.urllib3_warning). A warning, not a
    refusal: enrichment works with it, and only a broken API server or proxy makes it unsafe,
    as insecure-skip-tls-verify is warned of (urllib3's InsecureRequestWarning), not refused."""
    w = "" if enrich_cfg is None else _enrich_module().urllib3_warning()
    return [w] if w else []


def _ignored_settings(cfg: config_mod.Config, enrich_cfg: Any) -> list[str]:
    """Settings given that the configuration makes no use of, one warning each (`run` logs them,
    `config` prints them, as for an unknown FLOWSCOPE_* variable): a warning, not an error, since
    one file may serve pods and workstations alike. In a pod without a kubeconfig the client
    loads the in-cluster config (enrich.load_api_client), which has no contexts, so a context
    there was dropped without a word, and so was a $KUBECONFIG set in the pod's environment (an
    image's or a manifest's leftover): the client never reads it there."""
    e = cfg.enrich
    out = []
    if cfg.output_file and cfg.sink_kind() != "file":
        # (logged by `run` alone, it went unsaid by `config`, which is asked whether a file is right)
        out.append(f"{cfg.named('output_file')} {cfg.output_file} is not written: the sink is {cfg.sink_kind()} "
                   "(sink auto: Kafka when brokers are given; --sink file writes the file)")
    if cfg.kafka.brokers and cfg.sink_kind() != "kafka":
        # (the other half of the same slip: brokers in the ConfigMap or a FLOWSCOPE_ variable, and a
        # --sink stdout/file left from debugging, sent nothing to Kafka without a word)
        out.append(f"{cfg.named('kafka.brokers')} {','.join(cfg.kafka.brokers)} not used: the sink is "
                   f"{cfg.sink_kind()} ({cfg.named('sink')}; sink auto or kafka publishes to Kafka)")
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if enrich_cfg is not None and e.context and not e.kubeconfig and in_pod:
        out.append(f"ignoring {cfg.named('enrich.context')}: in a pod (KUBERNETES_SERVICE_HOST is set) without "
                   "enrich.kubeconfig the in-cluster config (ServiceAccount) is used, which has no contexts; "
                   "give --kubeconfig to use a context of it")
    from .app import kubeconfig_env_ignored

    env = kubeconfig_env_ignored(enrich_cfg)
    if env:
        out.append(env)
    return out


class Parser(argparse.ArgumentParser):
    """flowscope's parsers: no abbreviations, and a misspelt option named with the one it is
    closest to. argparse took any unambiguous prefix of an option for it (`--kafka-broker` for
    `--kafka-brokers`): a typo went unnoticed, and an option added later that shares the
    prefix would silently change what a deployed command line means, or refuse it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # the arguments of this parser's last parse, for error() (each parser its own list)
        self._given: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error("unrecognized arguments: " + " ".join(extras) + self._did_you_mean(extras))
        return ns, extras

    def error(self, message: str) -> Any:
        """argparse's other errors name the misspelt flag too: a required one misspelt (`replay
        --too`) is reported as missing, a misspelt flag before the command (`--verison`) as no
        command, before the unknown arguments are looked at."""
        if "did you mean" not in message:
            given = self._given
            if self._subparsers is not None:   # (the top level: what comes before the command)
                given = given[:next((i for i, t in enumerate(given) if not t.startswith("-")), len(given))]
            message += self._did_you_mean([t for t in given if t.partition("=")[0] not in self._option_string_actions])
        super().error(message)

    def _did_you_mean(self, extras: list[str]) -> str:
        """` (did you mean --X?)` for each unknown --option close to one of this parser's."""
        # (compared without the dashes, which every flag shares: `--typo` is not close to `--to`)
        known = [o[2:] for o in self._option_string_actions if o.startswith("--")]
        hints = []
        for tok in extras:
            flag = tok.partition("=")[0]
            if flag.startswith("--") and len(flag) > 2:
                close = difflib.get_close_matches(flag[2:], known, n=1, cutoff=0.75)
                if close:
                    hints.append(f"{flag}: did you mean --{close[0]}?")
        return f" ({'; '.join(hints)})" if hints else ""


class _CommandParser(Parser):
    """A subcommand's parser. argparse hands what a subcommand's parser does not know up to the
    top-level parser, which reports it under `usage: flowscope COMMAND ...`, saying nothing of
    the subcommand's options: `flowscope run --typo` is reported with `run`'s usage instead
    (Parser.parse_known_args refuses it here)."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flowscope",
        description="IPFIX / NetFlow / sFlow collector for Kubernetes: NetObserv JSON flows to Kafka or stdout.")
    from . import version

    parser.add_argument("--version", action="version", version=f"flowscope {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True

    run = sub.add_parser("run", help="receive flows and publish them",
                         description="Receive NetFlow v5/v9, IPFIX and sFlow v5 over UDP and publish one JSON "
                         "flow per record (NetObserv names) to Kafka, a file or stdout. Every option can also "
                         "be set with the FLOWSCOPE_* variable shown, or in the YAML file given by --config "
                         "(precedence: flag > variable > file > default). An option that takes a list takes its items "
                         "separated by commas or spaces, or its flag repeated.",
                         epilog="Exit status: 0 when stopped by SIGTERM, SIGINT or SIGHUP (a SIGTERM or SIGHUP while "
                         "starting included: logged, nothing started); 1 when a worker died or the sink cannot take "
                         "data any more (stdout's reader gone); 2 for a configuration error or a start-up failure "
                         "(a listener or HTTP address that cannot be bound, an output file that cannot be opened, "
                         "an unusable kubeconfig); 130 for Ctrl-C before the collector handles it (while starting).",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    config_mod.add_arguments(run)

    cfg = sub.add_parser("config", help="print the effective configuration as YAML",
                         description="Print the configuration `flowscope run` would use with the same flags, "
                         "variables and --config file, as YAML (usable as --config). Secrets are shown as <redacted>, which "
                         "--config refuses: give them with their variables when loading the output back. What `flowscope run` "
                         "would refuse at start (an unusable kubeconfig or context, Kafka TLS files it cannot "
                         "load) is refused here too, with the same message and exit status 2; nothing is started, "
                         "and the kubeconfig's credentials are not loaded (no exec plugin runs).",
                         epilog="Exit status: 0 when the configuration was printed; 2 for a configuration error "
                         "(what `flowscope run` would refuse at start) or a usage error.")
    config_mod.add_arguments(cfg)
    cfg.add_argument("--markdown", action="store_true", help="print the options table (docs) instead")

    # replay and decode show their options as run does: `[default: X]` where there is one (not
    # argparse's "(default: None)" for a required or unset option).
    rp = sub.add_parser("replay", help="send the UDP payloads of a capture to a collector",
                        description="Send the UDP payloads of a pcap/pcapng capture to HOST:PORT, rewriting "
                        "sequence numbers and export times on every loop after the first so receivers do not "
                        "discard them as duplicates.",
                        epilog="Exit status: 0 when the capture was sent; 1 when FILE cannot be read, is not "
                        "a pcap/pcapng capture, holds no UDP datagram, or is cut short (what precedes the cut "
                        "is sent first), or when --loop asks for more than one loop of a pipe too large to "
                        "keep in memory (32 MiB; the first loop is sent); 2 for a usage error (a bad option, a bad or unresolvable --to); 130 "
                        "when interrupted.")
    rp.add_argument("file", metavar="FILE", help="pcap or pcapng capture (gzip-compressed or not)")
    rp.add_argument("--to", required=True, metavar="HOST:PORT", help="destination collector (IPv6 as [ADDR]:PORT); an empty or wildcard host, as "
                    "in a --listen address (:2055, 0.0.0.0:2055, [::]:2055), is this host: 127.0.0.1, ::1 for [::]")
    rp.add_argument("--rate", type=float, default=0.0, metavar="PPS",
                    help="datagrams per second; 0 = as fast as possible [default: 0]")
    rp.add_argument("--loop", type=int, default=1, metavar="N", help="times to send the capture; 0 = forever "
                    "[default: 1]")
    rp.add_argument("--port", type=udp_port, default=None, metavar="PORT",
                    help="only datagrams sent to this UDP port (1-65535) in the capture [default: all]")
    rp.add_argument("--quiet", action="store_true", help="no summary line")

    hp = sub.add_parser("health", help="ask a running collector's /healthz (a container's health check)",
                        description="Ask the /healthz (or /readyz) of a running `flowscope run` at the address it "
                        "serves, read from that process's command line, FLOWSCOPE_* variables and --config file "
                        "(PID 1, a container's entrypoint, or the first `flowscope run` found; the image's "
                        "HEALTHCHECK runs this).",
                        epilog="Exit status: 0 healthy (the endpoint answered 200, or the collector serves no "
                        "HTTP endpoint and its process runs); 1 unhealthy (another answer, no answer, an "
                        "unreadable configuration, a --pid that is not a `flowscope run` or cannot be read: "
                        "never the default address instead); 2 for a usage error (a bad option, a malformed --addr).")
    from . import health as health_mod

    health_mod.add_arguments(hp)
    hp.set_defaults(_health=health_mod.run)

    dec = sub.add_parser("decode", help="decode a capture and print the flows (offline)",
                         description="Decode the exporters' UDP datagrams of a pcap/pcapng capture with "
                         "the decoders of `flowscope run` and print one JSON flow per line.",
                         epilog="Exit status: 0 when the whole capture was decoded; 1 when FILE cannot be "
                         "read, is not a pcap/pcapng capture, holds no UDP datagram (to --port, when given), "
                         "is cut short (the complete records before the cut are decoded first), or when with --kubeconfig the "
                         "informers did not sync within --sync-timeout seconds (an API server not reachable, a list RBAC denies: nothing is decoded); "
                         "2 for a usage error (a bad option, an unusable --kubeconfig).")
    try:
        from . import decode as decode_mod

        decode_mod.add_arguments(dec)
        dec.set_defaults(_decode=decode_mod.run)
    except ImportError as exc:
        dec.add_argument("rest", nargs=argparse.REMAINDER)
        dec.set_defaults(_decode_error=str(exc))
    return parser


def bare_optional_flags(argv: list[str]) -> list[str]:
    """`flowscope decode`'s `--enrich` takes an optional value (`--enrich=false`), so argparse
    would read the token after a bare `--enrich` as its value: `flowscope decode --enrich
    capture.pcap` failed on "capture.pcap" as a boolean. There, a bare `--enrich` followed by
    anything that is not a boolean is `--enrich=true`; `--enrich-pod-networks` and `--enrich-list-gzip` likewise. (`run`
    and `config` take a value always for `--enrich`: auto, true or false.)"""
    out = list(argv)
    command = next((tok for tok in out if not tok.startswith("-")), None)
    if command != "decode":
        return out
    for i, tok in enumerate(out[:-1]):
        if tok == "--":
            break
        if tok in ("--enrich", "--enrich-pod-networks", "--enrich-list-gzip"):
            try:
                config_mod.parse_bool(out[i + 1])
            except ValueError:
                out[i] = tok + "=true"
    return out


def reopen_closed_std_fds() -> list[int]:
    """Which of fds 0, 1 and 2 were closed when the process started, each now open on /dev/null.

    A process started with one of them closed (`flowscope run >&-`, some daemon launchers)
    hands that number to the first socket it opens; uvloop then aborts the process (SIGABRT,
    its assertion that it never closes fds 0-2) when it closes that socket, at shutdown, and
    Python leaves sys.stdout None. /dev/null on them keeps every socket above 2, as daemons do."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:      # (the lowest free number: fd itself, unless a lower one was closed too)
            os.dup2(null, fd)
            os.close(null)
    return closed


class StoppedWhileStarting(BaseException):
    """A stop signal (SIGTERM, SIGHUP) that came while `flowscope run` loaded its modules and
    checked its configuration and cluster access (a kubeconfig's exec plugin may take seconds),
    before collector.app takes the signals over (see app.defer_stop_signals). A BaseException,
    so that no `except Exception` of the start-up checks takes it for a failure of theirs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_while_starting(signum: int, _frame: Any) -> None:
    raise StoppedWhileStarting(signum)


# the configuration `run` loaded, once it has: how to log the stop above (its --log-format)
_run_cfg: config_mod.Config | None = None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    before: dict[int, Any] = {}
    if next((tok for tok in args if not tok.startswith("-")), None) == "run":
        # SIGTERM (Kubernetes stopping a pod that is still starting: a rollout, a scale-down) or
        # SIGHUP before the collector handled them killed it with status 143 and not a line said
        # why (and as a container's PID 1, whose signals at their default action the kernel
        # drops, it was lost). Handled from here on; the other commands keep the default.
        from .app import EARLY_STOP_SIGNALS

        for sig in EARLY_STOP_SIGNALS:
            before[sig] = signal.signal(sig, _stop_while_starting)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before `run` handles it (SIGINT while the modules load, the kubeconfig's exec
        # plugin runs or the informers are set up) printed a traceback of wherever it landed
        print("flowscope: interrupted", file=sys.stderr)
        return 130
    except StoppedWhileStarting as exc:
        # a stop asked for, as SIGTERM once started: exit 0 (nothing was received, nothing lost)
        what = (f"stopped by {signal.Signals(exc.signum).name} while starting, before any listener was opened: "
                "nothing was received")
        if _run_cfg is not None and _run_cfg.log_format == "json":
            from .util import setup_logging

            setup_logging(_run_cfg.log_level, fmt="json")
            logging.getLogger("flowscope").info("%s", what)
        else:
            print(f"flowscope: {what}", file=sys.stderr)
        return 0
    finally:
        for signum, handler in before.items():   # (main called in a process that goes on: a test's)
            signal.signal(signum, handler)


def _main(argv: list[str] | None) -> int:
    closed_std = reopen_closed_std_fds()
    parser = build_parser()
    args = parser.parse_args(bare_optional_flags(sys.argv[1:] if argv is None else argv))
    if args.command == "decode":
        if hasattr(args, "_decode_error"):
            print(f"flowscope decode is not available: {args._decode_error}", file=sys.stderr)
            return 2
        return int(args._decode(args) or 0)
    if args.command == "health":
        return int(args._health(args))
    if args.command == "replay":
        if args.loop < 0 or not 0 <= args.rate < float("inf"):   # (a NaN rate sent at full speed)
            print("flowscope replay: --loop and --rate must be >= 0", file=sys.stderr)
            return 2
        try:
            from .pcap import PcapError
            from .replay import replay

            return replay(args.file, args.to, rate=args.rate, loops=args.loop, port_filter=args.port,
                          quiet=args.quiet)
        except KeyboardInterrupt:
            print("flowscope replay: interrupted", file=sys.stderr)
            return 130
        except PcapError as exc:  # a file that is not a capture: exit 1, as `flowscope decode` (2 is usage)
            print(f"flowscope replay: {args.file}: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"flowscope replay: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"flowscope replay: {exc}", file=sys.stderr)
            return 1
    try:
        cfg = config_mod.load(args)
    except config_mod.ConfigError as exc:
        if args.command == "run":
            return _refuse(f"configuration error: {exc}", config_mod.log_format_asked(args), "info")
        print(f"flowscope: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        for w in config_mod.unknown_env_warnings():
            print(f"flowscope: warning: {w}", file=sys.stderr)
        if args.markdown:
            print(config_mod.markdown_table())
            return 0
        # what `run` would refuse, `config` refuses alike: it says whether the file is good
        # (the kubeconfig's files and context, not its credentials: see kube_access_error)
        enrich_cfg, _note, problem = _start_checks(cfg, credentials=False)
        problem = problem or _output_file_problem(cfg)
        if problem:
            print(f"flowscope: configuration error: {problem}", file=sys.stderr)
            return 2
        for w in _ignored_settings(cfg, enrich_cfg) + _library_warnings(enrich_cfg):
            print(f"flowscope: warning: {w}", file=sys.stderr)
        sys.stdout.write(config_mod.to_yaml(cfg))
        return 0
    # run
    global _run_cfg
    _run_cfg = cfg
    from .util import setup_logging

    def refuse(what: str) -> int:
        return _refuse(what, cfg.log_format, cfg.log_level)

    if 1 in closed_std and cfg.sink_kind() == "stdout":
        return refuse("cannot start: stdout is closed, and the sink is stdout: give --output-file or "
                      "--kafka-brokers, or start flowscope with an open stdout")
    enrich_cfg, enrich_note, problem = _start_checks(cfg)
    if problem:
        return refuse(f"configuration error: {problem}")
    from .app import run as run_app

    setup_logging(cfg.log_level, fmt=cfg.log_format)
    for w in config_mod.unknown_env_warnings() + _ignored_settings(cfg, enrich_cfg) + _library_warnings(enrich_cfg):
        logging.getLogger("flowscope").warning("%s", w)
    return run_app(cfg, enrich_cfg, enrich_note)


def _refuse(what: str, log_format: str, log_level: str) -> int:
    """`flowscope run` will not start: with log format json a log pipeline gets the reason a pod
    does not start as the one JSON object it can parse, not a bare line. Exit status 2."""
    if log_format == "json":
        from .util import setup_logging

        setup_logging(log_level, fmt="json")
        logging.getLogger("flowscope").error("%s", what)
    else:
        print(f"flowscope: {what}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
