"""A batch's PNGs saved by encoder processes, without ComfyUI: same files, same errors.

ComfyUI's ``nodes`` module is replaced by a small module with the same shape: a
``SaveImage.save_images`` that looks ``Image`` up in its module and calls
``Image.fromarray(...).save(path, pnginfo=..., compress_level=...)`` per image.
``tests/engine/test_fast_save_real.py`` compares the files with the real SaveImage's.
"""

from __future__ import annotations

import hashlib
import random
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import fast_save

_NODES_SOURCE = """
import os
from PIL import Image
from PIL.PngImagePlugin import PngInfo


class SaveImage:
    compress_level = 4

    def __init__(self, folder):
        self.folder = folder

    def save_images(self, images, filename_prefix="x", prompt=None):
        results = []
        for number, image in enumerate(images):
            img = Image.fromarray(image)
            metadata = PngInfo()
            metadata.add_text("prompt", repr(prompt))
            name = f"{filename_prefix}_{number:05}_.png"
            img.save(os.path.join(self.folder, name), pnginfo=metadata, compress_level=self.compress_level)
            results.append(name)
        return {"ui": {"images": results}}
"""


@pytest.fixture
def nodes() -> Iterator[types.ModuleType]:
    module = types.ModuleType("fake_comfy_nodes")
    exec(compile(_NODES_SOURCE, "fake_comfy_nodes", "exec"), module.__dict__)  # noqa: S102  (a fixed fake)
    yield module
    pool, fast_save._pool = fast_save._pool, None
    if pool is not None:
        pool.close()


class Pixels(bytes):
    """RGB pixels that ``Image.fromarray`` takes, as it takes ComfyUI's numpy arrays
    (the dev environment has no numpy)."""

    height, width = 64, 96

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.height, self.width, 3), "typestr": "|u1", "version": 3, "data": self}


def _batch(count: int, seed: int = 0) -> list[Pixels]:
    rng = random.Random(seed)  # noqa: S311  (test pixels)
    return [
        Pixels(
            bytes(
                min(255, x * 2 + rng.randrange(40))
                for _ in range(Pixels.height)
                for x in range(Pixels.width)
                for _ in range(3)
            )
        )
        for _ in range(count)
    ]


def _digests(folder: Path, names: list[str]) -> list[str]:
    return [hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names]


def test_a_batch_is_saved_by_encoder_processes_with_the_same_bytes(
    nodes: types.ModuleType, tmp_path: Path
) -> None:
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    serial.mkdir()
    parallel.mkdir()
    images = _batch(4)
    expected = nodes.SaveImage(serial).save_images(images, "b", prompt={"seed": 1})
    assert fast_save.install(nodes)
    result = nodes.SaveImage(parallel).save_images(images, "b", prompt={"seed": 1})
    assert result == expected
    names = expected["ui"]["images"]
    assert _digests(parallel, names) == _digests(serial, names)
    pool = fast_save._pool
    assert pool is not None and pool._idle, "the files were written by encoder processes"
    assert nodes.Image.__name__ == "PIL.Image", "nodes.Image is put back after the call"


def test_a_single_image_is_saved_in_process(nodes: types.ModuleType, tmp_path: Path) -> None:
    assert fast_save.install(nodes)
    nodes.SaveImage(tmp_path).save_images(_batch(1), "one")
    assert (tmp_path / "one_00000_.png").is_file()
    assert fast_save._pool is None


def test_an_encoder_error_is_raised_from_the_node(nodes: types.ModuleType, tmp_path: Path) -> None:
    assert fast_save.install(nodes)
    with pytest.raises(FileNotFoundError):
        nodes.SaveImage(tmp_path / "missing").save_images(_batch(2), "x")
    # The pool still works for the next job.
    nodes.SaveImage(tmp_path).save_images(_batch(2), "next")
    assert (tmp_path / "next_00001_.png").is_file()


def test_without_encoder_processes_the_worker_saves_the_same_bytes_itself(
    nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(self: Any) -> None:
        raise OSError("cannot start a process")

    monkeypatch.setattr(fast_save._Encoder, "__init__", no_process)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    serial.mkdir()
    parallel.mkdir()
    images = _batch(3, seed=2)
    expected = nodes.SaveImage(serial).save_images(images, "f")
    assert fast_save.install(nodes)
    nodes.SaveImage(parallel).save_images(images, "f")
    names = expected["ui"]["images"]
    assert _digests(parallel, names) == _digests(serial, names)


def test_install_twice_patches_once(nodes: types.ModuleType) -> None:
    assert fast_save.install(nodes)
    assert not fast_save.install(nodes)
    assert nodes.SaveImage.save_images.__wrapped__.__name__ == "save_images"
