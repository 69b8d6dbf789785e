"""The offline commands' edges an operator meets: a capture with nothing to decode, looping a
capture read from a pipe, and numbers that argparse took but that meant nothing (a zero health
timeout, a negative replay rate or loop count)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_udp_port, make_v5
from test_decode_cli import run_decode, write_pcap

from collector import cli
from collector.util import popen_child, run_child

T0 = 1_700_000_000


def test_decode_of_a_capture_without_udp_says_so_and_exits_1(tmp_path: Path) -> None:
    """A capture of other traffic (here one TCP segment) printed nothing and exited 0, as if it
    had held exporters' datagrams without flows; replay said "no UDP datagrams found" and exit 1."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 4739, 1, 0, 0x50, 0x02, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + tcp
    cap = tmp_path / "tcp.pcap"
    cap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
                    + struct.pack("<IIII", T0, 0, len(ip), len(ip)) + ip)
    p = run_decode(str(cap))
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode().strip() == f"flowscope decode: {cap}: no UDP datagrams found in 1 frames"


def test_decode_with_a_port_nothing_was_sent_to_names_it(tmp_path: Path) -> None:
    cap = tmp_path / "v5.pcap"
    write_pcap(cap, [(T0, "10.0.0.1", 2055, make_v5(1, 2, 0, unix_secs=T0))], dport=2055)
    p = run_decode(str(cap), "--port", "4739")
    assert p.returncode == 1 and p.stdout == b""
    assert "1 UDP datagrams, none to port 4739" in p.stderr.decode()
    # the right port decodes as before
    p = run_decode(str(cap), "--port", "2055")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2, p.stderr


def _fed_fifo(cap: Path, tmp_path: Path) -> tuple[Path, threading.Thread]:
    """A FIFO a thread writes the capture into once (as `cat capture | ...` would)."""
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(cap.read_bytes()), daemon=True)
    feeder.start()
    return fifo, feeder


def _receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    return rx


def test_replay_loops_of_a_pipe_too_large_to_keep_send_one_loop_and_say_why(tmp_path: Path) -> None:
    """Later loops of a capture whose payloads do not fit in memory read the file again; a FIFO
    (or /dev/stdin) cannot be: `--loop 0` waited for ever on the FIFO's next writer (or, from
    /dev/stdin, spun sending nothing). Run in a process of its own with its memory bound set to
    0 (what a capture over 32 MiB meets), so that a hang fails the test at its timeout."""
    cap = tmp_path / "v5.pcap"
    write_pcap(cap, [(T0 + i, "10.1.0.1", 2055, make_v5(1 + 5 * i, 5, 5 * i, unix_secs=T0 + i))
                     for i in range(4)], dport=2055)
    fifo, feeder = _fed_fifo(cap, tmp_path)
    rx = _receiver()
    code = ("import sys; from collector import cli, replay; replay.CACHE_BYTES = 0; "
            f"sys.exit(cli.main(['replay', {str(fifo)!r}, '--to', '127.0.0.1:{rx.getsockname()[1]}', '--loop', '0']))")
    try:
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
        got = [rx.recv(65535) for _ in range(4)]
        rx.settimeout(0.3)
        with pytest.raises(socket.timeout):
            rx.recv(65535)
    finally:
        rx.close()
        feeder.join(5)
    assert p.returncode == 1 and len(got) == 4, p.stderr
    assert "cannot be read again" in p.stderr and "sent loop 1 only" in p.stderr
    assert "sent 4 datagrams (1 loop(s) of 4)" in p.stderr


def test_replay_loops_of_a_small_pipe_come_from_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "v5.pcap"
    write_pcap(cap, [(T0, "10.1.0.1", 2055, make_v5(1, 5, 0, unix_secs=T0))], dport=2055)
    fifo, feeder = _fed_fifo(cap, tmp_path)
    rx = _receiver()
    try:
        assert cli.main(["replay", str(fifo), "--to", f"127.0.0.1:{rx.getsockname()[1]}", "--loop", "3"]) == 0
        seqs = [struct.unpack_from("!I", rx.recv(65535), 16)[0] for _ in range(3)]
    finally:
        rx.close()
        feeder.join(5)
    assert seqs == [1, 6, 11]


