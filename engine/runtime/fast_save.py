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
  (:class:`~engine.runtime.png_encoders.EncoderPool`): the same Pillow, the same call,
  the same arguments, so the same bytes. Pillow's PNG encoder holds the GIL while it
  filters and compresses (measured: four encodes on four threads take as long as one
  after the other), so threads alone gain nothing there. A thread per image waits on its
  process with the GIL released.

Nothing of ComfyUI's logic is redone: its own ``save_images`` runs unchanged (file
names, counter, metadata, ``compress_level``, the ui result), with the ``Image`` name
it looks up in ``nodes`` pointing, for that call only, at a stand-in whose images
hand ``save`` to a writer. The call returns once every file is written; an encoder
error is raised from it as before. An encoder process that cannot be started, dies or
stops answering never fails the job (:mod:`engine.runtime.png_encoders` says how).
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
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.runtime.png_encoders import EncoderPool

if TYPE_CHECKING:
    from engine.deadline import Deadline
    from engine.runtime.pending_files import PendingFiles

ENCODERS = ("fast", "pillow")
"""``PNG_ENCODER``'s values: ``engine.png_writer``, or Pillow in encoder processes."""

log = logging.getLogger(__name__)

# Beyond the batch sizes seen in practice (1-8) more processes only cost memory: each
# holds Pillow (~30 MB) and one image's buffers.
_MAX_PROCESSES = 8

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
    # Imported when a save first needs it, not when the runtime imports this module.
    from engine import png_writer

    return png_writer.writable(image, args, kwargs)


def _write_fast(image: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    from engine import png_writer

    png_writer.save(image, args[0], **kwargs)


# The run on this thread whose saves are handed off, not waited for (:func:`saves_into`).
_handing_off = threading.local()


@contextlib.contextmanager
def saves_into(
    pending: PendingFiles | None,
    deadline: Deadline | None = None,
    prompt: dict[str, Any] | None = None,
) -> Iterator[None]:
    """While the block runs on this thread (the engine's, during a job's run), SaveImage
    hands every image, one or many, to the encoder processes and returns at once; the
    files land in ``pending``, which the worker waits for after the run. Each file's name
    is taken on disk first (an empty file), so the next save's counter skips it; a
    LoadImage in the same run waits for them (:func:`wait_for_saves`). ``None``: saves
    are waited for in the node, as without this. ``deadline`` (the job's) ends every wait
    for an encoder process, in the node or after it. ``prompt``: the one the run executes
    (:func:`outputs_read`)."""
    previous = (
        getattr(_handing_off, "pending", None),
        getattr(_handing_off, "deadline", None),
        getattr(_handing_off, "prompt", None),
    )
    _handing_off.pending, _handing_off.deadline, _handing_off.prompt = pending, deadline, prompt
    try:
        yield
    finally:
        _handing_off.pending, _handing_off.deadline, _handing_off.prompt = previous


def handed_off() -> tuple[PendingFiles | None, Deadline | None]:
    """Where this thread's run hands its files off, and the job's deadline (:func:`saves_into`);
    ``(None, None)`` outside such a run. Other save patches (``video_save``) hand off here too."""
    return getattr(_handing_off, "pending", None), getattr(_handing_off, "deadline", None)


def outputs_read(node_id: Any) -> bool:
    """Whether another node of this thread's run may take an output of node ``node_id``
    (a node that reads or deletes the files a save node names); True when it cannot be
    told: no prompt given, or a node the prompt does not hold (one a node expanded into)."""
    prompt: dict[str, Any] | None = getattr(_handing_off, "prompt", None)
    if prompt is None or node_id not in prompt:
        return True
    for other in prompt.values():
        inputs = other.get("inputs") if isinstance(other, dict) else None
        for value in (inputs or {}).values():
            # A link: [source node id, output index], as ComfyUI's API format writes it.
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id):
                return True
    return False


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
