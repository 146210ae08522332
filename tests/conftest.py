"""Shared test setup: tiers marked by folder, settings that never read the host's env."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.settings import Settings

_TIERS = {"e2e": "e2e", "engine": "engine"}

# The tests make and decode reference videos with imageio-ffmpeg, in the same process
# where the engine tests run ComfyUI's PyAV threads: its default preexec_fn fork can then
# deadlock the child before exec (PyAV 19, the image's). The worker sets the same switch
# at boot; set here, it holds whichever test runs first.
os.environ["IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"] = "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder: tests/e2e -> e2e, tests/engine -> engine."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _TIERS:
            item.add_marker(getattr(pytest.mark, _TIERS[folder]))


@pytest.fixture(scope="session", autouse=True)
def temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The system temporary folder, for this session and the workers it starts: one of
    pytest's own. Each booted worker leaves a lock file there per WORKER_DIR
    (engine.work_dir_lock); they go with pytest's old sessions, not pile up in /tmp."""
    folder = tmp_path_factory.mktemp("tmp")
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(folder))
    patch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    try:
        yield
    finally:
        patch.undo()


@pytest.fixture(autouse=True)
def pillow_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker.boot() sets Pillow's process-wide pixel limit (INPUT_MAX_PIXELS); put it back
    after each test, so a test that boots a worker cannot change what the next one sees."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings with the worker's folders under the test's tmp dir."""
    return Settings.from_env({"WORKER_DIR": str(tmp_path / "worker")})
