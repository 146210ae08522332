"""Packs added with scripts/add_custom_nodes.py, in the real engine (docs/custom-nodes.md).

The proof set of issue 17, each at the commit docs/custom-nodes.md names: added with the
command (from URLs and from a ComfyUI-Manager snapshot), installed from the compiled lock
in an image environment (``scripts/setup.sh --image-env``), then loaded here in-process.
Each pack must import with no failure recorded (engine/runtime/pack_imports.py), and a
job through at least one of its nodes runs through ``Worker.handle`` with no model
downloaded: the files a loader needs are made here (a random SD1.5-layout UNet written as
GGUF, a YOLO detector built from ultralytics' own yaml with random weights).

The packs are not in the shipped manifest (docs/custom-nodes.md says why): a test whose
pack is not where the session loads packs (``COMFYUI_TEST_CUSTOM_NODES`` or the checkout's
``custom_nodes/``) skips, naming it.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests.engine.support import ENGINE_MARKS, node, require_packs

pytestmark = ENGINE_MARKS

# Node types each pack must register; the first of each runs in a job below.
ADDED = {
    "ComfyUI-GGUF": ["UnetLoaderGGUF", "CLIPLoaderGGUF", "DualCLIPLoaderGGUF"],
    "comfyui_controlnet_aux": ["CannyEdgePreprocessor", "LineArtPreprocessor"],
    "ComfyUI-Impact-Subpack": ["UltralyticsDetectorProvider"],
    "ComfyUI-Inspire-Pack": ["ChangeImageBatchSize //Inspire", "ImageBatchSplitter //Inspire"],
    "ComfyUI_IPAdapter_plus": ["PrepImageForClipVision", "IPAdapterUnifiedLoader"],
}


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    return Worker(Settings(work_dir=runtime.directories.input.parent), runtime)


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _images(body: dict[str, Any]) -> list[Image.Image]:
    assert body.get("errors") == [], body
    return [
        Image.open(io.BytesIO(base64.b64decode(item["data"].partition(",")[2])))
        for item in body["images"]
    ]


def _run(worker: Worker, workflow: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return worker.handle(
        {"id": f"added-{uuid.uuid4().hex[:8]}", "input": {"workflow": workflow, **extra}}
    )


@pytest.mark.parametrize("pack", list(ADDED))
def test_added_pack_imports_in_process(runtime: ComfyRuntime, pack: str) -> None:
    """The pack imported with no failure recorded and registered its node types."""
    import nodes

    from engine.runtime import pack_imports

    require_packs(pack)
    failed = [f.describe() for f in pack_imports.RECORD.failed if f.path.name == pack]
    assert failed == []
    assert pack in nodes.LOADED_MODULE_DIRS, f"{pack} failed to import: see the boot log"
    missing = [t for t in ADDED[pack] if t not in nodes.NODE_CLASS_MAPPINGS]
    assert missing == [], f"{pack} loaded without {missing}"


def test_controlnet_aux_canny_edges(worker: Worker) -> None:
    """CannyEdgePreprocessor (OpenCV's Canny): a white square on black gives its outline."""
    require_packs("comfyui_controlnet_aux")
    square = Image.new("RGB", (64, 64))
    ImageDraw.Draw(square).rectangle((16, 16, 47, 47), fill=(255, 255, 255))
    workflow = {
        "1": node("LoadImage", image="square.png"),
        "2": node(
            "CannyEdgePreprocessor",
            image=["1", 0],
            low_threshold=100,
            high_threshold=200,
            resolution=64,
        ),
        "3": node("SaveImage", images=["2", 0], filename_prefix="canny"),
    }
    body = _run(worker, workflow, images=[{"name": "square.png", "image": _png_b64(square)}])
    (edges,) = _images(body)
    gray = edges.convert("L")
    assert gray.size == (64, 64)
    row = [x for x in range(64) if gray.getpixel((x, 32)) > 128]  # white across row 32
    assert any(x < 24 for x in row) and any(x > 40 for x in row), row  # left and right edges
    assert all(x < 24 or x > 40 for x in row), row  # nothing inside the square or outside


def test_inspire_change_image_batch_size(worker: Worker) -> None:
    """ChangeImageBatchSize //Inspire: one image in, three out."""
    require_packs("ComfyUI-Inspire-Pack")
    workflow = {
        "1": node("EmptyImage", width=32, height=32, batch_size=1, color=0x3366CC),
        "2": node("ChangeImageBatchSize //Inspire", image=["1", 0], batch_size=3, mode="simple"),
        "3": node("SaveImage", images=["2", 0], filename_prefix="inspire"),
    }
    images = _images(_run(worker, workflow))
    assert len(images) == 3
    assert all(im.convert("RGB").getpixel((5, 5)) == (0x33, 0x66, 0xCC) for im in images)


# The pack calls torchvision's deprecated ToTensor(): a warning in production, an error
# under this suite's filterwarnings = error.
@pytest.mark.filterwarnings("ignore:The transform `ToTensor\\(\\)` is deprecated:UserWarning")
def test_ipadapter_prep_image_for_clip_vision(worker: Worker) -> None:
    """PrepImageForClipVision: any image to CLIP vision's 224 x 224."""
    require_packs("ComfyUI_IPAdapter_plus")
    workflow = {
        "1": node("EmptyImage", width=96, height=64, batch_size=1, color=0xFF0000),
        "2": node(
            "PrepImageForClipVision",
            image=["1", 0],
            interpolation="LANCZOS",
            crop_position="center",
            sharpening=0.0,
        ),
        "3": node("SaveImage", images=["2", 0], filename_prefix="ipadapter"),
    }
    (image,) = _images(_run(worker, workflow))
    assert image.size == (224, 224)


@contextmanager
def _model_file(folder: str, suffix: str) -> Iterator[Path]:
    """A unique file name in the first folder ComfyUI lists for ``folder``, removed after."""
    import folder_paths

    where = Path(folder_paths.get_folder_paths(folder)[0])
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"worker-test-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def gguf_unet(runtime: ComfyRuntime) -> Iterator[Path]:
    """A random SD1.5-layout UNet as GGUF (F16), where UnetLoaderGGUF lists files."""
    require_packs("ComfyUI-GGUF")
    import gguf
    import numpy as np

    from tests.engine.sd15 import sd15_shapes

    with _model_file("unet", ".gguf") as path:
        writer = gguf.GGUFWriter(str(path), arch="sd1")
        rng = np.random.default_rng(0)
        for key, shape in sd15_shapes().items():
            if key.startswith("model.diffusion_model."):
                data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
                writer.add_tensor(key, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        yield path


def test_gguf_unet_loader_loads_a_gguf_file(worker: Worker, gguf_unet: Path) -> None:
    """UnetLoaderGGUF reads the file with the gguf library and builds the SD1.5 model;
    ComfyUI's PreviewAny shows what it returned, beside a saved image."""
    workflow = {
        "1": node("UnetLoaderGGUF", unet_name=gguf_unet.name),
        "2": node("PreviewAny", source=["1", 0]),
        "3": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "4": node("SaveImage", images=["3", 0], filename_prefix="gguf"),
    }
    body = _run(worker, workflow)
    assert len(_images(body)) == 1
    assert "1" in body["stats"]["nodes"]  # the loader ran, it was not skipped


@pytest.fixture
def yolo_detector(runtime: ComfyRuntime) -> Iterator[Path]:
    """A YOLOv8n detector with random weights, from ultralytics' own yaml (no download)."""
    require_packs("ComfyUI-Impact-Subpack")
    from ultralytics import YOLO

    with _model_file("ultralytics_bbox", ".pt") as path:
        YOLO("yolov8n.yaml").save(str(path))
        yield path


def test_impact_subpack_ultralytics_detector_provider(worker: Worker, yolo_detector: Path) -> None:
    """UltralyticsDetectorProvider loads the detector through the Subpack's safe loader."""
    workflow = {
        "1": node("UltralyticsDetectorProvider", model_name=f"bbox/{yolo_detector.name}"),
        "2": node("PreviewAny", source=["1", 0]),
        "3": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "4": node("SaveImage", images=["3", 0], filename_prefix="subpack"),
    }
    body = _run(worker, workflow)
    assert len(_images(body)) == 1
    assert "1" in body["stats"]["nodes"]
