"""SaveAnimatedWEBP's and SaveAnimatedPNG's encode handed off during a worker's run
(``engine.runtime.animated_save``), without ComfyUI.

ComfyUI's ``comfy_extras/nodes_images.py`` is replaced by a small module with the same
shape: each node's ``save_images`` looks ``Image`` up in its module, makes each frame with
``Image.fromarray`` and writes a whole animation with one ``save(path, save_all=True,
append_images=..., ...)``. A pool that holds each encode until the test lets it go
stands in for the encoder processes, except where a real one is the point.
``tests/engine/test_animated_save_real.py`` runs ComfyUI's own nodes and compares the
files with the ones they write themselves.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.deadline import Deadline
from engine.runtime import animated_save, fast_save, video_save
from engine.runtime.pending_files import PendingFiles
from engine.runtime.png_encoders import EncoderPool
from tests.unit.test_fast_save import GatedPool, Pixels, _batch

_NODES_SOURCE = """
import os
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def module_image():
    return Image


class SaveAnimatedWEBP:
    def __init__(self, folder):
        self.folder = folder

    def save_images(self, images, fps=8.0, filename_prefix="x", prompt=None, num_frames=0):
        frames = []
        for image in images:
            frames.append(Image.fromarray(image))
        exif = frames[0].getexif()
        if prompt is not None:
            exif[0x0110] = "prompt:" + prompt
        step = num_frames or len(frames)
        results = []
        for number, first in enumerate(range(0, len(frames), step)):
            name = f"{filename_prefix}_{number:05}_.webp"
            frames[first].save(
                os.path.join(self.folder, name), save_all=True, duration=int(1000 / fps),
                append_images=frames[first + 1:first + step], exif=exif, lossless=True, method=0,
            )
            results.append(name)
        return {"ui": {"images": results, "animated": (True,), "seen": module_image()}}


class SaveAnimatedPNG:
    def __init__(self, folder):
        self.folder = folder

    def save_images(self, images, fps=8.0, filename_prefix="x", prompt=None, extra=()):
        frames = []
        for image in images:
            frames.append(Image.fromarray(image))
        frames += list(extra)
        info = None
        if prompt is not None:
            info = PngInfo()
            info.add(b"comf", b"prompt\\0" + prompt.encode(), after_idat=True)
        name = f"{filename_prefix}_00001_.png"
        frames[0].save(
            os.path.join(self.folder, name), pnginfo=info, compress_level=1, save_all=True,
            duration=int(1000 / fps), append_images=frames[1:],
        )
        return {"ui": {"images": [name], "animated": (True,)}}
"""

_WEBP, _PNG = animated_save.NODES


def _nodes(output: Path) -> types.ModuleType:
    """The stand-in node file, its two nodes wrapped with ``output`` as the output folder."""
    module = types.ModuleType("fake_nodes_images")
    exec(compile(_NODES_SOURCE, module.__name__, "exec"), module.__dict__)  # noqa: S102  (a fixed fake)
    for name in animated_save.NODES:
        assert animated_save.install(getattr(module, name), lambda: str(output))
    return module


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    return folder


@pytest.fixture
def nodes(output: Path) -> types.ModuleType:
    return _nodes(output)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedPool]:
    gated = GatedPool()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: gated)
    yield gated
    gated.gate.set()


def _own(nodes: types.ModuleType, node: str, folder: Path, **inputs: Any) -> dict[str, bytes]:
    """What the node writes with no hand-off (ComfyUI's own encode, in the node)."""
    folder.mkdir(exist_ok=True)
    getattr(nodes, node)(str(folder)).save_images(**inputs)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("node", [_WEBP, _PNG])
def test_during_a_handed_off_run_the_node_returns_before_the_encode(
    nodes: types.ModuleType, pool: GatedPool, output: Path, tmp_path: Path, node: str
) -> None:
    inputs: dict[str, Any] = {"images": _batch(4, seed=1), "prompt": '{"1": {}}'}
    pending = PendingFiles()
    folder = output / "job"
    folder.mkdir()
    with fast_save.saves_into(pending, Deadline.start(60)):
        result = getattr(nodes, node)(str(folder)).save_images(**inputs)
    (name,) = result["ui"]["images"]
    assert result["ui"]["animated"] == (True,)
    assert pool.submitted == 1 and len(pending) == 1
    assert (folder / name).stat().st_size == 0  # the name is taken; the bytes come later
    pool.gate.set()
    assert pending.wait() == []
    own = _own(nodes, node, tmp_path / "own", **inputs)
    assert own == {name: (folder / name).read_bytes()}
    assert b"prompt" in own[name]  # the metadata the node built went with the call


def test_each_file_of_a_split_animation_is_handed_off_with_its_own_name(
    nodes: types.ModuleType, pool: GatedPool, output: Path, tmp_path: Path
) -> None:
    """SaveAnimatedWEBP's ``num_frames`` (not an input in ComfyUI 0.3.64): one save per file."""
    inputs: dict[str, Any] = {"images": _batch(5, seed=2), "num_frames": 2}
    pending = PendingFiles()
    with fast_save.saves_into(pending):
        result = nodes.SaveAnimatedWEBP(str(output)).save_images(**inputs)
    names = result["ui"]["images"]
    assert len(names) == 3 and pool.submitted == 3
    assert all((output / n).stat().st_size == 0 for n in names)
    pool.gate.set()
    assert pending.wait() == []
    assert _own(nodes, _WEBP, tmp_path / "own", **inputs) == {
        n: (output / n).read_bytes() for n in names
    }


def test_the_encode_waits_with_the_jobs_deadline(
    nodes: types.ModuleType, monkeypatch: pytest.MonkeyPatch, output: Path
) -> None:
    submitted: list[Any] = []

    def submit(encoded: Any, path: str, deadline: Any) -> Future[None]:
        submitted.append((type(encoded), deadline))
        done: Future[None] = Future()
        done.set_result(None)
        return done

    monkeypatch.setattr(video_save, "submit", submit)
    deadline = Deadline.start(60)
    with fast_save.saves_into(PendingFiles(), deadline):
        nodes.SaveAnimatedPNG(str(output)).save_images(_batch(2))
    assert submitted == [(animated_save.AnimatedFile, deadline)]


def test_a_failed_encode_is_reported_for_its_file_and_removed(
    nodes: types.ModuleType, monkeypatch: pytest.MonkeyPatch, output: Path
) -> None:
    def refuse(encoded: Any, args: Any, kwargs: Any) -> None:
        Path(args[0]).write_bytes(b"half")
        raise OSError("the encoder refused the frames")

    gated = GatedPool(write=refuse)
    gated.gate.set()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: gated)
    pending = PendingFiles()
    with fast_save.saves_into(pending):
        result = nodes.SaveAnimatedWEBP(str(output)).save_images(_batch(3))
    ((failed, error),) = pending.wait()
    assert failed == output / result["ui"]["images"][0]
    assert "refused the frames" in str(error) and not failed.exists()


