"""SaveImage (and PreviewImage) write a batch's PNGs side by side, by the fast writer or Pillow.

ComfyUI's ``SaveImage.save_images`` encodes a batch's images one after the other, each
with Pillow at ``compress_level`` 4: on 2 CPU cores one 1024x1024 PNG took 235 ms, four
of them most of a 4-image job (docs/benchmarks.md). Two ways out, chosen by
``PNG_ENCODER`` (:func:`configure`):

- ``fast`` (the default): ``engine.png_writer`` writes the file (same pixels, same
  metadata chunks, other compressed bytes) in 1/15 of the time, on a thread: its
  deflate releases the GIL, so a batch's images are written side by side. A save it does
  not handle the way Pillow would (another mode, an ``info`` to carry, another keyword)
  goes to Pillow as below.
- ``pillow``: each ``Image.save`` of a batch runs in a small encoder process
  (:class:`EncoderPool`): the same Pillow, the same call, the same arguments, so the same
  bytes. Pillow's PNG encoder holds the GIL while it filters and compresses (measured:
  four encodes on four threads take as long as one after the other), so threads alone
  gain nothing there. A thread per image waits on its process with the GIL released.

Nothing of ComfyUI's logic is redone: its own ``save_images`` runs unchanged (file
names, counter, metadata, ``compress_level``, the ui result), with the ``Image`` name
it looks up in ``nodes`` pointing, for that call only, at a stand-in whose images
hand ``save`` to a writer. The call returns once every file is written; an encoder
error is raised from it as before. When an encoder process cannot be started, dies,
or answers something that is not an answer, that image is saved in this process instead
(logged): slower, same bytes, and never a failed job. A process that stops answering
(frozen, not dead) is ended when its answer is overdue (:func:`answer_bound_s`, far
beyond any encode) and the image saved here the same way; when the job's time is up or it
is cancelled first, it is ended then and the save fails with the job's own error, so a
frozen helper never holds a job or the worker. A dead, broken or frozen process is ended
and left out of the pool, which starts a fresh one for the next image that needs one.
Real-engine tests compare the files with ComfyUI's own (bytes for ``pillow``, pixels and
metadata for ``fast``).

During a worker's run (:func:`saves_into`) the node does not wait at all: every image,
a batch or one, is handed to a writer, its file name taken on disk at once, and the
node returns; the engine runs the next node, or the next job, while the job waits for
its files after the run (``engine.runtime.pending_files``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # this file also runs alone, as the encoder process, without engine/
    from engine.deadline import Deadline
    from engine.runtime.pending_files import PendingFiles

ENCODERS = ("fast", "pillow")
"""``PNG_ENCODER``'s values: ``engine.png_writer``, or Pillow in encoder processes."""

log = logging.getLogger(__name__)

# Beyond the batch sizes seen in practice (1-8) more processes only cost memory: each
# holds Pillow (~30 MB) and one image's buffers.
_MAX_PROCESSES = 8
_HEADER = struct.Struct("!Q")


# An encoder process's answer is overdue after this long, plus this much per megapixel of
# the image: Pillow encodes a megapixel in about 0.25 s on 2 CPU cores at ComfyUI's level 4
# (docs/benchmarks.md), so 10 s per megapixel is 40 times that; only a process that has
# stopped (a SIGSTOP, a deadlock) waits that long.
_ANSWER_BASE_S = 10.0
_ANSWER_S_PER_MEGAPIXEL = 10.0


def answer_bound_s(image: Any) -> float:
    """How long an encoder process may take to answer for ``image`` before it is ended."""
    size = getattr(image, "size", None)
    pixels = size[0] * size[1] if isinstance(size, tuple) and len(size) == 2 else 0
    return _ANSWER_BASE_S + _ANSWER_S_PER_MEGAPIXEL * pixels / 1e6


class _TransportError(Exception):
    """An encoder process could not be reached: the image is saved here instead."""


class _Overdue(_TransportError):
    """An encoder process did not answer in time (or the job had to stop): it was ended."""


