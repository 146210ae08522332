"""ComfyUI's own LoadImage takes the image the input step decoded: the same tensors."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.inputs import store_images
from engine.request import InputImage
from engine.runtime import decoded_inputs
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from tests.engine.support import ENGINE_MARKS, gradient_rgb

pytestmark = ENGINE_MARKS


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB")])
def test_load_image_gives_the_same_tensors_from_the_handoff_as_from_disk(
    runtime: ComfyRuntime, fmt: str, mode: str
) -> None:
    torch = pytest.importorskip("torch")
    nodes = sys.modules["nodes"]
    pixels = gradient_rgb(72, 40, seed=5)
    image = pixels.convert(mode) if mode != "RGBA" else pixels.convert("RGBA")
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    buf = io.BytesIO()
    image.save(buf, fmt, **({"transparency": 0} if mode == "P" else {}))
    name = f"handoff-{fmt}-{mode}.{fmt.lower()}"
    folder = runtime.directories.input / "handoff-test"
    (path,) = store_images(
        [InputImage(name=name, image=base64.b64encode(buf.getvalue()).decode())],
        folder,
        Settings(),
    )
    try:
        assert decoded_inputs.HANDOFF.enabled  # the runtime's boot installed it
        assert len(decoded_inputs.HANDOFF) == 1
        # ComfyUI's IS_CHANGED (the cache key) reads and hashes the file: same answer.
        is_changed = nodes.LoadImage.IS_CHANGED
        from_digest = is_changed(image=f"handoff-test/{name}")
        assert from_digest == is_changed.__wrapped__(image=f"handoff-test/{name}")
        assert from_digest == hashlib.sha256(buf.getvalue()).hexdigest()
        handed = nodes.LoadImage().load_image(f"handoff-test/{name}")
        assert len(decoded_inputs.HANDOFF) == 0  # taken
        from_disk = nodes.LoadImage().load_image(f"handoff-test/{name}")
        for got, expected in zip(handed, from_disk, strict=True):
            assert torch.equal(got, expected)
    finally:
        decoded_inputs.HANDOFF.clear()
        Path(path).unlink(missing_ok=True)
        folder.rmdir()
