"""Read-ahead on the real engine: the files a workflow's loaders name, as ComfyUI's own
node definitions and registered model folders say, read from disk by the real reader;
and its pause while ComfyUI executes the running job's loader node.

The files are small stand-ins (read ahead, never loaded): a checkpoint and a LoRA in the
session's models folder registered through the extra model paths file, a LoRA name that
is a link leading out of every model folder, and an input image.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from engine.errors import WorkerError
from engine.model_prefetch import DiskReader, Prefetch, Prefetcher, files_to_read
from engine.runtime import JobSpec, ProgressEvent
from engine.runtime.comfy import ComfyRuntime
from tests.engine.conftest import EngineSetup
from tests.engine.support import ENGINE_MARKS, node
from tests.unit.test_model_prefetch import FakeFiles, Pausing

pytestmark = ENGINE_MARKS


def test_the_loaders_files_in_comfyuis_model_folders_are_chosen_and_read(
    runtime: ComfyRuntime, engine_setup: EngineSetup, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    ckpt = engine_setup.models / "checkpoints" / f"{tag}-ckpt.safetensors"
    lora = engine_setup.models / "loras" / f"{tag}-lora.safetensors"
    ckpt.write_bytes(b"c" * 300_000)
    lora.write_bytes(b"l" * 1000)
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"s" * 10)
    leak = engine_setup.models / "loras" / f"{tag}-leak.safetensors"
    leak.symlink_to(outside)
    image = runtime.directories.input / f"{tag}.png"
    image.write_bytes(b"not read")
    for folder in ("checkpoints", "loras"):
        runtime.forget_model_files(folder)
    workflow = {
        "1": node("CheckpointLoaderSimple", ckpt_name=ckpt.name),
        "2": node(
            "LoraLoader",
            model=["1", 0],
            clip=["1", 1],
            lora_name=lora.name,
            strength_model=1.0,
            strength_clip=1.0,
        ),
        "3": node(
            "LoraLoader",
            model=["2", 0],
            clip=["2", 1],
            lora_name=leak.name,
            strength_model=1.0,
            strength_clip=1.0,
        ),
        "4": node("LoadImage", image=image.name),
        "5": node("CheckpointLoaderSimple", ckpt_name=f"{tag}-missing.safetensors"),
    }
    try:
        chosen = files_to_read(workflow, runtime)
        assert chosen == [ckpt.resolve(), lora.resolve()]
        prefetcher = Prefetcher(1024**3, runtime, DiskReader(chunk_bytes=64 * 1024))
        prefetch = prefetcher.start("job", lambda: chosen)
        assert prefetch.finished.wait(60)
        assert prefetch.read == chosen and prefetch.bytes_read == 301_000
    finally:
        for path in (ckpt, lora, leak, image):
            path.unlink(missing_ok=True)


def test_the_read_ahead_pauses_while_comfyui_executes_the_running_jobs_loader(
    runtime: ComfyRuntime, engine_setup: EngineSetup, prefix: str
) -> None:
    """ComfyUI's own ``executing`` event for a CheckpointLoaderSimple reaches the gate
    through the run's progress: a read-ahead started while that node runs (the engine
    thread held in the node's progress report) pauses before its first byte, and reads
    its file once the run is over (the loader fails on a file that is no checkpoint)."""
    ckpt = engine_setup.models / "checkpoints" / f"{uuid.uuid4().hex[:8]}-broken.safetensors"
    ckpt.write_bytes(b"not a checkpoint")
    runtime.forget_model_files("checkpoints")
    waiting = Path("/m/waiting.safetensors")
    files = FakeFiles({waiting: 30})
    loaders = Pausing(runtime)
    prefetcher = Prefetcher(1024**3, runtime, files, meminfo=lambda: "", loaders=loaders)
    started: list[Prefetch] = []
    during_loader: list[bool] = []

    def progress(event: ProgressEvent) -> None:
        if event.node_id == "1" and not started:  # ComfyUI executes the loader now
            started.append(prefetcher.start("waiting", lambda: [waiting]))
            during_loader.extend([loaders.blocked.wait(60), files.opened == []])

    workflow = {
        "1": node("CheckpointLoaderSimple", ckpt_name=ckpt.name),
        "2": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "3": node("VAEDecode", samples=["2", 0], vae=["1", 2]),
        "4": node("SaveImage", images=["3", 0], filename_prefix=prefix),
    }
    spec = JobSpec(f"pause-{uuid.uuid4().hex[:8]}", workflow, on_progress=progress)
    try:
        with prefetcher.running(spec) as watched, pytest.raises(WorkerError):
            runtime.run(watched)
    finally:
        ckpt.unlink(missing_ok=True)
    (prefetch,) = started
    assert during_loader == [True, True]
    assert prefetch.finished.wait(60) and prefetch.read == [waiting]