class _Encoder:
    """One encoder process: a pickled ``(image, args, kwargs)`` in, ``None`` or the error out."""

    def __init__(self) -> None:
        # -P: the script's own folder (engine/runtime) stays off sys.path.
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve()), "--encoder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            close_fds=True,
        )

    def alive(self) -> bool:
        """Whether the process still runs (one killed while idle is found here)."""
        return self.process.poll() is None

    def save(
        self,
        image: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline | None = None,
    ) -> None:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        bound = answer_bound_s(image)
        remaining = deadline.remaining() if deadline is not None else None
        wait_s = bound if remaining is None else min(bound, remaining)
        ended = threading.Event()

        def end() -> None:
            # SIGKILL ends a stopped process too; its pipes close, so the send or the
            # read that waits on it returns (EOF, EPIPE) on the saving thread.
            ended.set()
            with contextlib.suppress(OSError):
                self.process.kill()

        timer = threading.Timer(wait_s, end)
        timer.daemon = True
        timer.start()
        stop = deadline.on_cancel(end) if deadline is not None else contextlib.nullcontext()
        try:
            with stop:
                _send(stdin, (image, args, kwargs))
                error = _receive(stdout)
        except Exception as exc:
            if ended.is_set():
                raise _Overdue(
                    f"no answer within {wait_s:.1f} s; process {self.process.pid} ended"
                ) from exc
            # A dead process (BrokenPipeError, EOF) or a broken one (bytes that do not
            # unpickle, or unpickle to anything at all): not the image's fault.
            raise _TransportError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            timer.cancel()
        if error is None:
            return
        if not isinstance(error, BaseException):
            raise _TransportError(f"the encoder process answered {type(error).__name__}")
        raise error

    def close(self) -> None:
        """End the process: let it finish its loop, or kill it after 5 s."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:  # its end of the pipe is gone (BrokenPipeError on the flush)
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """End a process that is dead or broken at once; never raises."""
        with contextlib.suppress(OSError):
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class EncoderPool:
    """Encoder processes started on first use, reused for the life of the worker."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="png-encode")
        self._idle: list[_Encoder] = []
        self._lock = threading.Lock()
        self._warned = False

    def submit(
        self,
        image: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline | None = None,
    ) -> Future[None]:
        """Save ``image`` (``image.save(*args, **kwargs)``) in an encoder process; its wait
        for the process ends with ``deadline`` (the job's limit and cancel)."""
        return self._threads.submit(self._save, image, args, kwargs, deadline)

    def _save(
        self,
        image: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline | None = None,
    ) -> None:
        try:
            encoder = self._take()
        except OSError as exc:
            self._fallback(exc)
            image.save(*args, **kwargs)
            return
        try:
            encoder.save(image, args, kwargs, deadline)
        except _TransportError as exc:
            # Left out of the pool: the next image that needs a process gets a new one.
            encoder.kill()
            if deadline is not None and deadline.expired():
                raise deadline.exceeded("while writing output PNGs") from exc
            if isinstance(exc, _Overdue):  # rare and worth its line each time
                log.warning("PNG encoder process stopped answering (%s); saving here", exc)
            else:
                self._fallback(exc)
            image.save(*args, **kwargs)
            return
        except BaseException:
            self._give_back(encoder)
            raise
        self._give_back(encoder)

    def _take(self) -> _Encoder:
        """An idle encoder that still runs, or a new one; dead ones are dropped here."""
        while True:
            with self._lock:
                if not self._idle:
                    break
                encoder = self._idle.pop()
            if encoder.alive():
                return encoder
            log.warning(
                "PNG encoder process %d ended (exit code %s); starting a new one",
                encoder.process.pid,
                encoder.process.returncode,
            )
            encoder.kill()
        return _Encoder()

    def _give_back(self, encoder: _Encoder) -> None:
        with self._lock:
            self._idle.append(encoder)

    def _fallback(self, exc: BaseException) -> None:
        # Said once at WARNING (a host that cannot start processes would say it per
        # image), then at DEBUG.
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "PNG encoder process unavailable (%s); saving in the worker itself", exc)

    def close(self) -> None:
        """End every encoder process (they also end on their own when the worker exits)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for encoder in idle:
            encoder.close()
        self._threads.shutdown(wait=False)


_pool: EncoderPool | None = None
_pool_lock = threading.Lock()
_fast = True  # PNG_ENCODER=fast (configure)
_writers: FastWriter | None = None
# One patched call at a time swaps ``nodes.Image``; jobs run one at a time anyway.
_swap_lock = threading.Lock()


def _shared_pool() -> EncoderPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = EncoderPool(max(2, min(_MAX_PROCESSES, os.cpu_count() or 2)))
        return _pool


def configure(encoder: str) -> None:
    """Choose the PNG writer, ``fast`` or ``pillow`` (``PNG_ENCODER``), before jobs run."""
    global _fast
    if encoder not in ENCODERS:
        raise ValueError(f"PNG encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    _fast = encoder == "fast"
    if _fast:
        from engine import png_writer

        if png_writer.DEFLATE != "isal":
            log.warning("the isal package is not installed: PNGs are deflated by zlib, slower")


class FastWriter:
    """Threads that write PNGs with ``engine.png_writer``: its deflate releases the GIL, so
    a batch's images are written side by side."""

    def __init__(self, size: int) -> None:
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="png-write")

    def submit(
        self,
        image: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline | None = None,
    ) -> Future[None]:
        """Write ``image`` as ``image.save(*args, **kwargs)`` would (a :func:`writable` call).
        In this process, on a thread: nothing to wait for but the write (``deadline``
        unused)."""
        del deadline
        return self._threads.submit(_write_fast, image, args, kwargs)


