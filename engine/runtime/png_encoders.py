"""Pillow's PNG encodes in helper processes (``PNG_ENCODER=pillow``): the pool of encoder
processes, the pipe protocol between the worker and each, and the process's own loop.

The pool and its processes save any picklable object that has a ``save`` method, the
way they save a Pillow image: :mod:`engine.runtime.video_save` sends SaveVideo's frames
(``engine.runtime.video_encode``) to a pool of its own.

:mod:`engine.runtime.fast_save` hands a batch's ``Image.save`` calls to the pool. When an
encoder process cannot be started, dies, or answers something that is not an answer, that
image is saved in this process instead (logged): slower, same bytes, and never a failed
job. A process that stops answering (frozen, not dead) is ended when its answer is overdue
(:func:`answer_bound_s`, far beyond any encode) and the image saved here the same way; when
the job's time is up or it is cancelled first, it is ended then and the save fails with
the job's own error, so a frozen helper never holds a job or the worker. A dead, broken or
frozen process is ended and left out of the pool, which starts a fresh one for the next
image that needs one.

This file also runs alone, as the encoder process (``--encoder [FOLDER ...]``), without the
engine package unless a pool names the folder that holds it (``importable``).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # this file also runs alone, as the encoder process, without engine/
    from engine.deadline import Deadline

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")


# An encoder process's answer is overdue after this long, plus this much per megapixel of
# the image: Pillow encodes a megapixel in about 0.25 s on 2 CPU cores at ComfyUI's level 4
# (docs/benchmarks.md), so 10 s per megapixel is 40 times that; only a process that has
# stopped (a SIGSTOP, a deadlock) waits that long.
_ANSWER_BASE_S = 10.0
_ANSWER_S_PER_MEGAPIXEL = 10.0


def answer_bound_s(image: Any) -> float:
    """How long an encoder process may take to answer for ``image`` before it is ended
    (a video's ``size`` counts the pixels of all its frames)."""
    size = getattr(image, "size", None)
    pixels = size[0] * size[1] if isinstance(size, tuple) and len(size) == 2 else 0
    return _ANSWER_BASE_S + _ANSWER_S_PER_MEGAPIXEL * pixels / 1e6


class _TransportError(Exception):
    """An encoder process could not be reached: the image is saved here instead."""


class _Overdue(_TransportError):
    """An encoder process did not answer in time (or the job had to stop): it was ended."""


class _Encoder:
    """One encoder process: a pickled ``(image, args, kwargs)`` in, ``None`` or the error out."""

    def __init__(self, importable: tuple[str, ...] = ()) -> None:
        # -P: the script's own folder (engine/runtime) stays off sys.path; ``importable``
        # goes first on it (where the objects sent are defined).
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve()), "--encoder", *importable],
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
    """Encoder processes started on first use, reused for the life of the worker.

    ``what`` names the files in log lines and errors (``PNG``, ``video``); ``importable``:
    folders the processes import the objects sent from (``engine``'s parent for a class
    of the engine package)."""

    def __init__(self, size: int, what: str = "PNG", importable: tuple[str, ...] = ()) -> None:
        self.size = size
        self.what = what
        self._importable = importable
        self._threads = ThreadPoolExecutor(
            max_workers=size, thread_name_prefix=f"{what.lower()}-encode"
        )
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
                raise deadline.exceeded(f"while writing output {self.what}s") from exc
            if isinstance(exc, _Overdue):  # rare and worth its line each time
                log.warning(
                    "%s encoder process stopped answering (%s); saving here", self.what, exc
                )
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
                "%s encoder process %d ended (exit code %s); starting a new one",
                self.what,
                encoder.process.pid,
                encoder.process.returncode,
            )
            encoder.kill()
        return _Encoder(self._importable)

    def _give_back(self, encoder: _Encoder) -> None:
        with self._lock:
            self._idle.append(encoder)

    def _fallback(self, exc: BaseException) -> None:
        # Said once at WARNING (a host that cannot start processes would say it per
        # image), then at DEBUG.
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(
            level,
            "%s encoder process unavailable (%s); saving in the worker itself",
            self.what,
            exc,
        )

    def close(self) -> None:
        """End every encoder process (they also end on their own when the worker exits)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for encoder in idle:
            encoder.close()
        self._threads.shutdown(wait=False)


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


if __name__ == "__main__" and sys.argv[1:2] == ["--encoder"]:
    sys.path[:0] = sys.argv[2:]
    sys.exit(_encoder_main())
