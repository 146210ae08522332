"""One real ComfyUI per test session, booted in this process.

ComfyUI's modules are process-wide and boot once, so every engine test shares
the runtime built here: its work dir, a models folder registered through an
extra model paths file (checkpoints/, loras/), a second base folder playing a
network volume (files in the folders custom node packs hard-wire), this suite's
node pack and the packs ``COMFYUI_TEST_CUSTOM_NODES`` names as custom node
folders, and a warm-up workflow that boot runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.runtime.comfy import ComfyRuntime
from engine.runtime.pack_fixes import HARDWIRED_FOLDERS
from engine.settings import Settings
from tests.engine.support import (
    COMFYUI_PATH,
    TEST_NODES_DIR,
    empty_image,
    extra_custom_nodes,
    make_volume_packs,
    node,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sd15: runs the random SD1.5-layout checkpoint (about a minute on 2 CPU cores); "
        "run them alone with -m sd15",
    )


@dataclass(frozen=True)
class EngineSetup:
    """Where the session's runtime keeps things."""

    root: Path
    models: Path
    extra_model_paths: Path
    warmup_workflow: Path
    volume: Path
    """A base folder of the model paths file playing a RunPod network volume."""
    volume_files: dict[str, str]
    """Files placed on that volume before boot: role -> path under it."""


@pytest.fixture(scope="session")
def engine_setup(tmp_path_factory: pytest.TempPathFactory) -> EngineSetup:
    """Folders, model paths file and warm-up workflow for the session's runtime."""
    root = tmp_path_factory.mktemp("engine")
    models = root / "models"
    for kind in ("checkpoints", "loras"):
        (models / kind).mkdir(parents=True)
    # A folder that does not exist is skipped with a warning, not a failed boot.
    absent = root / "absent-custom-nodes"
    custom_nodes = [TEST_NODES_DIR, absent, *[p for p in [extra_custom_nodes()] if p is not None]]
    # Boot links the volume's entries into <ComfyUI>/models, a folder this session
    # shares with others: the names are unique to the session, and the links go at
    # the end (the runtime fixture).
    volume = root / "volume"
    tag = f"worker-test-{uuid.uuid4().hex[:8]}"
    volume_files = {
        "swap_model": f"insightface/{tag}-swapper.onnx",
        "antelopev2": f"insightface/models/{tag}-antelopev2/glintr100.onnx",
        "pulid": f"pulid/{tag}-pulid.safetensors",
    }
    for relative in volume_files.values():
        (volume / relative).parent.mkdir(parents=True, exist_ok=True)
        (volume / relative).write_bytes(b"not a model")
    (volume / "facerestore_models").mkdir()
    # Packs a pod left on the volume (ComfyUI/custom_nodes/): test_volume_packs.py.
    custom_nodes.append(make_volume_packs(volume / "ComfyUI" / "custom_nodes"))
    config = {
        "worker_tests": {"base_path": str(models), "checkpoints": "checkpoints", "loras": "loras"},
        "worker_test_volume": {
            "base_path": str(volume),
            "pulid": "pulid",
            "facerestore_models": "facerestore_models",
        },
        "worker_test_nodes": {"custom_nodes": "\n".join(str(p) for p in custom_nodes)},
    }
    extra = root / "extra_model_paths.yaml"
    extra.write_text(json.dumps(config))  # JSON is YAML
    warmup = root / "warmup.json"
    warmup.write_text(
        json.dumps(
            {
                "1": empty_image(16, 16),
                "2": node("SaveImage", images=["1", 0], filename_prefix="warmup/w"),
            }
        )
    )
    return EngineSetup(
        root=root,
        models=models,
        extra_model_paths=extra,
        warmup_workflow=warmup,
        volume=volume,
        volume_files=volume_files,
    )


@pytest.fixture(scope="session")
def runtime(engine_setup: EngineSetup) -> Iterator[ComfyRuntime]:
    """The session's booted ComfyUI (booting takes ~5 s on 2 CPU cores)."""
    if COMFYUI_PATH is None:
        pytest.skip("COMFYUI_PATH is not set")
    settings = Settings(
        comfyui_path=COMFYUI_PATH,
        work_dir=engine_setup.root / "work",
        extra_model_paths=engine_setup.extra_model_paths,
        warmup_workflow=engine_setup.warmup_workflow,
        comfy_log_level="INFO",
    )
    runtime = ComfyRuntime(settings)
    try:
        runtime.boot()
        yield runtime
    finally:
        _remove_links_into(COMFYUI_PATH.resolve() / "models", engine_setup.root)


def _remove_links_into(models_dir: Path, root: Path) -> None:
    """Remove the links boot made in ``models_dir`` to this session's files."""
    for folder in HARDWIRED_FOLDERS:
        if not (models_dir / folder).is_dir():
            continue
        for entry in (models_dir / folder).iterdir():
            if entry.is_symlink() and entry.readlink().is_relative_to(root):
                entry.unlink()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A ``filename_prefix`` in a subfolder of its own, as the worker gives each job."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}/out"


@pytest.fixture
def metadata_off() -> Iterator[None]:
    """``OUTPUT_METADATA=false`` as the save nodes see it: ComfyUI's ``--disable-metadata``
    (files that embed no prompt: two runs with two prefixes then write the same bytes)."""
    from comfy.cli_args import args

    before, args.disable_metadata = args.disable_metadata, True
    try:
        yield
    finally:
        args.disable_metadata = before
