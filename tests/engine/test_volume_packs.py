"""Custom node packs a pod left on a network volume, loaded at boot (issue: your own packs).

The session's volume (conftest.py, support.make_volume_packs) holds a ComfyUI
``custom_nodes/`` folder: a pack the image satisfies runs in a job through
``Worker.handle``; a pack that needs a module the image lacks is named, at boot and in
every job that uses one of its node types, with the module, its requirement and the
one command that bakes it into the image; a second copy of a pack the image already
has is never imported.
"""

from __future__ import annotations

import base64
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.runtime import pack_imports
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests.engine.conftest import EngineSetup
from tests.engine.support import (
    ENGINE_MARKS,
    VOLUME_MISSING_MODULE,
    VOLUME_PACK_ORIGIN,
    node,
)
from tests.unit.test_worker import png_b64

pytestmark = ENGINE_MARKS


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    return Worker(Settings(work_dir=runtime.directories.input.parent), runtime)


def _volume_nodes(engine_setup: EngineSetup) -> Path:
    return engine_setup.volume / "ComfyUI" / "custom_nodes"


def test_a_volume_pack_the_image_satisfies_runs_in_a_job(worker: Worker) -> None:
    body = worker.handle(
        {
            "id": "volume-pack-ok",
            "input": {
                "workflow": {
                    "1": node("LoadImage", image="in.png"),
                    "2": node("VolumePackInvert", image=["1", 0]),
                    "3": node("SaveImage", images=["2", 0], filename_prefix="volume"),
                },
                "images": [{"name": "in.png", "image": png_b64((200, 10, 0))}],
            },
        }
    )
    assert "error" not in body, body
    (item,) = body["images"]
    raw = base64.b64decode(item["data"].partition(",")[2])
    pixel: Any = Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, (55, 245, 255), strict=True))


def test_a_volume_pack_that_needs_more_is_named_at_boot_and_in_the_job(
    worker: Worker, engine_setup: EngineSetup
) -> None:
    folder = _volume_nodes(engine_setup) / "volume-pack-missing"
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True, text=True
    ).stdout.strip()
    (failed,) = [p for p in pack_imports.RECORD.failed if p.path == folder]
    assert failed.missing_module == VOLUME_MISSING_MODULE
    assert failed.requirement == "worker-test-absent-module>=1.2"
    command = f"scripts/add_custom_nodes.py {VOLUME_PACK_ORIGIN}@{commit}"
    assert command in failed.remedy()

    body = worker.handle(
        {
            "id": "volume-pack-missing",
            "input": {
                "workflow": {
                    "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
                    "2": node("VolumeMissingNode", image=["1", 0]),
                    "3": node("SaveImage", images=["2", 0], filename_prefix="volume"),
                }
            },
        }
    )
    assert body["code"] == "workflow_validation_failed", body
    (line,) = [d for d in body["details"] if "VolumeMissingNode" in d]
    assert f"No module named '{VOLUME_MISSING_MODULE}'" in line
    assert "its requirement 'worker-test-absent-module>=1.2' installs it" in line
    assert command in line


def test_a_second_copy_of_a_pack_is_not_imported(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    shadow = _volume_nodes(engine_setup) / "worker_test_nodes"
    assert shadow.is_dir()
    assert all(p.path != shadow for p in pack_imports.RECORD.failed)
    import nodes

    # The suite's own pack (loaded first) still provides its node types.
    assert "WorkerTestSteps" in nodes.NODE_CLASS_MAPPINGS
