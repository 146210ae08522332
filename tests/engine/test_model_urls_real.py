"""Model files by URL and media inputs through the whole worker, on the real engine.

The model is a real upscale model: spandrel's Real-ESRGAN Compact architecture (the
library ComfyUI's ``UpscaleModelLoader`` detects models with) with random weights,
8 features and 2x scale, about 20 KB. It is served over HTTP on 127.0.0.1, named in
the workflow by URL with its SHA-256, downloaded into the ``upscale_models`` cache and
loaded by ComfyUI. Videos and audio are real files from tests/media_factory.py, sent
in ``input.images`` to ``LoadVideo``, ``LoadAudio`` and ``VHS_LoadVideo``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.model_cache import CACHE_DIR_NAME
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests import media_factory
from tests.engine.support import ENGINE_MARKS, empty_image, node, require_packs
from tests.local_http import serve_directory

pytestmark = ENGINE_MARKS

MODEL_NAME = "tiny-compact-x2.safetensors"
_FRAMES = 8  # media_factory.make_video's default
_SIZE = (64, 48)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(base URL, sha256)`` of a server holding the model and the media files."""
    spandrel = pytest.importorskip("spandrel", reason="spandrel (a ComfyUI requirement)")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("www")
    torch.manual_seed(0)
    compact = spandrel.architectures.Compact.Compact(
        num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2
    )
    save_file(compact.state_dict(), str(root / MODEL_NAME))
    media_factory.make_video(root / "clip.mp4", frames=_FRAMES, size=_SIZE)
    media_factory.make_video(root / "clip.webm", frames=_FRAMES, size=_SIZE, fmt="webm")
    digest = hashlib.sha256((root / MODEL_NAME).read_bytes()).hexdigest()
    with serve_directory(root) as url:
        yield url, digest