def _shared_fast() -> FastWriter:
    global _writers
    with _pool_lock:
        if _writers is None:
            _writers = FastWriter(max(2, min(_MAX_PROCESSES, os.cpu_count() or 2)))
        return _writers


def _fast_writable(image: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if not _fast:
        return False
    # Imported here: this file also runs alone as the encoder process, without engine/.
    from engine import png_writer

    return png_writer.writable(image, args, kwargs)


def _write_fast(image: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    from engine import png_writer

    png_writer.save(image, args[0], **kwargs)


# The run on this thread whose saves are handed off, not waited for (:func:`saves_into`).
_handing_off = threading.local()


@contextlib.contextmanager
def saves_into(pending: PendingFiles | None, deadline: Deadline | None = None) -> Iterator[None]:
    """While the block runs on this thread (the engine's, during a job's run), SaveImage
    hands every image, one or many, to the encoder processes and returns at once; the
    files land in ``pending``, which the worker waits for after the run. Each file's name
    is taken on disk first (an empty file), so the next save's counter skips it; a
    LoadImage in the same run waits for them (:func:`wait_for_saves`). ``None``: saves
    are waited for in the node, as without this. ``deadline`` (the job's) ends every wait
    for an encoder process, in the node or after it."""
    previous = getattr(_handing_off, "pending", None), getattr(_handing_off, "deadline", None)
    _handing_off.pending, _handing_off.deadline = pending, deadline
    try:
        yield
    finally:
        _handing_off.pending, _handing_off.deadline = previous


def wait_for_saves() -> None:
    """Wait for the files this thread's run handed off (a node about to read one back)."""
    pending: PendingFiles | None = getattr(_handing_off, "pending", None)
    if pending is not None and len(pending):
        pending.wait()


class _DeferredImage:
    """A Pillow image whose ``save`` goes to a writer; every other attribute is the image's."""

    def __init__(
        self,
        image: Any,
        pending: list[tuple[Path | None, Future[None]]],
        take_name: bool,
        inline: bool,
        deadline: Deadline | None = None,
    ) -> None:
        self._image = image
        self._pending = pending
        self._take_name = take_name
        self._inline = inline
        self._deadline = deadline

    def save(self, *args: Any, **kwargs: Any) -> None:
        fast = _fast_writable(self._image, args, kwargs)
        if fast and self._inline:
            # One image, waited for in the node: a thread would only add its hand-off.
            _write_fast(self._image, args, kwargs)
            return
        target = args[0] if args else kwargs.get("fp")
        path = Path(target) if isinstance(target, (str, os.PathLike)) else None
        if path is not None and self._take_name:
            path.touch()  # the name is taken now, the bytes come later
        if fast:
            written = _shared_fast().submit(self._image, args, kwargs)
        else:
            written = _shared_pool().submit(self._image, args, kwargs, self._deadline)
        self._pending.append((path, written))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._image, name)


class _DeferringPil:
    """Stands in for ``PIL.Image`` inside one ``save_images`` call."""

    def __init__(
        self,
        pil_image: Any,
        pending: list[tuple[Path | None, Future[None]]],
        take_name: bool,
        inline: bool,
        deadline: Deadline | None = None,
    ) -> None:
        self._pil = pil_image
        self._pending = pending
        self._take_name = take_name
        self._inline = inline
        self._deadline = deadline

    def fromarray(self, *args: Any, **kwargs: Any) -> _DeferredImage:
        image = self._pil.fromarray(*args, **kwargs)
        return _DeferredImage(image, self._pending, self._take_name, self._inline, self._deadline)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pil, name)


