"""VideoHelperSuite's VHS_VideoCombine encode handed off during a worker's run: ffmpeg gets
the frames from a thread while the engine goes on (the ``deferred_vhs`` patch).

VHS's ``VideoCombine.combine_video`` (``videohelpersuite/nodes.py``) converts each frame
to bytes and writes it to ffmpeg's stdin through its module's generator
``ffmpeg_process(args, video_format, video_metadata, file_path, env)`` (``send(None)``
starts it, ``send(bytes)`` per frame, ``send(None)`` closes the pipe, waits for ffmpeg and
returns the frames written, one more ``send(None)`` ends it): the engine thread waits
until ffmpeg has encoded the whole video, seconds the GPU sits idle while the next job
waits. While a worker's run hands its files off (``fast_save.saves_into``: another job is
in flight), the wrapped ``combine_video`` runs VHS's own code with one name changed for
that one call (``rebound.with_global``): ``ffmpeg_process`` is a stand-in whose frames go
through a queue bounded in bytes (:data:`QUEUE_BYTES`; when it is full the engine thread
waits, as it waits for ffmpeg without this) to VHS's own ``ffmpeg_process``, run on a
thread of its own (:class:`Encode`). The closing ``send(None)`` returns the frames sent
at once, the node returns VHS's own ui result, and the job waits for the file after the
run (``engine.runtime.pending_files``).

A thread, not an encoder process as for the other video hand-offs: the encode is
already in a process (ffmpeg's), and the thread only writes bytes into its pipe, with the
GIL released. It ends with the job: when the job's time is up or it is cancelled, the
ffmpeg it started is killed (VHS's own ``subprocess`` is a recorder in that thread's
copy of ``ffmpeg_process``) and the file is reported as not written.

Two more names differ in that copy. ``folder_paths``: VHS writes the prompt for ffmpeg
into one file, ``<temp>/metadata.txt``, which ffmpeg reads when it starts; with encodes
that overlap the next node's (or job's) own, each handed-off encode has a folder of its
own for it. ``subprocess``: the recorder above.

Every other call runs VHS's own ``combine_video`` as it is: a lone job; a process with
fewer than :data:`MIN_CPUS` CPUs (measured slower there); audio to mux (VHS
reads the finished video back right after); a ``meta_batch`` (its generator lives across
runs); Pillow's ``image/*`` formats; a node whose ``Filenames`` output another node of the
run takes (it may read or delete the files: ``fast_save.outputs_read``). Inside a
handed-off call the stand-in runs VHS's own generator in the node when VHS's counter has
nothing on disk yet for the video's number (``VHS_MetadataImage`` off: no first-frame
PNG, and ffmpeg's ``-n`` refuses a name taken beforehand) or the file is a numbered
sequence (``%03d``). gifski's formats never call ``ffmpeg_process``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.runtime import fast_save
from engine.runtime.rebound import with_global

if TYPE_CHECKING:
    from engine.deadline import Deadline
    from engine.runtime.pending_files import PendingFiles

NODE = "VHS_VideoCombine"
"""The node type whose ``combine_video`` the ``deferred_vhs`` patch wraps."""

QUEUE_BYTES = 256 * 1024 * 1024
"""Frames waiting for ffmpeg at most (bytes), or :data:`QUEUE_FRAMES` frames if more: 81
frames of 832x480 (97 MB) all wait there, 1000 frames of 1920x1080 (6.2 GB) do not."""
QUEUE_FRAMES = 4

MIN_CPUS = 8
"""The CPUs this process may use below which VHS's encode stays in the node. VHS already
runs ffmpeg beside its conversion of the frames, and x264 takes every core it finds; the
hand-off moves only ffmpeg's last part out, which pays when it runs on cores the next
job's conversion does not need. On 2 cores it lost (0.84x and 0.95x the jobs per minute,
docs/benchmarks.md); a host with many cores beside its GPU was not measured."""


def install(node_class: Any) -> bool:
    """Wrap ``node_class.combine_video`` (VHS's ``VideoCombine``) to hand its encode off
    during a worker's run; whether it did (not when already wrapped)."""
    original = node_class.combine_video
    if getattr(original, "_deferred_vhs", False):
        return False
    node_class.combine_video = _deferring(original)
    return True


def _deferring(original: Any) -> Callable[..., Any]:
    @functools.wraps(original)
    def combine_video(self: Any, *args: Any, **kwargs: Any) -> Any:
        pending, deadline = fast_save.handed_off()
        if pending is None or args or not _can_hand_off(kwargs):
            return original(self, *args, **kwargs)
        # Looked up at each call: VHS's generator as its module has it now.
        stand_in = _StandIn(original.__globals__["ffmpeg_process"], pending, deadline)
        try:
            return with_global(original, "ffmpeg_process", stand_in.ffmpeg_process)(self, **kwargs)
        except BaseException:
            stand_in.abort()  # the node failed part-way: its encode ends with it
            raise

    combine_video._deferred_vhs = True  # type: ignore[attr-defined]
    return combine_video


def _can_hand_off(kwargs: dict[str, Any]) -> bool:
    """Whether VHS's own call may hand its encode off (ComfyUI passes every input by name)."""
    return (
        _usable_cpus() >= MIN_CPUS
        and kwargs.get("audio") is None
        and kwargs.get("meta_batch") is None
        and str(kwargs.get("format", "")).startswith("video/")
        and not fast_save.outputs_read(kwargs.get("unique_id"))
    )


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; a cgroup quota is not seen)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _StandIn:
    """``ffmpeg_process`` inside one handed-off ``combine_video`` call."""

    def __init__(
        self, real: Callable[..., Any], pending: PendingFiles, deadline: Deadline | None
    ) -> None:
        self._real = real
        self._pending = pending
        self._deadline = deadline
        self._encodes: list[Encode] = []

    def ffmpeg_process(
        self, args: Any, video_format: Any, video_metadata: Any, file_path: Any, env: Any
    ) -> Generator[Any, Any, Any]:
        call = (args, video_format, video_metadata, file_path, env)
        path = Path(file_path)
        if "%" in path.name or not path.with_suffix(".png").exists():
            # Nothing holds the video's number on disk (VHS_MetadataImage off), or a
            # numbered sequence: VHS's own generator, in the node.
            return (yield from self._real(*call))
        encode = Encode(self._real, call, self._deadline)
        self._encodes.append(encode)
        sent = 0
        frame = yield
        while frame is not None:
            encode.put(frame)
            sent += 1
            frame = yield
        encode.finish()
        self._pending.add(path, encode.done)
        # VHS's generator answers the frames it wrote (all it was sent); only its audio
        # mux reads the number, and no call with audio comes here.
        yield sent

    def abort(self) -> None:
        for encode in self._encodes:
            encode.stop(_NodeFailed("the node failed before it sent every frame"))


