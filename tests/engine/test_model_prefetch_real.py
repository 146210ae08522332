"""Read-ahead on the real engine: the files a workflow's loaders name, as ComfyUI's own
node definitions and registered model folders say, read from disk by the real reader.

The files are small stand-ins (read ahead, never loaded): a checkpoint and a LoRA in the
session's models folder registered through the extra model paths file, a LoRA name that
is a link leading out of every model folder, and an input image.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from engine.model_prefetch import DiskReader, Prefetcher, files_to_read
from engine.runtime.comfy import ComfyRuntime
from tests.engine.conftest import EngineSetup
from tests.engine.support import ENGINE_MARKS, node

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
