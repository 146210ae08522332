"""SaveWEBM's encode handed off during a worker's run (``engine.runtime.webm_save``), without
ComfyUI or real frames.

ComfyUI's ``SaveWEBM`` is replaced by a small V3-shaped node (a classmethod ``execute``)
that makes SaveWEBM's PyAV calls, and PyAV by a small module that writes a text record of
what a container was given (metadata, stream settings as PyAV holds them at the end,
each frame and packet): a file written by the node itself and one replayed by
``WebmFile.save`` can be compared. A pool that holds each encode until the test lets it
go stands in for the encoder processes. ``tests/engine/test_webm_save_real.py`` runs
ComfyUI's own SaveWEBM and compares the real WebM files.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.runtime import fast_save, video_save, webm_save
from engine.runtime.pending_files import PendingFiles
from tests.unit.test_fast_save import GatedPool

_FAKE_AV = """
from pathlib import Path


class _Frame:
    def __init__(self, array):
        self.array = array


class VideoFrame:
    @staticmethod
    def from_ndarray(array, format):
        assert format == "rgb24"
        return _Frame(array)


class _Stream:
    def __init__(self, codec, rate):
        self.codec, self.rate, self.count = codec, rate, 0

    def encode(self, frame=None):
        if frame is None:
            return ["flush"]
        self.count += 1
        return [f"packet {self.count}: {frame.array}"]


class _Container:
    def __init__(self, path):
        self.path, self.metadata, self.muxed, self.stream = path, {}, [], None

    def add_stream(self, codec, rate=None):
        self.stream = _Stream(codec, rate)
        return self.stream

    def mux(self, packets):
        self.muxed.extend(packets if isinstance(packets, list) else [packets])

    def close(self):
        settings = {k: v for k, v in vars(self.stream).items() if k != "count"}
        Path(self.path).write_text(f"{self.metadata}\\n{settings}\\n" + "\\n".join(self.muxed))


def open(path, mode="r"):
    assert mode == "w"
    return _Container(path)
"""

_NODE = """
import json
import os
from fractions import Fraction

import av


class SaveWEBM:
    folder = None
    prompt = None

    @classmethod
    def execute(cls, images, codec="vp9", fps=24.0, filename_prefix="x", crf=32.0):
        file = f"{filename_prefix}_00001_.webm"
        container = av.open(os.path.join(cls.folder, file), mode="w")
        if cls.prompt is not None:
            container.metadata["prompt"] = json.dumps(cls.prompt)
        codecs = {"vp9": "libvpx-vp9", "av1": "libsvtav1"}
        stream = container.add_stream(codecs[codec], rate=Fraction(round(fps * 1000), 1000))
        stream.width = 4
        stream.height = 2
        stream.pix_fmt = "yuv420p10le" if codec == "av1" else "yuv420p"
        stream.bit_rate = 0
        stream.options = {"crf": str(crf)}
        if codec == "av1":
            stream.options["preset"] = "6"
        for frame in images:
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        container.mux(stream.encode())
        container.close()
        return {"ui": {"images": [file], "animated": (True,)}}
"""


class _Pixels(str):
    """One frame as the stand-in PyAV takes it (text: the dev environment has no numpy),
    with a frame's shape (height, width, channels)."""

    shape = (2, 4, 3)


class _Images(list[_Pixels]):
    shape = (3, 2, 4, 3)


def _images() -> list[_Pixels]:
    return _Images([_Pixels("red"), _Pixels("green"), _Pixels("blue")])