class _NodeFailed(Exception):
    """VHS's node raised while its frames were being sent: its encode is ended."""


class Encode:
    """VHS's own ``ffmpeg_process`` (``function``, called with ``call``) on a thread of its
    own, fed from a bounded queue. :attr:`done` ends when the generator has ended (ffmpeg
    has written the file), with its error if it raised, or with the job's timeout or
    cancel error if the job had to stop first (its ffmpeg is then killed).
    """

    def __init__(
        self,
        function: Callable[..., Generator[Any, Any, Any]],
        call: tuple[Any, ...],
        deadline: Deadline | None = None,
        queue_bytes: int | None = None,
    ) -> None:
        self.done: Future[None] = Future()
        self._function = function
        self._call = call
        self._deadline = deadline
        self._queue_bytes = QUEUE_BYTES if queue_bytes is None else queue_bytes
        self._changed = threading.Condition()
        self._frames: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._finished = False
        self._stopped: BaseException | None = None
        self._failed: BaseException | None = None
        self._processes: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="vhs-encode", daemon=True)
        self._thread.start()

    # -- the node's side (the engine thread) -------------------------------------------

    def put(self, frame: bytes) -> None:
        """Queue one frame; waits while the queue is full. Raises what ended the encode
        (ffmpeg's error, the job's timeout or cancel) if it ended before its last frame."""
        bound = max(self._queue_bytes, QUEUE_FRAMES * len(frame))
        with self._changed:
            while (
                self._queued
                and self._queued + len(frame) > bound
                and self._failed is None
                and self._stopped is None
            ):
                self._changed.wait()
            error = self._failed or self._stopped
            if error is not None:
                raise error
            self._frames.append(frame)
            self._queued += len(frame)
            self._changed.notify_all()

    def finish(self) -> None:
        """No more frames: the thread closes ffmpeg's input once it has written them."""
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def stop(self, why: BaseException) -> None:
        """End the encode now: its ffmpeg is killed, :attr:`done` gets ``why``. Nothing
        when it has ended already."""
        with self._changed:
            if self.done.done() or self._stopped is not None:
                return
            self._stopped = why
            processes = list(self._processes)
            self._changed.notify_all()
        for process in processes:
            with contextlib.suppress(OSError):
                process.kill()

    # -- the thread's side -------------------------------------------------------------

    def _take(self) -> bytes | None:
        with self._changed:
            while not self._frames and not self._finished and self._stopped is None:
                self._changed.wait()
            if self._stopped is not None:
                raise self._stopped
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._queued -= len(frame)
            self._changed.notify_all()
            return frame

    def _popen(self, popen: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._changed:
            if self._stopped is not None:  # VHS's second try without metadata, say
                raise self._stopped
            process = popen(*args, **kwargs)
            self._processes.append(process)
            return process

    def _run(self) -> None:
        folder = tempfile.mkdtemp(prefix="vhs-encode-")
        error: BaseException | None = None
        try:
            with self._watch():
                self._encode(folder)
                with self._changed:
                    if self._stopped is not None:  # killed after its last write
                        raise self._stopped
        except BaseException as exc:  # handed to whoever waits for the file
            with self._changed:
                # Stopped: ffmpeg's broken pipe says less than why it was killed.
                error = self._failed = self._stopped or exc
                processes = list(self._processes)
                self._changed.notify_all()
            for process in processes:
                with contextlib.suppress(OSError):
                    process.kill()
        # Gone before anyone hears the file is done: nothing of it outlives the job.
        shutil.rmtree(folder, ignore_errors=True)
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)

    def _encode(self, folder: str) -> None:
        function: Any = self._function
        names = function.__globals__
        # VHS's function, with its process recorded and its metadata file in a folder
        # of its own (the module docstring says why).
        if "subprocess" in names:
            recorder = _Subprocess(names["subprocess"], self._popen)
            function = with_global(function, "subprocess", recorder)
        if "folder_paths" in names:
            function = with_global(function, "folder_paths", _Temp(names["folder_paths"], folder))
        generator = function(*self._call)
        generator.send(None)
        try:
            while (frame := self._take()) is not None:
                generator.send(frame)
            generator.send(None)  # closes ffmpeg's input, waits for it: the frames written
            with contextlib.suppress(StopIteration):
                generator.send(None)  # VHS prints what ffmpeg said
        finally:
            generator.close()

    @contextlib.contextmanager
    def _watch(self) -> Iterator[None]:
        """Stop the encode when the job's time is up or it is cancelled."""
        deadline = self._deadline
        if deadline is None:
            yield
            return

        def end() -> None:
            self.stop(deadline.exceeded("while writing output videos"))

        remaining = deadline.remaining()
        timer = threading.Timer(remaining, end) if remaining is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            with deadline.on_cancel(end):
                yield
        finally:
            if timer is not None:
                timer.cancel()


class _Subprocess:
    """``subprocess`` in an encode's copy of ``ffmpeg_process``: ``Popen`` is recorded (to
    be killed), every other name is the module's."""

    def __init__(self, module: Any, popen: Callable[..., Any]) -> None:
        self._module = module
        self._popen = popen

    def Popen(self, *args: Any, **kwargs: Any) -> Any:  # subprocess's name
        return self._popen(self._module.Popen, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class _Temp:
    """``folder_paths`` in an encode's copy of ``ffmpeg_process``: its temp folder is the
    encode's own; every other name is ComfyUI's."""

    def __init__(self, folder_paths: Any, folder: str) -> None:
        self._folder_paths = folder_paths
        self._folder = folder

    def get_temp_directory(self) -> str:
        return self._folder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._folder_paths, name)