def test_replay_nan_rate_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # (--rate nan passed the >= 0 check, as NaN compares false, and sent at full speed)
    assert cli.main(["replay", str(tmp_path / "none.pcap"), "--to", "127.0.0.1:9", "--rate", "nan"]) == 2
    assert "--rate must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_health_timeout_must_be_positive(value: str) -> None:
    """`health --timeout 0` asked with a non-blocking socket and reported the collector
    unhealthy (exit 1) whatever its state: a container restarted for a typo."""
    p = subprocess.run([sys.executable, "-m", "collector.cli", "health", "--addr", "127.0.0.1:9", "--timeout", value],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--timeout" in p.stderr, p.stderr


def test_config_refuses_an_output_file_run_cannot_open(tmp_path: Path) -> None:
    """`flowscope config --output-file DIR/missing/x` printed the configuration (exit 0), which
    `run` then refused at start ("output file ...: cannot open", exit 2); docs: "a configuration
    it prints is one run accepts" (review helper-108)."""
    def config(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "collector.cli", "config", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})

    missing = tmp_path / "no-such-dir" / "flows.jsonl"
    r = config("--output-file", str(missing))
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert (f"output_file (from --output-file): output file {missing}: cannot open: No such file or directory"
            in r.stderr)
    assert not missing.parent.exists()
    r = config("--output-file", str(tmp_path))
    assert r.returncode == 2 and "Is a directory" in r.stderr
    good = tmp_path / "flows.jsonl"
    r = config("--output-file", str(good))
    assert r.returncode == 0 and "output_file:" in r.stdout and not good.exists(), r.stderr
    # a Kafka sink does not open the file (run warns that it is not written): no check
    r = config("--output-file", str(missing), "--kafka-brokers", "127.0.0.1:9092")
    assert r.returncode == 0, r.stderr


