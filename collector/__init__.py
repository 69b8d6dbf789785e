"""flowscope's collector: the `flowscope` command (run, decode, replay, config)."""

from __future__ import annotations


def version() -> str:
    """The installed package's version (pyproject.toml), "unknown" when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("flowscope")
    except metadata.PackageNotFoundError:
        return "unknown"