@pytest.mark.parametrize(
    "case", ["no hand-off", "outside the output folder", "frames not the node's own"]
)
def test_every_other_call_runs_comfyuis_own_save(
    nodes: types.ModuleType, pool: GatedPool, output: Path, tmp_path: Path, case: str
) -> None:
    pending: PendingFiles | None = PendingFiles()
    folder = output
    inputs: dict[str, Any] = {"images": _batch(3, seed=3)}
    if case == "no hand-off":
        pending = None  # a lone job: nothing else waits for the engine
    elif case == "outside the output folder":
        folder = tmp_path / "elsewhere"  # a node that reads its file back
        folder.mkdir()
    else:
        inputs["extra"] = [Image.new("RGB", (Pixels.width, Pixels.height), "red")]
    with fast_save.saves_into(pending):
        result = nodes.SaveAnimatedPNG(str(folder)).save_images(**inputs)
    (name,) = result["ui"]["images"]
    assert pool.submitted == 0 and (pending is None or len(pending) == 0)
    own = _own(nodes, _PNG, tmp_path / "own", **inputs)
    assert own == {name: (folder / name).read_bytes()}  # written in the node, as ComfyUI does


def test_no_other_code_sees_the_stand_in(
    nodes: types.ModuleType, pool: GatedPool, output: Path
) -> None:
    """The stand-in ``Image`` is in the globals of the one call's copy of the function; the
    module's ``Image`` (what its other functions, and other threads, see) stays Pillow's."""
    with fast_save.saves_into(PendingFiles()):
        result = nodes.SaveAnimatedWEBP(str(output)).save_images(_batch(2))
    assert pool.submitted == 1
    assert result["ui"]["seen"] is Image and nodes.Image is Image


def test_installed_once(output: Path) -> None:
    module = _nodes(output)
    wrapped = module.SaveAnimatedPNG.save_images
    assert not animated_save.install(module.SaveAnimatedPNG, lambda: str(output))
    assert module.SaveAnimatedPNG.save_images is wrapped
    assert wrapped.__wrapped__.__name__ == "save_images"


def test_an_encoder_process_writes_the_bytes_of_the_nodes_own_save(
    nodes: types.ModuleType, output: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real encoder process, as the video hand-off starts them: the animation, its
    frames and its metadata pickled there, the same ``save`` call, the same bytes."""
    repo = str(Path(__file__).resolve().parents[2])
    pool = EncoderPool(1, what="video", importable=(repo,))
    monkeypatch.setattr(video_save, "_shared_pool", lambda: pool)
    submitted: list[Any] = []
    monkeypatch.setattr(pool, "submit", _recording(pool.submit, submitted))
    inputs: dict[str, Any] = {"images": _batch(3, seed=4), "prompt": '{"2": {}}'}
    pending = PendingFiles()
    try:
        with fast_save.saves_into(pending):
            result = nodes.SaveAnimatedWEBP(str(output)).save_images(**inputs)
        assert pending.wait() == []
        (encoder,) = pool._idle  # written by a process, not the fallback in this one
        assert encoder.alive()
    finally:
        pool.close()
    (name,) = result["ui"]["images"]
    assert _own(nodes, _WEBP, tmp_path / "own", **inputs) == {name: (output / name).read_bytes()}
    (encoded,) = submitted
    assert isinstance(encoded, animated_save.AnimatedFile)
    assert encoded.size == (Pixels.width, 3 * Pixels.height)  # the answer bound counts all frames


def _recording(submit: Any, into: list[Any]) -> Any:
    def recording(encoded: Any, *args: Any) -> Any:
        into.append(encoded)
        return submit(encoded, *args)

    return recording


class RefusedAnimation(animated_save.AnimatedFile):
    """An animation the encoder process fails on (it imports this module to unpickle it)."""

    def save(self, path: str) -> None:
        Path(path).write_bytes(b"half")
        raise ValueError("the encoder refused the frames")
