"""SaveWEBM's PyAV encode handed off during a worker's run: the file is written in an
encoder process while the engine goes on (the ``deferred_webm`` patch).

ComfyUI 0.3.64's ``SaveWEBM`` (``comfy_extras/nodes_video.py``, a V3 node) opens a WebM
with PyAV, writes the prompt and workflow into its metadata, adds a VP9 (``libvpx-vp9``)
or AV1 (``libsvtav1``) stream, sets its size, pixel format, bit rate and options, and
encodes the frames one by one on the engine thread: seconds the GPU sits idle while the
next job waits. While a worker's run hands its files off (``fast_save.saves_into``:
another job is in flight), the wrapped ``execute`` runs ComfyUI's own code with one name
changed for that one call: ``av`` is a recorder (:class:`_RecordingAv`). Its ``open`` of
a file under the output folder takes the file's name on disk (an empty file, so
ComfyUI's counter never gives it again); the container's metadata, the stream's codec,
rate and settings in the order the node set them, and each frame's bytes (ComfyUI's own
conversion, one frame at a time) are recorded, and at ``close`` they go to an encoder
process (the video hand-off's, ``video_save.submit``) as a :class:`WebmFile`, whose
``save`` makes the same PyAV calls in the same order: the same encoded packets and
metadata (the WebM muxer's own per-file identifiers differ, as between two files of
ComfyUI's own node). The node returns
ComfyUI's own ui result; the job waits for the file after the run, within its deadline
and cancel.

Every other call runs ComfyUI's own ``execute`` as it is: a lone job (no hand-off), and
any PyAV use the recorder does not know (another mode, a file elsewhere, another frame
format, an attribute it does not record): it raises :class:`_NotHandled` before anything
is handed off, and ComfyUI's own code runs again from the start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.runtime import fast_save, video_save
from engine.runtime.rebound import with_global

if TYPE_CHECKING:
    from engine.deadline import Deadline
    from engine.runtime.pending_files import PendingFiles

NODE = "SaveWEBM"
"""The node type whose ``execute`` the ``deferred_webm`` patch wraps."""

_FRAME_FORMAT = "rgb24"


class WebmFile:
    """One SaveWEBM file as picklable data: what the node's PyAV calls set, in order.
    Sent to an encoder process, which imports this module to unpickle it."""

    def __init__(self) -> None:
        self.metadata: dict[str, str] = {}
        self.codec = ""
        self.rate: Any = None
        self.settings: list[tuple[str, Any]] = []
        """The stream's attributes as the node set them, in order (``options`` last as
        the node left it: PyAV keeps the dict it was given, and the node adds to it)."""
        self.steps: list[Any] = []
        """Each frame's ``rgb24`` bytes (a uint8 array) in order; ``None``: the flush."""

    @property
    def size(self) -> tuple[int, int]:
        """The pixels of every frame, as one image's (width, height): what the encoder
        pool's answer bound counts (``png_encoders.answer_bound_s``)."""
        frames = [step for step in self.steps if step is not None]
        if not frames:
            return 0, 0
        height, width = frames[0].shape[:2]
        return width, height * len(frames)

    def save(self, path: str) -> None:
        """Write the WebM at ``path`` with the PyAV calls the node made, in its order."""
        import av

        container = av.open(path, mode="w")
        for key, value in self.metadata.items():
            container.metadata[key] = value
        stream: Any = container.add_stream(self.codec, rate=self.rate)
        for name, value in self.settings:
            setattr(stream, name, value)
        for step in self.steps:
            if step is None:
                container.mux(stream.encode())
            else:
                frame = av.VideoFrame.from_ndarray(step, format=_FRAME_FORMAT)
                container.mux(stream.encode(frame))
        container.close()


def install(node_class: Any, output_directory: Callable[[], str]) -> bool:
    """Wrap ``node_class.execute`` (SaveWEBM's classmethod) to hand its encode off during a
    worker's run; whether it did (not when already wrapped). ``output_directory``:
    ComfyUI's ``folder_paths.get_output_directory``."""
    original = node_class.__dict__["execute"].__func__
    if getattr(original, "_deferred_webm", False):
        return False
    node_class.execute = classmethod(_deferring(original, output_directory))
    return True