def test_config_warns_of_kafka_brokers_the_sink_does_not_use(tmp_path: Path) -> None:
    """Brokers given (a flag, a FLOWSCOPE_ variable, the ConfigMap) with `--sink stdout` or `file`
    left from debugging: nothing goes to Kafka, and that is said (it went without a word, where
    the other half of the slip, an output file the Kafka sink does not write, was warned of)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}

    def warnings(*args: str, **more: str) -> list[str]:
        r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--enrich", "false", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, env={**env, **more})
        assert r.returncode == 0, r.stderr
        return [line for line in r.stderr.splitlines() if "not used" in line]

    assert warnings("--kafka-brokers", "a:1,b:2", "--sink", "stdout") == [
        "flowscope: warning: kafka.brokers (from --kafka-brokers) a:1,b:2 not used: the sink is stdout "
        "(sink (from --sink); sink auto or kafka publishes to Kafka)"]
    got = warnings("--sink", "file", "--output-file", str(tmp_path / "f"), FLOWSCOPE_KAFKA_BROKERS="a:1")
    assert len(got) == 1 and "(from FLOWSCOPE_KAFKA_BROKERS) a:1 not used: the sink is file" in got[0], got
    assert warnings("--kafka-brokers", "a:1") == []
    assert warnings("--kafka-brokers", "a:1", "--sink", "kafka") == []


def test_config_warns_of_an_output_file_the_sink_does_not_write(tmp_path: Path) -> None:
    """`run` logged that --output-file is not written when the sink is another (Kafka brokers given,
    or --sink stdout); `flowscope config`, whose warnings are said to be run's (an unknown
    variable, an ignored context), printed the configuration without a word of it."""
    out = tmp_path / "flows.jsonl"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    warning = (f"output_file (from --output-file) {out} is not written: the sink is kafka (sink auto: Kafka when "
               "brokers are given; --sink file writes the file)")
    args = ["--output-file", str(out), "--kafka-brokers", "127.0.0.1:9", "--enrich", "false"]
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0 and f"flowscope: warning: {warning}\n" in r.stderr, r.stderr
    p = popen_child([sys.executable, "-m", "collector.cli", "run", *args, "--listen",
                     f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", ""], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    text=True, env=env)
    try:
        for line in p.stderr:  # type: ignore[union-attr]
            if "is not written" in line:
                assert line.rstrip().endswith(f"WARNING flowscope: {warning}"), line
                break
        else:
            raise AssertionError("run did not warn")
    finally:
        p.kill()
        p.wait()
    assert not out.exists()


def test_ctrl_c_while_run_starts_is_no_traceback(tmp_path: Path) -> None:
    """SIGINT before `flowscope run` handles it (here while the kubeconfig's exec plugin, a
    cloud's token command, runs) printed a Python traceback of wherever it landed; it is a line
    and exit status 130, as for `flowscope replay`."""
    import signal
    import time

    mark = tmp_path / "plugin-running"
    kc = _exec_plugin_kubeconfig(tmp_path, mark)
    p = popen_child([sys.executable, "-m", "collector.cli", "run", "--kubeconfig", str(kc), "--listen",
                     "netflow://127.0.0.1:2055"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert mark.exists(), p.communicate()[1]
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, err) == (130, "flowscope: interrupted\n"), err[-2000:]


def _exec_plugin_kubeconfig(tmp_path: Path, mark: Path) -> Path:
    """A kubeconfig whose exec plugin (a cloud's token command) notes that it runs, then takes
    its time: `flowscope run` loads the credentials before it starts anything."""
    kc = tmp_path / "kc.yaml"
    kc.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: /bin/sh, "
        f"args: ['-c', 'touch {mark}; sleep 5'], interactiveMode: Never}}}}}}]\n")
    return kc


@pytest.mark.parametrize("sig,log_format", [("SIGTERM", "text"), ("SIGHUP", "text"), ("SIGTERM", "json")])
def test_sigterm_while_run_starts_is_a_logged_clean_stop(tmp_path: Path, sig: str, log_format: str) -> None:
    """SIGTERM before `flowscope run` handled it (Kubernetes stopping a pod still starting, here
    while the kubeconfig's exec plugin runs) killed it with status 143 and not a word; it is a
    line saying so and exit status 0, as a SIGTERM once started (nothing was received)."""
    import json
    import signal
    import time

    mark = tmp_path / "plugin-running"
    kc = _exec_plugin_kubeconfig(tmp_path, mark)
    p = popen_child([sys.executable, "-m", "collector.cli", "run", "--kubeconfig", str(kc), "--listen",
                     f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", "", "--log-format",
                     log_format], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert mark.exists(), p.communicate()[1]
        p.send_signal(getattr(signal, sig))
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    what = f"stopped by {sig} while starting, before any listener was opened: nothing was received"
    assert p.returncode == 0, (p.returncode, err[-2000:])
    if log_format == "json":
        [line] = err.splitlines()
        assert {k: v for k, v in json.loads(line).items() if k in ("level", "msg")} == {"level": "info", "msg": what}
    else:
        assert err == f"flowscope: {what}\n", err[-2000:]


def test_sigterm_to_a_containers_pid_1_while_run_starts_stops_it(tmp_path: Path) -> None:
    """In the image `flowscope run` is the container's PID 1, for which the kernel drops a signal
    left at its default action: SIGTERM while it started (a rollout stopping a pod still starting)
    was not even a silent exit, it was lost; the collector went on to start and run until the
    kubelet's SIGKILL at the end of the grace period (no drain, no state save). Here in a PID
    namespace of its own, as in a container."""
    import shutil
    import signal
    import time

    unshare = shutil.which("unshare", path="/usr/bin:/bin")
    if not unshare or subprocess.run([unshare, "-pf", "--kill-child", "true"], capture_output=True).returncode:
        pytest.skip("no unshare, or no permission for a PID namespace")
    mark = tmp_path / "plugin-running"
    kc = _exec_plugin_kubeconfig(tmp_path, mark)
    p = popen_child([unshare, "-pf", "--kill-child", sys.executable, "-m", "collector.cli", "run", "--kubeconfig",
                     str(kc), "--listen", f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", ""],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert mark.exists(), p.communicate()[1]
        [child] = (Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split())   # PID 1 inside
        os.kill(int(child), signal.SIGTERM)
        _, err = p.communicate(timeout=4)   # (before the plugin's 5 s are over)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, (p.returncode, err[-2000:])
    assert err == "flowscope: stopped by SIGTERM while starting, before any listener was opened: nothing was received\n"


# Runs `flowscope run` (argv[2:]) with a stop signal at a chosen point of its start-up, before
# its event loop handles the signals: `supervisor`, as `run` sets itself up (SIGTERM to itself),
# or `worker`, as each worker process of --workers N starts (SIGTERM to the whole process group,
# as systemd or a closed terminal sends it: the supervisor and every worker).
_STOP_DRIVER = """
import os, signal, sys
from collector import app, cli
if sys.argv[1] == "supervisor":
    tune = app.tune_malloc
    app.tune_malloc = lambda: (os.kill(os.getpid(), signal.SIGTERM), tune())
else:
    die = app.die_with_parent
    app.die_with_parent = lambda parent, sig: (die(parent, sig), os.killpg(0, signal.SIGTERM))
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("where,workers,said", [
    ("supervisor", 1, "stopped by SIGTERM while starting: nothing was received; exiting"),
    ("supervisor", 2, "stopped by SIGTERM while starting: no worker was started; exiting"),
    ("worker", 2, "stopped by SIGTERM while starting: nothing was received; exiting"),
])
def test_sigterm_before_the_event_loop_handles_it_is_a_logged_clean_stop(tmp_path: Path, where: str, workers: int,
                                                                        said: str) -> None:
    """Between the configuration checks and the event loop's signal handlers (and in each worker
    of --workers N until its own loop's), SIGTERM killed the process with status 143 and no log
    line (a worker so killed made the supervisor exit 1 for a worker that "failed"). It is noted
    and acted on as the loop starts: logged, nothing started, exit 0."""
    port = free_udp_port()
    r = run_child([sys.executable, "-c", _STOP_DRIVER, where, "run", "--listen", f"netflow://127.0.0.1:{port}",
                   "--metrics-addr", "", "--enrich", "false", "--workers", str(workers)],
                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60,
                  start_new_session=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                               "HOME": str(tmp_path)})
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert f"INFO flowscope{' w0' if where == 'worker' else ''}: {said}\n" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, r.stderr[-3000:]
    if where == "supervisor":
        assert f"listener netflow://127.0.0.1:{port}: bound" not in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("args,lines", [
    (["--output-file", "flows.json", "--metrics-addr", ""],
     ["flows to file {tmp}/flows.json", "http: /metrics not served (metrics_addr empty); nor /healthz and /readyz "
      "(health_addr empty too)"]),
    (["--kafka-brokers", "127.0.0.1:9,127.0.0.1:10", "--kafka-topic", "net-flows", "--counters", "--metrics-addr", "",
      "--health-addr", "127.0.0.1:{hport}"],
     ["flows to Kafka topic net-flows (brokers 127.0.0.1:9,127.0.0.1:10), sFlow counter records to topic "
      "flowscope-counters", "http: /metrics not served (metrics_addr empty)"]),
])
def test_the_start_up_log_names_where_flows_go_and_what_http_is_not_served(tmp_path: Path, args: list[str],
                                                                          lines: list[str]) -> None:
    """The start-up log named the listeners and the HTTP addresses served, but not where the
    flows go (a mistyped topic or file path went unseen until a consumer found nothing), nor
    that /metrics, /healthz and /readyz were not served at all (probes refused, not a word)."""
    import signal

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        hport = s.getsockname()[1]
    args = [a.format(hport=hport) for a in args]
    p = popen_child([sys.executable, "-m", "collector.cli", "run", "--listen",
                     f"netflow://127.0.0.1:{free_udp_port()}", "--enrich", "false", *args], cwd=tmp_path,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    seen = []
    try:
        for line in p.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if ": bound, SO_RCVBUF" in line:   # (logged after the lines looked for)
                break
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    for want in lines:
        assert any(ln.rstrip().endswith(f"INFO flowscope: {want.format(tmp=tmp_path)}") for ln in seen), "".join(seen)


def test_the_start_up_log_says_which_file_and_which_sources_set_what(tmp_path: Path) -> None:
    """Nothing in the log said which configuration file was loaded (FLOWSCOPE_CONFIG or --config)
    nor which options it, a variable or a flag set: "why is my setting not applied" had nothing
    to start from. Names only, never values (a password may be among them)."""
    import signal

    f = tmp_path / "c.yaml"
    f.write_text("workers: 1\nkafka:\n  topic: t\n")
    p = popen_child([sys.executable, "-m", "collector.cli", "run", "--listen",
                     f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", ""], cwd=tmp_path,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                         "FLOWSCOPE_CONFIG": str(f), "FLOWSCOPE_ENRICH_ENABLED": "false"})
    seen = []
    try:
        for line in p.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if ": bound, SO_RCVBUF" in line:
                break
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    want = (f"INFO flowscope: configuration: file {f} (from FLOWSCOPE_CONFIG) sets workers, kafka.topic; variables "
            "set enrich.enabled (FLOWSCOPE_ENRICH_ENABLED); flags set listen, metrics_addr; the rest are defaults")
    assert any(ln.rstrip().endswith(want) for ln in seen), "".join(seen)


@pytest.mark.parametrize("url", ["sflow://:6343?count=4&workers=8", "netflow://[::]:2055?count=2"])
def test_a_goflow2_listener_url_with_options_names_them_and_the_flags_that_do_it(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """goflow2's -listen takes its socket options in the URL (sflow://:6343?count=4); copied into
    --listen it was refused as "'...:6343?count=4': expected HOST:PORT", which named neither the
    options nor what does their work here."""
    assert cli.main(["config", "--listen", url]) == 2
    err = capsys.readouterr().err
    assert f"{url!r}: a listener takes no URL options" in err, err
    assert f"give {url.partition('?')[0]}," in err and "--workers N" in err, err
    # without the options, the same listener is taken
    assert cli.main(["config", "--listen", url.partition("?")[0]]) == 0


def _subcommand_parsers() -> dict[str, Any]:
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def test_no_parser_takes_an_abbreviated_option(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse took any unambiguous prefix of an option for it (`--kafka-broker` was
    `--kafka-brokers`): typos passed, and an option added later would change what a deployed
    command line means. Every long option of every subcommand, cut by one letter, is refused
    (exit 2) and the full one named."""
    tried = 0
    for command, parser in _subcommand_parsers().items():
        options = {o for o in parser._option_string_actions if o.startswith("--")}
        for opt in sorted(options):
            cut = opt[:-1]
            if cut in options or len(cut) < 4:
                continue
            argv = ([command] if command else []) + ([str(ROOT / "x.pcap")] if command in ("replay", "decode") else [])
            if command == "replay" and opt != "--to":
                argv += ["--to", "127.0.0.1:9"]
            with pytest.raises(SystemExit) as exc:
                cli.main(argv + [cut])
            err = capsys.readouterr().err
            assert exc.value.code == 2, (command, cut, err)
            if command:   # (the top level refuses a missing COMMAND first)
                assert f"unrecognized arguments: {cut}" in err and f"did you mean {opt}?" in err, (command, cut, err)
            tried += 1
    assert tried > 100


def test_a_misspelt_option_names_the_one_meant(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--kafka-brokers=127.0.0.1:9", "--stats-intervall=3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.splitlines()[-1] == ("flowscope run: error: unrecognized arguments: --stats-intervall=3 "
                                    "(--stats-intervall: did you mean --stats-interval?)")
    # a misspelt required flag is reported missing, a misspelt flag before the command as no
    # command: named all the same
    for argv, want in ((["replay", "x.pcap", "--too", "127.0.0.1:9"],
                        "flowscope replay: error: the following arguments are required: --to "
                        "(--too: did you mean --to?)"),
                       (["--verison"], "flowscope: error: the following arguments are required: COMMAND "
                                       "(--verison: did you mean --version?)")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == want


def test_the_other_entry_points_take_no_abbreviation() -> None:
    for module, arg in (("collector.broker", "--por"), ("deploy.demo.demo", "--kee")):
        p = subprocess.run([sys.executable, "-m", module, arg, "1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 2 and f"unrecognized arguments: {arg}" in p.stderr, (module, p.stderr)

