"""SaveVideo's encode handed off during a worker's run: the file is written in an encoder
process while the engine goes on (the ``deferred_video`` patch).

ComfyUI's ``SaveVideo`` calls ``VideoFromComponents.save_to`` (CreateVideo's video),
which encodes the frames one by one with PyAV's H.264 on the engine thread: 81 frames
of 832x480 took 9.5 s on 2 CPU cores, time a GPU would sit idle with the next job
waiting. While a worker's run hands its files off (``fast_save.saves_into``: another
job is in flight) and the file goes under ComfyUI's output folder, the wrapped
``save_to`` takes the file's name on disk (an empty file, so ComfyUI's counter never
gives it again), turns the frames into bytes as ``save_to`` does, hands them to an
encoder process (``engine.runtime.video_encode`` makes ``save_to``'s PyAV calls there)
and returns: SaveVideo returns its ui result at once, and the job waits for the file
after the run (``engine.runtime.pending_files``), with its deadline and cancel.

A process, not a thread, measured (``scripts/bench_video_save.py --gil``, docs/benchmarks.md):
the next job's Python ran at the same speed beside either (a sampler-like loop, medians
of 5: 0.88 and 0.90 of its speed alone, cores apart; PyAV 19 releases the GIL while it scales,
encodes and muxes). What differs: beside a pure-Python loop the encode on a thread took
1.3-1.5x as long (its GIL waits), and a process is ended when the job's time is up or it
is cancelled (``png_encoders``), where a thread inside PyAV's encoder cannot be stopped.
Sending the frames costs a copy through a pipe, on a pool thread.

Every other call runs ComfyUI's own ``save_to``: no hand-off (a lone job: sending the
frames to a process would only add to its time), a file object or a path outside the
output folder (a node that reads its file back), a format or codec ``save_to`` refuses
(it raises, as before), odd frame sizes (H.264's 4:2:0 needs even ones: ComfyUI's error).
VideoFromFile (a loaded video saved again) is not changed; VHS_VideoCombine hands off
its own way (``vhs_save``: its ffmpeg fed from a thread);
SaveAnimatedWEBP/PNG (``animated_save``) and SaveWEBM (``webm_save``) hand off to the
same encoder processes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.runtime import fast_save
from engine.runtime.png_encoders import EncoderPool
from engine.runtime.video_encode import VideoFile

if TYPE_CHECKING:
    from engine.deadline import Deadline

# Two jobs in flight (MAX_CONCURRENT_JOBS=2) hand off at most one video each at a time
# in practice; a third waits on the pool's thread. x264 already uses every core.
_PROCESSES = 2
# The folder that holds the ``engine`` package: the encoder processes unpickle a
# :class:`VideoFile` from there.
_ENGINE_PARENT = str(Path(__file__).resolve().parents[2])

# Frames converted to bytes at a time (float temporaries of that many frames only).
_CONVERT_FRAMES = 8

_pool: EncoderPool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> EncoderPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = EncoderPool(_PROCESSES, what="video", importable=(_ENGINE_PARENT,))
        return _pool


def install(video_class: Any, output_directory: Callable[[], str], formats: Any) -> bool:
    """Wrap ``video_class.save_to`` (``VideoFromComponents``) to hand its encode off during
    a worker's run; whether it did (not when already wrapped). ``output_directory``:
    ComfyUI's ``folder_paths.get_output_directory``; ``formats``: the
    ``(containers, codecs)`` ``save_to`` accepts."""
    original = video_class.save_to
    if getattr(original, "_deferred_video", False):
        return False
    video_class.save_to = _deferring(original, output_directory, formats)
    return True


def _deferring(
    original: Callable[..., Any], output_directory: Callable[[], str], formats: Any
) -> Callable[..., Any]:
    containers, codecs = formats

    @functools.wraps(original)
    def save_to(
        self: Any, path: Any, format: Any = "auto", codec: Any = "auto", metadata: Any = None
    ) -> Any:
        pending, deadline = fast_save.handed_off()
        target = output_path(path, output_directory) if pending is not None else None
        if target is None or format not in containers or codec not in codecs:
            return original(self, path, format=format, codec=codec, metadata=metadata)
        video = video_file(self.get_components(), metadata)
        if video is None:
            return original(self, path, format=format, codec=codec, metadata=metadata)
        target.touch()  # the name is taken now, the bytes come later
        assert pending is not None
        pending.add(target, submit(video, str(target), deadline))
        return None

    save_to._deferred_video = True  # type: ignore[attr-defined]
    return save_to


class Encoded(Protocol):
    """What an encoder process writes: picklable, importable there, written by ``save``."""

    def save(self, path: str) -> None: ...


def submit(video: Encoded, path: str, deadline: Deadline | None = None) -> Future[None]:
    """Write ``video`` at ``path`` in an encoder process; ends with ``deadline`` at the latest.
    The one pool of the hand-offs: SaveVideo's :class:`VideoFile`, SaveAnimatedWEBP's /
    SaveAnimatedPNG's ``animated_save.AnimatedFile`` and SaveWEBM's ``webm_save.WebmFile``."""
    return _shared_pool().submit(video, (path,), {}, deadline)


def output_path(path: Any, output_directory: Callable[[], str]) -> Path | None:
    """``path`` when it names a file under the output folder, else ``None`` (a file object,
    a file elsewhere: a node that reads its file back)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    target = Path(path)
    if not target.resolve().is_relative_to(Path(output_directory()).resolve()):
        return None
    return target


def video_file(components: Any, metadata: dict[str, Any] | None) -> VideoFile | None:
    """What ``save_to`` would encode, as bytes and settings (``save_to``'s own conversion
    of the frames, the frame rate, metadata and audio); ``None`` when ComfyUI's own call
    should run (frames it would refuse or fail on)."""
    images = components.images
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % 2 or images.shape[2] % 2:
        return None
    # save_to converts frame by frame on the frames' device, then copies to the CPU: the
    # same element-wise operations give the same bytes. Here, in the node, as save_to
    # reads them (0.5 s for 81 frames of 832x480 on 2 CPU cores): the frames as they are
    # now, whatever a later node does to a cached tensor, and no GPU memory held past the
    # node. A few frames at a time into one uint8 array: on the whole tensor at once, the
    # float temporaries would be twice the video's size again (on a GPU, in its VRAM).
    import numpy  # here: where frames come, torch and numpy are; the module loads without

    frames = numpy.empty(tuple(images.shape), dtype=numpy.uint8)
    for first in range(0, images.shape[0], _CONVERT_FRAMES):
        last = first + _CONVERT_FRAMES
        frames[first:last] = (images[first:last] * 255).clamp(0, 255).byte().cpu().numpy()
    frame_rate = Fraction(round(components.frame_rate * 1000), 1000)
    text = None if metadata is None else {k: json.dumps(v) for k, v in metadata.items()}
    video = VideoFile(frames=frames, frame_rate=frame_rate, metadata=text)
    audio = components.audio
    if audio:
        video.audio_rate = int(audio["sample_rate"])
        waveform = audio["waveform"]
        waveform = waveform[:, :, : math.ceil((video.audio_rate / frame_rate) * images.shape[0])]
        video.audio = waveform.movedim(2, 1).reshape(1, -1).float().numpy()
        video.audio_layout = "mono" if waveform.shape[1] == 1 else "stereo"
    return video


def close() -> None:
    """End the encoder processes (they also end on their own when the worker exits)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()
