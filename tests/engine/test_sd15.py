"""The model path of a real workflow, on a random SD1.5-layout checkpoint.

CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage 64x64 -> KSampler
-> VAEDecode -> SaveImage, with and without a LoRA. The checkpoint (~2.1 GB fp16)
is written to the session's models folder; run these alone with ``-m sd15``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from PIL import Image

from engine.errors import JobTimeoutError
from engine.runtime import JobSpec, ProgressEvent, RunResult
from engine.runtime.comfy import ComfyRuntime
from tests.engine.conftest import EngineSetup
from tests.engine.sd15 import write_lora, write_sd15_checkpoint
from tests.engine.support import ENGINE_MARKS, DeadlineOnCue, files_of, max_difference, node

pytestmark = [*ENGINE_MARKS, pytest.mark.sd15]


@pytest.fixture(scope="session")
def checkpoint(runtime: ComfyRuntime, engine_setup: EngineSetup) -> str:
    """The random checkpoint's name, in a subfolder as users keep theirs."""
    folder = engine_setup.models / "checkpoints" / "SD15"
    folder.mkdir(exist_ok=True)
    write_sd15_checkpoint(folder / "random-sd15.safetensors")
    return "SD15/random-sd15.safetensors"


@pytest.fixture(scope="session")
def lora(runtime: ComfyRuntime, engine_setup: EngineSetup) -> str:
    write_lora(engine_setup.models / "loras" / "random-lora.safetensors")
    return "random-lora.safetensors"


def txt2img(
    checkpoint: str, prefix: str, *, seed: int = 1, steps: int = 2, lora: str | None = None
) -> dict[str, Any]:
    model, clip = ["4", 0], ["4", 1]
    workflow = {
        "4": node("CheckpointLoaderSimple", ckpt_name=checkpoint),
        "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "3": node(
            "KSampler",
            seed=seed,
            steps=steps,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            denoise=1.0,
            model=model,
            positive=["6", 0],
            negative=["7", 0],
            latent_image=["5", 0],
        ),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", images=["8", 0], filename_prefix=prefix),
    }
    if lora is not None:
        workflow["10"] = node(
            "LoraLoader",
            model=model,
            clip=clip,
            lora_name=lora,
            strength_model=1.0,
            strength_clip=1.0,
        )
        model, clip = ["10", 0], ["10", 1]
        workflow["3"]["inputs"]["model"] = model
    workflow["6"] = node("CLIPTextEncode", text="a photo of a cat", clip=clip)
    workflow["7"] = node("CLIPTextEncode", text="blurry", clip=clip)
    return workflow


def _run(runtime: ComfyRuntime, workflow: dict[str, Any], **job: Any) -> RunResult:
    return runtime.run(JobSpec(prompt_id=f"sd15-{time.monotonic_ns()}", workflow=workflow, **job))


def _image(runtime: ComfyRuntime, result: RunResult) -> Image.Image:
    (path,) = files_of(result, runtime.directories)
    return Image.open(path).convert("RGB")


def test_random_checkpoint_loads_as_sd15_and_renders(
    runtime: ComfyRuntime, checkpoint: str, prefix: str
) -> None:
    """ComfyUI detects SD1.5, samples 2 steps with progress, decodes a 64x64 image."""
    import comfy.model_management
    import comfy.supported_models

    events: list[ProgressEvent] = []
    result = _run(runtime, txt2img(checkpoint, prefix), on_progress=events.append)
    assert _image(runtime, result).size == (64, 64)
    configs = [
        type(loaded.model.model.model_config)
        for loaded in comfy.model_management.current_loaded_models
        if hasattr(loaded.model.model, "model_config")
    ]
    assert comfy.supported_models.SD15 in configs
    steps = [
        (e.value, e.total) for e in events if e.class_type == "KSampler" and e.value is not None
    ]
    assert steps == [(1, 2), (2, 2)]


def test_models_stay_loaded_between_jobs(
    runtime: ComfyRuntime, checkpoint: str, prefix: str
) -> None:
    """A second job with a new seed does not load the checkpoint again."""
    _run(runtime, txt2img(checkpoint, prefix, seed=10))
    runtime.after_job()
    events: list[ProgressEvent] = []
    result = _run(runtime, txt2img(checkpoint, prefix, seed=11), on_progress=events.append)
    started = [e.class_type for e in events if e.value is None]
    assert "CheckpointLoaderSimple" not in started and "KSampler" in started
    assert files_of(result, runtime.directories)[0].is_file()


def test_lora_changes_the_image(
    runtime: ComfyRuntime, checkpoint: str, lora: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every LoRA key maps onto the model (ComfyUI warns of any it skips) and shows."""
    plain = _image(runtime, _run(runtime, txt2img(checkpoint, prefix, seed=3)))
    with_lora = _image(runtime, _run(runtime, txt2img(checkpoint, prefix, seed=3, lora=lora)))
    assert "lora key not loaded" not in caplog.text
    assert max_difference(plain, with_lora) > 0


def test_time_limit_stops_sampling_mid_node(
    runtime: ComfyRuntime, checkpoint: str, prefix: str
) -> None:
    """KSampler checks the interrupt each step: a 200-step job whose limit passes at the
    first step stops at the next one (driven by progress: a step takes seconds here)."""
    _run(runtime, txt2img(checkpoint, prefix, seed=20, steps=1))  # models loaded first
    events: list[ProgressEvent] = []
    deadline = DeadlineOnCue(limit_s=2.0)

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.class_type == "KSampler" and event.value is not None:
            deadline.cue.set()

    with pytest.raises(JobTimeoutError) as caught:
        _run(
            runtime,
            txt2img(checkpoint, prefix, seed=21, steps=200),
            deadline=deadline,
            on_progress=on_progress,
        )
    assert "node 3 (KSampler)" in caught.value.message
    steps = [e.value for e in events if e.class_type == "KSampler" and e.value is not None]
    assert 1 <= len(steps) <= 2, steps
    assert files_of(
        _run(runtime, txt2img(checkpoint, prefix, seed=22, steps=1)), runtime.directories
    )
