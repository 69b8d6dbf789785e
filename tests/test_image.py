"""The container image (deploy/Dockerfile), built and run for real (issue 6, point 1).

buildah builds the Dockerfile unchanged and podman runs it (no Docker engine here; see
tests/support/image.py for the base image, made from Debian's archive as python:3.11-slim is).
The image must hold the collector without its build tools, run as its non-root user on a
read-only root filesystem, keep its state on the volume across a restart, publish to a real
Kafka-protocol broker (Tansu) with compression, and pass its own HEALTHCHECK wherever the
collector's HTTP address was set (flag, variable or config file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    consume,
    corpus_file,
    free_tcp_port,
    free_udp_port,
    offline_flows,
    send_udp,
    udp_payloads,
    wait_for,
)

from tests.support import image as I
from tests.support.netns import missing_tools

TAG = "localhost/flowscope:test"
UID = 10001


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (buildah and podman with the host's storage and network)")
    miss = missing_tools(*I.TOOLS)
    if miss:
        pytest.skip(f"missing tools: {', '.join(miss)} (make test installs them as root)")
    log = tmp_path_factory.mktemp("image") / "build.log"
    I.STORE.mkdir(parents=True, exist_ok=True)
    try:
        if not I.have_base():
            I.make_base(log)
        probe = I.podman("run", "--rm", *I.run_args(), I.BASE, "python", "-c", "print('ok')", check=False)
        if probe.returncode != 0 or probe.stdout.strip() != "ok":
            pytest.skip(f"this machine cannot run containers: podman says {probe.stderr.strip()[-300:]!r}")
        I.build(TAG, log)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"{exc.cmd[0]} failed ({exc.returncode}); its log:\n{log.read_text()[-6000:]}") from None
    yield TAG
    I.podman("rmi", "-f", TAG, check=False)


class Container:
    """A detached `podman run` of the image; removed at close()."""

    def __init__(self, image: str, args: list[str], *, opts: tuple[str, ...] | list[str] = ()) -> None:
        self.name = f"fs-test-{uuid.uuid4().hex[:10]}"
        I.podman("run", "-d", "--name", self.name, *I.run_args(), "--read-only", *opts, image, *args)

    def logs(self) -> str:
        r = I.podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def running(self) -> bool:
        r = I.podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return r.stdout.strip() == "true"

    def healthcheck(self) -> subprocess.CompletedProcess:
        return I.podman("healthcheck", "run", self.name, check=False, timeout=60)

    def health_log(self) -> str:
        """What the last health check printed (podman keeps it in the container's state)."""
        state = json.loads(I.podman("inspect", self.name).stdout)[0]["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        return str((health.get("Log") or [{}])[-1].get("Output", ""))

    def stop(self) -> int:
        I.podman("stop", "-t", "30", self.name, check=False, timeout=90)
        r = I.podman("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(r.stdout.strip())

    def close(self) -> None:
        I.podman("rm", "-f", self.name, check=False, timeout=90)


def test_containers_whose_test_process_died_are_swept_at_session_start(image: str) -> None:
    """The containers run detached (Container) outlived a test process killed before its
    finalizers (conmon keeps them running, on the host's ports, through the next sessions).
    Each carries its maker as a label, and a session's start (conftest) removes those whose maker
    no longer runs, as it does the namespaces and run directories; a running session's stay."""
    from collector.util import popen_child, start_time
    from tests.support.owners import maker

    dead = popen_child(["sleep", "60"])   # a test process that was killed
    dead_maker = f"{dead.pid} {start_time(dead.pid)}"
    dead.kill()
    dead.wait()
    names = {who: f"fs-test-sweep-{who}-{uuid.uuid4().hex[:8]}" for who in ("dead", "alive")}
    try:
        I.podman("run", "-d", "--name", names["dead"], *I.run_args(maker=dead_maker), I.BASE, "sleep", "600")
        I.podman("run", "-d", "--name", names["alive"], *I.run_args(), I.BASE, "sleep", "600")
        assert I.podman("inspect", "--format", "{{index .Config.Labels \"" + I.OWNER_LABEL + "\"}}",
                        names["alive"]).stdout.strip() == maker()
        removed = I.sweep_stale_containers()
        exists = {who: I.podman("container", "exists", n, check=False).returncode == 0 for who, n in names.items()}
        # (gone, by this sweep or by another test session's start on the machine, which sweeps
        # the same store: CI once saw removed == [] beside helpers' sessions)
        assert names["alive"] not in removed, removed
        assert exists == {"dead": False, "alive": True}, (exists, removed)
    finally:
        for n in names.values():
            I.podman("rm", "-f", "-t", "0", n, check=False, timeout=90)


def http_get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def metric(port: int, name: str, **labels: str) -> float:
    from collector.metrics import parse_exposition, total

    status, text = http_get(port, "/metrics")
    assert status == 200
    return total(parse_exposition(text), name, **labels)


def wait_ready(c: Container, port: int) -> None:
    wait_for(lambda: http_get(port, "/readyz")[0] == 200 or not c.running(), 60, what="the container's /readyz")
    assert c.running(), f"the container exited:\n{c.logs()}"


def test_the_image_holds_the_collector_not_its_build_tools(image: str) -> None:
    cfg = json.loads(I.podman("image", "inspect", image).stdout)[0]["Config"]
    assert cfg["Entrypoint"] == ["flowscope", "run"]
    assert cfg["User"].split(":")[0] == str(UID)
    assert "/var/lib/flowscope" in cfg["Volumes"]
    check = ("import importlib.util as u, os, shutil\n"
             "import decoders._core, enrich._fast, collector.cli\n"
             "print(os.getuid(), shutil.which('gcc'), u.find_spec('Cython'), u.find_spec('pytest'))\n")
    r = I.podman("run", "--rm", *I.run_args(), "--read-only", "--entrypoint", "python", image, "-c", check)
    assert r.stdout.split() == [str(UID), "None", "None", "None"], r.stdout + r.stderr
    # the compiled decoders, not a pure-Python fallback, and the compression thread's libraries
    r = I.podman("run", "--rm", *I.run_args(), "--entrypoint", "python", image, "-c",
                 "import decoders._core as c; print(c.__file__.endswith('.so'), c.packer_available(3), "
                 "c.packer_available(4))")
    assert r.stdout.split() == ["True", "None", "None"], r.stdout + r.stderr


def test_read_only_container_keeps_templates_on_its_volume_and_publishes_to_kafka(
        image: str, broker: Any, tmp_path: Path) -> None:
    # A template datagram, then 26 data records that need it: the data goes to a second container
    # started on the same volume after the first one stopped (as a restarted pod would).
    payloads = [p for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))]
    assert len(payloads) == 2
    expected = offline_flows(payloads)
    assert len(expected) == 26
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, UID, UID)
    topic = f"image-{uuid.uuid4().hex[:8]}"
    udp, http = free_udp_port(), free_tcp_port()
    args = ["--listen", f"ipfix://127.0.0.1:{udp}", "--metrics-addr", f"127.0.0.1:{http}",
            "--kafka-brokers", broker.bootstrap, "--kafka-topic", topic, "--kafka-create-topic",
            "--kafka-compression", "lz4", "--state-interval", "3600"]
    opts = ["-v", f"{state}:/var/lib/flowscope", "-e", "FLOWSCOPE_STATE_FILE=/var/lib/flowscope/state.json"]
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    first = Container(image, args, opts=opts)
    try:
        wait_ready(first, http)
        send_udp(payloads[:1], udp, sock=exporter)
        wait_for(lambda: metric(http, "flowscope_templates") >= 1, 15, what="the template learnt")
        assert first.stop() == 0, first.logs()
    finally:
        first.close()
    saved = json.loads((state / "state.json").read_text())
    assert saved, "the state file on the volume is empty"
    second = Container(image, args, opts=opts)
    try:
        wait_ready(second, http)
        assert metric(http, "flowscope_state_loads_total", result="ok") == 1
        send_udp(payloads[1:], udp, sock=exporter)
        got = consume(broker.bootstrap, topic, len(expected))
        assert metric(http, "flowscope_missing_template_sets_total") == 0
        wait_for(lambda: metric(http, "flowscope_kafka_compression_bytes_total", side="out") > 0, 15,
                 what="compressed batches")
        assert second.stop() == 0, second.logs()
    finally:
        second.close()
        exporter.close()
    key = ("SrcAddr", "DstAddr", "SrcPort", "DstPort", "Proto", "Bytes", "Packets", "TimeFlowStartMs")
    assert sorted(tuple(f.get(k) for k in key) for f in got) == sorted(tuple(f.get(k) for k in key) for f in expected)