def _make_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str = _NODE) -> Any:
    """The stand-in SaveWEBM, wrapped, with ``tmp_path/output`` as the output folder."""
    fake = types.ModuleType("av")
    exec(compile(_FAKE_AV, "fake_av", "exec"), fake.__dict__)  # noqa: S102  (a fixed fake)
    monkeypatch.setitem(sys.modules, "av", fake)
    module = types.ModuleType("fake_nodes_video")
    exec(compile(source, module.__name__, "exec"), module.__dict__)  # noqa: S102  (a fixed fake)
    output = tmp_path / "output"
    output.mkdir()
    module.SaveWEBM.folder = str(output)
    module.SaveWEBM.prompt = {"1": {"class_type": "SaveWEBM"}}
    assert webm_save.install(module.SaveWEBM, lambda: str(output))
    return module.SaveWEBM


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    return _make_node(tmp_path, monkeypatch)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedPool]:
    gated = GatedPool()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: gated)
    yield gated
    gated.gate.set()


def _own(node: Any, folder: Path, **inputs: Any) -> str:
    """What the node writes with no hand-off (its own encode, in the node)."""
    folder.mkdir(exist_ok=True)
    node.folder = str(folder)
    (name,) = node.execute(**inputs)["ui"]["images"]
    return (folder / name).read_text()


@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_during_a_handed_off_run_the_node_returns_before_the_encode(
    node: Any, pool: GatedPool, tmp_path: Path, codec: str
) -> None:
    pending = PendingFiles()
    with fast_save.saves_into(pending, Deadline.start(60)):
        result = node.execute(_images(), codec=codec)
    (name,) = result["ui"]["images"]
    path = Path(node.folder) / name
    assert pool.submitted == 1 and len(pending) == 1
    assert path.stat().st_size == 0  # the name is taken; the bytes come later
    pool.gate.set()
    assert pending.wait() == []
    written = path.read_text()
    assert written == _own(node, tmp_path / "own", images=_images(), codec=codec)
    # The options as the node left them (av1 adds its preset after setting them).
    assert ("'preset': '6'" in written) is (codec == "av1")
    assert "packet 3: blue" in written and written.endswith("flush")


def test_the_encode_waits_with_the_jobs_deadline(
    node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[Any] = []

    def submit(encoded: Any, path: str, deadline: Any) -> Future[None]:
        submitted.append((type(encoded), encoded.size, deadline))
        done: Future[None] = Future()
        done.set_result(None)
        return done

    monkeypatch.setattr(video_save, "submit", submit)
    deadline = Deadline.start(60)
    with fast_save.saves_into(PendingFiles(), deadline):
        node.execute(_images())
    # The encoder's answer bound counts every frame's pixels: 3 frames of 4x2.
    assert submitted == [(webm_save.WebmFile, (4, 3 * 2), deadline)]


@pytest.mark.parametrize(
    "case", ["no hand-off", "outside the output folder", "a PyAV call it does not know"]
)
def test_every_other_call_runs_comfyuis_own_execute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: GatedPool, case: str
) -> None:
    pending: PendingFiles | None = PendingFiles()
    source = _NODE
    if case == "a PyAV call it does not know":
        # After the file is opened (its name taken): the recorder gives up, removes it,
        # and the node's own code runs from the start.
        source = _NODE.replace(
            "stream.bit_rate = 0", 'stream.bit_rate = 0\n        stream.thread_type = "AUTO"'
        )
        assert source != _NODE
    node = _make_node(tmp_path, monkeypatch, source)
    if case == "no hand-off":
        pending = None  # a lone job: nothing else waits for the engine
    elif case == "outside the output folder":
        node.folder = str(tmp_path / "elsewhere")
        Path(node.folder).mkdir()
    with fast_save.saves_into(pending):
        result = node.execute(_images())
    (name,) = result["ui"]["images"]
    assert pool.submitted == 0 and (pending is None or len(pending) == 0)
    written = Path(node.folder) / name
    assert "packet 3: blue" in written.read_text()  # written in the node, as ComfyUI does
    assert list(Path(node.folder).iterdir()) == [written]


def test_installed_once(node: Any) -> None:
    wrapped = node.__dict__["execute"]
    assert not webm_save.install(node, lambda: "/")
    assert node.__dict__["execute"] is wrapped