@pytest.fixture
def upscale_folder(runtime: ComfyRuntime, tmp_path: Path) -> Iterator[Path]:
    """A fresh ``upscale_models`` path, first in ComfyUI's list: the cache goes there, not
    into the shared ComfyUI checkout's own models folder."""
    folder_paths = importlib.import_module("folder_paths")  # ComfyUI's, on the path once booted
    folder = tmp_path / "upscale_models"
    folder.mkdir()
    folder_paths.add_model_folder_path("upscale_models", str(folder), is_default=True)
    try:
        yield folder
    finally:
        folder_paths.folder_names_and_paths["upscale_models"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("upscale_models", None)


@pytest.fixture
def worker_and_lines(runtime: ComfyRuntime) -> tuple[Worker, list[str]]:
    lines: list[str] = []
    settings = Settings(work_dir=runtime.directories.input.parent, input_allow_private_urls=True)
    worker = Worker(settings, runtime, progress=lambda job, line: lines.append(line))
    return worker, lines


def upscale_job(model_name: str, prefix: str) -> dict[str, Any]:
    return {
        "workflow": {
            "1": empty_image(16, 16, color=0x3080C0),
            "2": node("UpscaleModelLoader", model_name=model_name),
            "3": node("ImageUpscaleWithModel", upscale_model=["2", 0], image=["1", 0]),
            "4": node("SaveImage", images=["3", 0], filename_prefix=prefix),
        }
    }


def image_size(item: dict[str, Any]) -> tuple[int, int]:
    raw = base64.b64decode(item["data"].partition(",")[2])
    size: tuple[int, int] = Image.open(io.BytesIO(raw)).size
    return size


def test_an_upscale_model_by_url_is_downloaded_verified_loaded_and_reused(
    site: tuple[str, str],
    upscale_folder: Path,
    worker_and_lines: tuple[Worker, list[str]],
    prefix: str,
) -> None:
    base, digest = site
    worker, lines = worker_and_lines
    url = f"{base}/{MODEL_NAME}#sha256={digest}"
    first = worker.handle({"id": "model-url-1", "input": upscale_job(url, prefix)})
    assert first.get("errors") == [], first
    [item] = first["images"]
    assert image_size(item) == (32, 32)  # the model's 2x
    # Steps of one node are throttled (engine.worker): the first report always goes.
    assert lines[0] == f"downloading {MODEL_NAME}: 0%"
    [cached] = (upscale_folder / CACHE_DIR_NAME).glob(f"*-{MODEL_NAME}")
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest

    lines.clear()
    second = worker.handle({"id": "model-url-2", "input": upscale_job(url, prefix)})
    assert second.get("errors") == [], second
    assert not any(line.startswith("downloading") for line in lines)  # reused

    # The cached file by its absolute path: mapped to the name ComfyUI lists.
    third = worker.handle({"id": "model-path", "input": upscale_job(str(cached), prefix)})
    assert third.get("errors") == [], third


def test_a_model_url_with_the_wrong_hash_fails_naming_the_file(
    site: tuple[str, str],
    upscale_folder: Path,
    worker_and_lines: tuple[Worker, list[str]],
    prefix: str,
) -> None:
    base, digest = site
    worker, _ = worker_and_lines
    wrong = "0" * 64
    body = worker.handle(
        {"id": "bad-hash", "input": upscale_job(f"{base}/{MODEL_NAME}#sha256={wrong}", prefix)}
    )
    assert body["code"] == "model_files_failed"
    [detail] = body["details"]
    assert detail.startswith(f"node 2 (UpscaleModelLoader) model_name: {base}/{MODEL_NAME}: ")
    assert f"hash mismatch for {MODEL_NAME}: expected sha256 {wrong}, got {digest}" in detail
    assert not any((upscale_folder / CACHE_DIR_NAME).glob(f"*{MODEL_NAME}"))


def test_core_loaders_read_videos_and_audio_sent_as_inputs(
    site: tuple[str, str],
    worker_and_lines: tuple[Worker, list[str]],
    prefix: str,
    tmp_path: Path,
) -> None:
    """The video by URL, the audio as base64."""
    base, _ = site
    worker, _ = worker_and_lines
    tone = media_factory.make_audio(tmp_path / "tone.wav").read_bytes()
    job = {
        "workflow": {
            "1": node("LoadVideo", file="clip.mp4"),
            "2": node("GetVideoComponents", video=["1", 0]),
            "3": node("SaveImage", images=["2", 0], filename_prefix=f"{prefix}-frames"),
            "4": node("LoadAudio", audio="tone.wav"),
            "5": node("SaveAudio", audio=["4", 0], filename_prefix=f"{prefix}-audio"),
        },
        "images": [
            {"name": "clip.mp4", "image": f"{base}/clip.mp4"},
            {"name": "tone.wav", "image": base64.b64encode(tone).decode()},
        ],
    }
    body = worker.handle({"id": "media", "input": job})
    assert body.get("errors") == [], body
    by_node: dict[str, list[dict[str, Any]]] = {}
    for item in body["images"]:
        by_node.setdefault(item["node_id"], []).append(item)
    assert len(by_node["3"]) == _FRAMES
    assert image_size(by_node["3"][0]) == _SIZE
    [audio] = by_node["5"]
    assert audio["mime_type"].startswith("audio/")


def test_vhs_load_video_reads_a_video_sent_as_an_input(
    site: tuple[str, str], worker_and_lines: tuple[Worker, list[str]], prefix: str
) -> None:
    require_packs("ComfyUI-VideoHelperSuite")
    base, _ = site
    worker, _ = worker_and_lines
    load = node(
        "VHS_LoadVideo",
        video="clips/clip.webm",
        force_rate=0,
        custom_width=0,
        custom_height=0,
        frame_load_cap=0,
        skip_first_frames=0,
        select_every_nth=1,
    )
    job = {
        "workflow": {
            "1": load,
            "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
        },
        "images": [{"name": "clips/clip.webm", "image": f"{base}/clip.webm"}],
    }
    body = worker.handle({"id": "vhs-media", "input": job})
    assert body.get("errors") == [], body
    assert len(body["images"]) == _FRAMES
    assert image_size(body["images"][0]) == _SIZE


@pytest.mark.parametrize(
    ("class_type", "input_name", "folder"),
    [
        ("CheckpointLoaderSimple", "ckpt_name", "checkpoints"),
        ("LoraLoader", "lora_name", "loras"),
        ("VAELoader", "vae_name", "vae"),
        ("UNETLoader", "unet_name", "diffusion_models"),
        ("CLIPLoader", "clip_name", "text_encoders"),
        ("DualCLIPLoader", "clip_name2", "text_encoders"),
        ("ControlNetLoader", "control_net_name", "controlnet"),
        ("UpscaleModelLoader", "model_name", "upscale_models"),
        ("LoadImage", "image", None),
        ("KSampler", "sampler_name", None),
    ],
)
def test_the_model_folder_behind_each_loader_input(
    runtime: ComfyRuntime, class_type: str, input_name: str, folder: str | None
) -> None:
    found = runtime.model_folder_of(class_type, input_name)
    assert (found.name if found else None) == folder
