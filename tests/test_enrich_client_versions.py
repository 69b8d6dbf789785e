"""The informers with every `kubernetes` client version pyproject allows, and at shutdown.

Each test reproduces a behaviour of the official `kubernetes` client (generated methods that
differ between versions 29 to 37) or of a stop racing a read, which the informers once got
wrong, against the fake API server of tests/support/fake_kube.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.enricher import fast_config, running_enricher
from tests.support.fake_kube import FakeKube
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_informer import flow, seed


def _legacy_no_headers_argument(real: Callable[..., Any]) -> Callable[..., Any]:
    """The generated method of kubernetes 29 to 35 (the legacy generator): no `_headers` argument
    (ApiTypeError, as its all_params check raises)."""
    from kubernetes.client.exceptions import ApiTypeError

    def method(self: Any, **kwargs: Any) -> Any:
        if "_headers" in kwargs:
            raise ApiTypeError("Got an unexpected keyword argument '_headers' to method "
                               "list_replica_set_for_all_namespaces")
        return real(self, **kwargs)
    return method


def _legacy_accept_overwritten(real: Callable[..., Any]) -> Callable[..., Any]:
    """The generated method of kubernetes 36: `_headers` taken, but its Accept is overwritten by
    the method's own (header_params['Accept'] = select_header_accept([...]))."""
    def method(self: Any, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("_headers", None) or {})
        headers.pop("Accept", None)
        return real(self, **kwargs, **({"_headers": headers} if headers else {}))
    return method


@pytest.mark.parametrize("legacy", [_legacy_no_headers_argument, _legacy_accept_overwritten],
                         ids=["kubernetes-29-to-35", "kubernetes-36"])
def test_replicasets_sync_as_metadata_with_every_supported_client_version(
        fake_kube: FakeKube, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        legacy: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """pyproject allows kubernetes>=29. Its generated list methods before 37 take no per-call
    Accept header: 29-35 refuse `_headers` (the ReplicaSets informer then failed every list, and
    the collector never became ready), 36 overwrites its Accept (whole ReplicaSets, pod templates
    and all, instead of PartialObjectMetadata)."""
    from kubernetes.client import AppsV1Api

    monkeypatch.setattr(AppsV1Api, "list_replica_set_for_all_namespaces",
                        legacy(AppsV1Api.list_replica_set_for_all_namespaces))
    seed(fake_kube)
    with running_enricher(str(fake_kube.write_kubeconfig(tmp_path / "kubeconfig"))) as e:
        assert e.wait_ready(10), e.unsynced()
        assert flow(e, "10.244.0.5", "")["SrcK8S_OwnerType"] == "Deployment"
        fake_kube.wait_for(lambda: fake_kube.count(kind="replicasets", verb="watch") > 0, 10, "the replicasets watch")
        rs = [r for r in fake_kube.requests if r["kind"] == "replicasets"]
        lists = [r["accept"] for r in rs if r["verb"] == "list"]
        watches = [r["accept"] for r in rs if r["verb"] == "watch"]
        assert lists and all(a.startswith("application/json;as=PartialObjectMetadataList;") for a in lists), lists
        assert watches and all(a.startswith("application/json;as=PartialObjectMetadata;") for a in watches), watches
        # the other kinds are asked for as they were
        assert all("as=" not in r["accept"] for r in fake_kube.requests if r["kind"] in ("pods", "nodes", "services"))


class _ClosedUnderTheReader:
    """A watch response whose reader is blocked in a read when stop() closes it: http.client's
    close() sets its fp to None under urllib3's chunked reader, which then fails with
    AttributeError ('NoneType' object has no attribute 'readline'), not an OSError."""

    def __init__(self) -> None:
        import threading

        self.closed = threading.Event()

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Any:
        self.closed.wait(10)
        raise AttributeError("'NoneType' object has no attribute 'readline'")
        yield b""  # (a generator, as urllib3's stream() is)

    def shutdown(self) -> None:
        self.closed.set()

    def close(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass


class _ListBody:
    """A list answer as urllib3's response gives it (the informer streams it: _request)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, amt: int = 1 << 16, decode_content: bool = True) -> Any:
        for i in range(0, len(self.body), amt):
            yield self.body[i:i + amt]

    def release_conn(self) -> None:
        pass


def test_a_watch_closed_by_stop_is_no_failure(caplog: pytest.LogCaptureFixture) -> None:
    """stop() closes the watch response under the informer thread's read: whatever the client
    raises then is the stop, not an internal error logged as a warning and counted."""
    import logging

    from enrich.index import NODES, Index
    from enrich.informer import Informer

    watch = _ClosedUnderTheReader()

    def lister(**kwargs: Any) -> Any:
        if kwargs.get("watch"):
            return watch
        return _ListBody(b'{"kind":"NodeList","metadata":{"resourceVersion":"7"},"items":[]}')

    inf = Informer(kind=NODES, lister=lister, index=Index(compiled=False), config=fast_config(None))
    caplog.set_level(logging.DEBUG, logger="flowscope.enrich")
    inf.start()
    from tests.support.fake_kube import wait_for
    wait_for(lambda: inf.stats.state == "watching", what="the watch")
    inf.stop()
    assert inf.stats.state == "stopped"
    assert inf.stats.errors == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_pyproject_requires_a_urllib3_that_bounds_one_compressed_read(fake_kube: FakeKube) -> None:  # noqa: F811
    """The informer bounds a list answer decompressed, checked after each read of READ_BYTES:
    urllib3 before 2.6 inflated all the compressed bytes one read took (~64 MiB of a gzip bomb
    for 64 KiB) before that check. pyproject requires 2.6, and excludes the one kubernetes release
    that pins urllib3 under it (34.1.0: urllib3<2.4); the urllib3 installed here reads a gzip bomb
    from the fake API server (as the informer reads list pages) no more than READ_BYTES at a time."""
    from pathlib import Path

    import tomllib
    import urllib3
    from packaging.requirements import Requirement

    from enrich.informer import READ_BYTES, _abort
    from tests.support.fake_kube import TOKEN

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    deps = {r.name: r for r in map(Requirement, project["dependencies"])}
    assert "2.5.9" not in deps["urllib3"].specifier and "2.6.0" in deps["urllib3"].specifier
    assert "34.1.0" not in deps["kubernetes"].specifier and "37.0.3" in deps["kubernetes"].specifier

    fake_kube.bomb_bytes = 64 << 20   # 64 MiB of blanks, ~64 KiB compressed
    fake_kube.fail("pods", "list", "bomb")
    pool = urllib3.PoolManager()
    resp = pool.request("GET", f"{fake_kube.url}/api/v1/pods?limit=500", preload_content=False,
                        headers={"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"})
    assert resp.headers.get("Content-Encoding") == "gzip"
    sizes = []
    try:
        for chunk in resp.stream(amt=READ_BYTES, decode_content=True):
            sizes.append(len(chunk))
            if sum(sizes) > 4 << 20:
                break
    finally:
        _abort(resp)
        pool.clear()
    assert sum(sizes) > 4 << 20 and max(sizes) <= READ_BYTES, (len(sizes), max(sizes))
