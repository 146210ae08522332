"""Input images decoded once: LoadImage takes what the input step decoded, same pixels.

ComfyUI's ``nodes`` is replaced by a small module with the shape the handoff relies on:
a ``LoadImage.load_image`` that looks ``Image`` up in its module and walks the opened
file as ComfyUI's does (``ImageSequence``, ``exif_transpose``, ``convert``).
``tests/engine/test_decoded_inputs_real.py`` runs ComfyUI's own LoadImage.
"""

from __future__ import annotations

import base64
import hashlib
import io
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.inputs import store_images
from engine.job_files import settle_inputs
from engine.request import InputImage
from engine.runtime import decoded_inputs
from engine.settings import Settings

_NODES_SOURCE = """
import hashlib
import os
import types

from PIL import Image, ImageOps, ImageSequence

# ComfyUI's folder_paths, as far as LoadImage.IS_CHANGED uses it: names are relative
# to the input folder (the test sets it), and read back from there.
folder_paths = types.SimpleNamespace(input_dir="")
folder_paths.get_annotated_filepath = lambda name: os.path.join(folder_paths.input_dir, name)


class LoadImage:
    opened_from_disk = 0
    hashed_from_disk = 0

    @classmethod
    def IS_CHANGED(s, image):
        LoadImage.hashed_from_disk += 1
        with open(folder_paths.get_annotated_filepath(image), "rb") as f:
            return hashlib.sha256(f.read()).digest().hex()

    def load_image(self, path):
        img = Image.open(path)
        if getattr(img, "filename", ""):
            LoadImage.opened_from_disk += 1
        frames = []
        for i in ImageSequence.Iterator(img):
            i = ImageOps.exif_transpose(i)
            frames.append(i.convert("RGB").tobytes())
        return frames, img.format
"""


@pytest.fixture
def nodes() -> Iterator[Any]:
    module = types.ModuleType("fake_nodes")
    exec(_NODES_SOURCE, module.__dict__)  # noqa: S102  # the test's own source above
    handoff = decoded_inputs.HANDOFF
    assert decoded_inputs.install(module)
    try:
        yield module
    finally:
        handoff.clear()
        handoff.enabled = False


def _encoded(fmt: str, size: tuple[int, int] = (48, 40), frames: int = 1) -> bytes:
    images = [
        Image.frombytes(
            "RGB", size, bytes((i * 7 + f * 31) % 256 for i in range(3 * size[0] * size[1]))
        )
        for f in range(frames)
    ]
    buf = io.BytesIO()
    if frames > 1:
        images[0].save(buf, fmt, save_all=True, append_images=images[1:])
    else:
        images[0].save(buf, fmt)
    return buf.getvalue()


def _store(tmp_path: Path, name: str, data: bytes) -> Path:
    (path,) = store_images(
        [InputImage(name=name, image=base64.b64encode(data).decode())], tmp_path, Settings()
    )
    return path


@pytest.mark.parametrize(("name", "fmt"), [("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.webp", "WEBP")])
def test_load_image_takes_the_decoded_image_once_with_the_same_pixels(
    nodes: Any, tmp_path: Path, name: str, fmt: str
) -> None:
    path = _store(tmp_path, name, _encoded(fmt))
    assert len(decoded_inputs.HANDOFF) == 1
    moved = tmp_path / "moved"
    moved.mkdir()
    path = path.replace(moved / path.name)  # the job's input folder is renamed: still found
    taken = nodes.LoadImage().load_image(str(path))
    assert len(decoded_inputs.HANDOFF) == 0
    assert nodes.LoadImage.opened_from_disk == 0
    from_disk = nodes.LoadImage().load_image(str(path))  # nothing held: read from the file
    assert nodes.LoadImage.opened_from_disk == 1
    assert taken == from_disk
    assert taken[1] == fmt


def test_a_file_changed_after_it_was_stored_is_read_from_disk(nodes: Any, tmp_path: Path) -> None:
    path = _store(tmp_path, "a.png", _encoded("PNG"))
    other = _encoded("PNG", size=(20, 10))
    path.write_bytes(other)
    frames, _ = nodes.LoadImage().load_image(str(path))
    assert nodes.LoadImage.opened_from_disk == 1
    assert frames == [Image.open(io.BytesIO(other)).convert("RGB").tobytes()]


def test_animated_images_are_not_held(nodes: Any, tmp_path: Path) -> None:
    path = _store(tmp_path, "anim.png", _encoded("PNG", frames=3))
    assert len(decoded_inputs.HANDOFF) == 0
    frames, _ = nodes.LoadImage().load_image(str(path))
    assert len(frames) == 3


def test_nothing_is_held_without_a_load_image_to_take_it(tmp_path: Path) -> None:
    assert not decoded_inputs.HANDOFF.enabled
    _store(tmp_path, "a.png", _encoded("PNG"))
    assert len(decoded_inputs.HANDOFF) == 0


def test_clear_drops_what_a_job_did_not_take(nodes: Any, tmp_path: Path) -> None:
    path = _store(tmp_path, "a.png", _encoded("PNG"))
    decoded_inputs.HANDOFF.clear()
    nodes.LoadImage().load_image(str(path))
    assert nodes.LoadImage.opened_from_disk == 1


def test_is_changed_answers_from_the_stored_digest_without_reading_the_file(
    nodes: Any, tmp_path: Path
) -> None:
    nodes.folder_paths.input_dir = str(tmp_path)
    data = _encoded("PNG")
    _store(tmp_path, "a.png", data)
    # As ComfyUI calls it (keywords) and positionally: ComfyUI's own answer, no read.
    assert nodes.LoadImage.IS_CHANGED(image="a.png") == hashlib.sha256(data).hexdigest()
    assert nodes.LoadImage.IS_CHANGED("a.png") == hashlib.sha256(data).hexdigest()
    assert nodes.LoadImage.hashed_from_disk == 0
    other = _encoded("PNG", size=(20, 10))
    (tmp_path / "a.png").write_bytes(other)  # changed since: hashed from the file again
    assert nodes.LoadImage.IS_CHANGED(image="a.png") == hashlib.sha256(other).hexdigest()
    assert nodes.LoadImage.hashed_from_disk == 1
    decoded_inputs.HANDOFF.clear()  # the job ended: every file is hashed from disk
    _store(tmp_path, "b.png", data)
    decoded_inputs.HANDOFF.clear()
    assert nodes.LoadImage.IS_CHANGED(image="b.png") == hashlib.sha256(data).hexdigest()
    assert nodes.LoadImage.hashed_from_disk == 2


def test_the_input_folder_name_is_the_same_from_the_digest_as_from_the_files(
    nodes: Any, tmp_path: Path
) -> None:
    names = []
    for run in range(2):
        staged = tmp_path / f"staged-{run}"
        paths = [_store(staged, n, _encoded("PNG", size=(9 + i, 7))) for i, n in enumerate("ab")]
        if run == 1:
            decoded_inputs.HANDOFF.clear()  # no digests: the files are read and hashed
        (tmp_path / f"input-{run}").mkdir()
        names.append(settle_inputs(tmp_path / f"input-{run}", staged, paths))
    assert names[0] == names[1]


def test_install_leaves_an_unfamiliar_nodes_module_alone() -> None:
    handoff = decoded_inputs.DecodedImages()
    assert not decoded_inputs.install(types.SimpleNamespace(), handoff)
    assert not handoff.enabled
