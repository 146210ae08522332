"""SaveAnimatedWEBP's and SaveAnimatedPNG's Pillow encode handed off during a worker's run:
the file is written in an encoder process while the engine goes on (the
``deferred_animated`` patch).

ComfyUI 0.3.64's two nodes (``comfy_extras/nodes_images.py``) turn each frame into a
Pillow image and write them all with one ``save(path, save_all=True, append_images=...)``
on the engine thread: WEBP at the method and quality asked (lossless by default), APNG at
its ``compress_level``. For a Wan 2.1 video (81 frames of 832x480; ComfyUI's own Wan 2.1
templates end in SaveAnimatedWEBP) that is seconds the GPU sits idle while the next job
waits (docs/benchmarks.md). While a worker's run hands its files off
(``fast_save.saves_into``: another job is in flight), the wrapped ``save_images`` runs
ComfyUI's own code with one name changed for that one call: ``Image`` (``PIL.Image``) is
a stand-in whose ``fromarray`` returns ComfyUI's own Pillow image, wrapped. When the
wrapped first frame's ``save`` names a file under the output folder, the file's name is
taken on disk (an empty file, so ComfyUI's counter never gives it again) and the call,
with its frames and arguments (the metadata ComfyUI built: WEBP exif, APNG ``comf``
chunks, none with ``OUTPUT_METADATA=false``), goes to an encoder process that makes the
same ``save`` call: same Pillow, same arguments, same bytes. The node returns ComfyUI's
own ui result; the job waits for the file after the run
(``engine.runtime.pending_files``), within its deadline and cancel.

Nothing of ComfyUI's is redone: file names, counter, metadata, the frames' conversion
(its own, one frame at a time, so no float temporary of the whole video) and the ui
result are its code's. The stand-in lives in the globals of a copy of ``save_images``
made for that call (``rebound.with_global``), not in the module: no other thread and no
other node of the file sees it.

Every other call runs ComfyUI's own ``save_images`` as it is: a lone job (no hand-off: a
process would only add the frames' copy to its time), and, inside a handed-off call, a
save not to a path under the output folder or with frames that are not the node's own.
The encoder processes are the video hand-off's (``video_save.submit``), one pool.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.runtime import fast_save, video_save
from engine.runtime.rebound import with_global

if TYPE_CHECKING:
    from engine.deadline import Deadline
    from engine.runtime.pending_files import PendingFiles

NODES = ("SaveAnimatedWEBP", "SaveAnimatedPNG")
"""The node types whose ``save_images`` the ``deferred_animated`` patch wraps."""


class AnimatedFile:
    """One ``save`` call of a whole animation as picklable data: the first frame's Pillow
    image, the call's other arguments (``append_images``: the other frames' images).
    Sent to an encoder process, which imports this module to unpickle it."""

    def __init__(self, first: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.first = first
        self.args = args
        self.kwargs = kwargs

    @property
    def size(self) -> tuple[int, int]:
        """The pixels of every frame, as one image's (width, height): what the encoder
        pool's answer bound counts (``png_encoders.answer_bound_s``)."""
        width, height = self.first.size
        return width, height * (1 + len(self.kwargs.get("append_images") or ()))

    def save(self, path: str) -> None:
        """Write the file at ``path`` with the call ComfyUI's node made."""
        self.first.save(path, *self.args, **self.kwargs)


def install(node_class: Any, output_directory: Callable[[], str]) -> bool:
    """Wrap ``node_class.save_images`` (SaveAnimatedWEBP's or SaveAnimatedPNG's) to hand its
    encode off during a worker's run; whether it did (not when already wrapped).
    ``output_directory``: ComfyUI's ``folder_paths.get_output_directory``."""
    original = node_class.save_images
    if getattr(original, "_deferred_animated", False):
        return False
    node_class.save_images = _deferring(original, output_directory)
    return True


def _deferring(original: Any, output_directory: Callable[[], str]) -> Callable[..., Any]:
    @functools.wraps(original)
    def save_images(self: Any, *args: Any, **kwargs: Any) -> Any:
        pending, deadline = fast_save.handed_off()
        if pending is None:
            return original(self, *args, **kwargs)
        pil = _HandingOffPil(
            original.__globals__["Image"], _HandOff(pending, deadline, output_directory)
        )
        return with_global(original, "Image", pil)(self, *args, **kwargs)

    save_images._deferred_animated = True  # type: ignore[attr-defined]
    return save_images


class _HandOff:
    """Where one handed-off call's files go: the run's pending files, the job's deadline."""

    def __init__(
        self,
        pending: PendingFiles,
        deadline: Deadline | None,
        output_directory: Callable[[], str],
    ) -> None:
        self.pending = pending
        self.deadline = deadline
        self.output_directory = output_directory


class _HandingOffPil:
    """Stands in for ``PIL.Image`` inside one ``save_images`` call: ``fromarray`` wraps the
    image it makes; every other name is Pillow's."""

    def __init__(self, pil: Any, hand_off: _HandOff) -> None:
        self._pil = pil
        self._hand_off = hand_off

    def fromarray(self, *args: Any, **kwargs: Any) -> _Frame:
        return _Frame(self._pil.fromarray(*args, **kwargs), self._hand_off)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pil, name)


class _Frame:
    """ComfyUI's Pillow image of one frame, whose ``save`` of a file under the output folder
    goes to an encoder process; every other attribute is the image's."""

    def __init__(self, image: Any, hand_off: _HandOff) -> None:
        self.image = image
        self._hand_off = hand_off

    def save(self, fp: Any, *args: Any, **kwargs: Any) -> None:
        rest = kwargs.get("append_images")
        frames = list(rest) if rest is not None else []
        own = all(isinstance(frame, _Frame) for frame in frames)
        if rest is not None:
            kwargs = {**kwargs, "append_images": [_image(frame) for frame in frames]}
        hand_off = self._hand_off
        target = video_save.output_path(fp, hand_off.output_directory)
        if target is None or not own:
            self.image.save(fp, *args, **kwargs)
            return
        target.touch()  # the name is taken now, the bytes come later
        encoded = AnimatedFile(self.image, args, kwargs)
        hand_off.pending.add(target, video_save.submit(encoded, str(target), hand_off.deadline))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.image, name)


def _image(frame: Any) -> Any:
    return frame.image if isinstance(frame, _Frame) else frame
