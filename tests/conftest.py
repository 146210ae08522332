"""Shared test setup: tiers marked by folder, settings that never read the host's env."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.settings import Settings

_TIERS = {"e2e": "e2e", "engine": "engine"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder: tests/e2e -> e2e, tests/engine -> engine."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _TIERS:
            item.add_marker(getattr(pytest.mark, _TIERS[folder]))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings with the worker's folders under the test's tmp dir."""
    return Settings.from_env({"WORKER_DIR": str(tmp_path / "worker")})
