"""An Enricher started against an API server (tests/support/fake_kube.py's FakeKube, through a
kubeconfig that names it; or, with kubeconfig None, what the environment says, as the collector
does), with the short timeouts and backoffs the tests wait through: `fast_config` makes the
configuration, `running_enricher` starts one on it and stops it at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import enrich


def fast_config(kubeconfig: str | None, **kw: Any) -> enrich.EnrichConfig:
    base: dict[str, Any] = dict(kubeconfig=kubeconfig, own_namespace="netobserv", watch_timeout_seconds=5,
                                read_timeout_slack_seconds=5, connect_timeout_seconds=2,
                                backoff_initial_seconds=0.02, backoff_max_seconds=0.2, backoff_jitter=0.0)
    base.update(kw)
    return enrich.EnrichConfig(**base)


@contextlib.contextmanager
def running_enricher(kubeconfig: str | None, *, compiled: bool | None = None, **kw: Any) -> Iterator[enrich.Enricher]:
    """An Enricher on fast_config(kubeconfig, **kw) (`compiled` as Enricher's), started (not
    waited for: the test says what it waits for), and stopped at the end, the test's failure
    included."""
    e = enrich.Enricher(fast_config(kubeconfig, **kw), compiled=compiled)
    e.start()
    try:
        yield e
    finally:
        e.stop()