def install(nodes: Any) -> bool:
    """Make ``nodes.SaveImage.save_images`` write through the chosen writer, a batch in
    parallel; whether it did.

    Does nothing when already installed, or when ComfyUI's ``nodes`` no longer looks
    up ``Image.fromarray`` the way this relies on (then the original stays).
    """
    save_image: Any = getattr(nodes, "SaveImage", None)
    original = getattr(save_image, "save_images", None)
    if original is None or getattr(original, "_parallel_png", False):
        return False
    if getattr(getattr(nodes, "Image", None), "fromarray", None) is None:
        return False
    save_image.save_images = _parallel(nodes, original)
    return True


def _parallel(nodes: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def save_images(self: Any, images: Any, *args: Any, **kwargs: Any) -> Any:
        handed_off: PendingFiles | None = getattr(_handing_off, "pending", None)
        deadline: Deadline | None = getattr(_handing_off, "deadline", None)
        alone = len(images) < 2 and handed_off is None
        if alone and not _fast:
            return original(self, images, *args, **kwargs)
        pending: list[tuple[Path | None, Future[None]]] = []
        with _swap_lock:
            pil_image = nodes.Image
            nodes.Image = _DeferringPil(
                pil_image,
                pending,
                take_name=handed_off is not None,
                inline=alone,
                deadline=deadline,
            )
            try:
                result = original(self, images, *args, **kwargs)
            finally:
                nodes.Image = pil_image
                if handed_off is not None:
                    # The run goes on; the worker waits for these after it.
                    for path, written in pending:
                        if path is None:
                            written.result()  # nowhere to find it later: wait here
                        else:
                            handed_off.add(path, written)
                    pending = []
                # Otherwise every file is written (or failed) before the node returns.
                errors = [written.exception() for _, written in pending]
        for error in errors:
            if error is not None:
                raise error
        return result

    save_images._parallel_png = True  # type: ignore[attr-defined]
    return save_images


def _send(stream: IO[bytes], obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the encoder process closed its pipe")
    (size,) = _HEADER.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("the encoder process closed its pipe mid-message")
    # Only ever between the worker and the encoder processes it started, over their pipes.
    return pickle.loads(body)  # noqa: S301


def _encoder_main() -> int:
    """In an encoder process: save each image it is sent, until its input closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            image, args, kwargs = _receive(stdin)
        except EOFError:
            return 0
        try:
            image.save(*args, **kwargs)
            error: BaseException | None = None
        except Exception as exc:
            error = exc
        try:
            _send(stdout, error)
        except (pickle.PickleError, TypeError, AttributeError):
            _send(stdout, OSError(f"{type(error).__name__}: {error}"))


if __name__ == "__main__" and sys.argv[1:] == ["--encoder"]:
    sys.exit(_encoder_main())
