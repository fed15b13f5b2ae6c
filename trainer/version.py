"""The installed package version (written into metadata, manifests and reports)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

FALLBACK = "0.1.0"


def package_version() -> str:
    try:
        return version("edge-transfer")
    except PackageNotFoundError:  # a source tree that is not installed
        return FALLBACK