def _deferring(original: Any, output_directory: Callable[[], str]) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute(cls: Any, *args: Any, **kwargs: Any) -> Any:
        pending, deadline = fast_save.handed_off()
        if pending is None:
            return original(cls, *args, **kwargs)
        recorder = _RecordingAv(original.__globals__["av"], output_directory)
        call = with_global(original, "av", recorder)
        try:
            result = call(cls, *args, **kwargs)
            if recorder.container is not None and not recorder.container.closed:
                raise _NotHandled("the container was never closed")
        except _NotHandled:
            if recorder.container is not None:  # its name, taken for nothing: ComfyUI's now
                recorder.container.path.unlink(missing_ok=True)
            return original(cls, *args, **kwargs)
        if recorder.container is not None:
            _hand_off(recorder.container, pending, deadline)
        return result

    execute._deferred_webm = True  # type: ignore[attr-defined]
    return execute


def _hand_off(container: _Container, pending: PendingFiles, deadline: Deadline | None) -> None:
    pending.add(container.path, video_save.submit(container.file, str(container.path), deadline))


class _NotHandled(Exception):
    """A PyAV call the recorder does not know: ComfyUI's own ``execute`` runs instead."""


class _RecordingAv:
    """Stands in for ``av`` inside one ``execute`` call: ``open`` for writing a file under
    the output folder, and ``VideoFrame.from_ndarray`` of ``rgb24`` bytes."""

    def __init__(self, av: Any, output_directory: Callable[[], str]) -> None:
        self._av = av
        self._output_directory = output_directory
        self.container: _Container | None = None
        self.VideoFrame = _FrameMaker()

    def open(self, file: Any, mode: str = "r", **kwargs: Any) -> _Container:
        target = video_save.output_path(file, self._output_directory)
        if mode != "w" or kwargs or target is None or self.container is not None:
            raise _NotHandled(f"av.open({file!r}, mode={mode!r}, {kwargs})")
        target.touch()  # the name is taken now, the bytes come later
        self.container = _Container(target)
        return self.container

    def __getattr__(self, name: str) -> Any:
        raise _NotHandled(f"av.{name}")


class _FrameMaker:
    """``av.VideoFrame`` as the recorder has it: ``from_ndarray`` keeps the bytes."""

    def from_ndarray(self, array: Any, format: str = "", **kwargs: Any) -> _Frame:
        if format != _FRAME_FORMAT or kwargs:
            raise _NotHandled(f"VideoFrame.from_ndarray(format={format!r}, {kwargs})")
        return _Frame(array)

    def __getattr__(self, name: str) -> Any:
        raise _NotHandled(f"av.VideoFrame.{name}")


class _Frame:
    def __init__(self, array: Any) -> None:
        self.array = array


class _Container:
    """An output container as the recorder has it: metadata, one stream, packets ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = WebmFile()
        self.metadata = self.file.metadata
        self.stream: _Stream | None = None
        self.closed = False

    def add_stream(self, codec: str, rate: Any = None, **kwargs: Any) -> _Stream:
        if kwargs or self.stream is not None:
            raise _NotHandled(f"add_stream({codec!r}, {kwargs})")
        self.file.codec, self.file.rate = codec, rate
        self.stream = _Stream(self.file)
        return self.stream

    def mux(self, packets: Any) -> None:
        # What the recorder's encode returns: nothing to write until the process does.
        if not isinstance(packets, list) or packets:
            raise _NotHandled("mux of a packet the recorder did not make")

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        raise _NotHandled(f"container.{name}")


class _Stream:
    """A video stream as the recorder has it: attributes set in order, frames kept."""

    _RECORDED = ("width", "height", "pix_fmt", "bit_rate", "options")

    def __init__(self, file: WebmFile) -> None:
        object.__setattr__(self, "_file", file)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._RECORDED:
            raise _NotHandled(f"stream.{name} =")
        self._file.settings.append((name, value))

    def __getattr__(self, name: str) -> Any:
        for set_name, value in reversed(self._file.settings):
            if set_name == name:
                return value  # options: the dict itself, which the node may add to
        raise _NotHandled(f"stream.{name}")

    def encode(self, frame: Any = None) -> list[Any]:
        if frame is not None and not isinstance(frame, _Frame):
            raise _NotHandled("stream.encode of a frame the recorder did not make")
        self._file.steps.append(None if frame is None else frame.array)
        return []