@pytest.mark.parametrize("how", ["flag", "variable", "config file", "none"])
def test_the_images_healthcheck_asks_the_address_the_collector_serves(image: str, tmp_path: Path, how: str) -> None:
    http = free_tcp_port()
    args = ["--listen", f"ipfix://127.0.0.1:{free_udp_port()}"]
    opts: list[str] = []
    if how == "flag":
        args += ["--metrics-addr", f"127.0.0.1:{http}"]
    elif how == "variable":
        opts += ["-e", f"FLOWSCOPE_METRICS_ADDR=127.0.0.1:{http}"]
    elif how == "config file":
        conf = tmp_path / "config.yaml"
        conf.write_text(f"metrics_addr: '127.0.0.1:{http}'\n")
        conf.chmod(0o644)
        opts += ["-v", f"{conf}:/etc/flowscope/config.yaml:ro"]
        args += ["--config", "/etc/flowscope/config.yaml"]
    else:
        args += ["--metrics-addr", ""]
    c = Container(image, args, opts=opts)
    try:
        if how == "none":
            wait_for(lambda: "listener ipfix://" in c.logs() or not c.running(), 60, what="the collector started")
            assert c.running(), c.logs()
        else:
            wait_ready(c, http)
        r = c.healthcheck()  # the image's HEALTHCHECK, run by podman as an engine runs it
        assert r.returncode == 0, (r.stdout, r.stderr, c.health_log(), c.logs())
        assert c.health_log().startswith("healthy: "), c.health_log()
        out = I.podman("exec", c.name, "flowscope", "health").stdout
        if how == "none":
            assert out.startswith("healthy: the collector serves no /healthz"), out
        else:
            assert out.startswith(f"healthy: http://127.0.0.1:{http}/healthz answered 200"), out
            # and it tells a collector that stopped answering
            bad = I.podman("exec", c.name, "flowscope", "health", "--addr", f"127.0.0.1:{free_tcp_port()}",
                           check=False)
            assert bad.returncode == 1 and bad.stdout.startswith("unhealthy: "), bad.stdout
    finally:
        c.close()
