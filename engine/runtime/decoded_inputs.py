"""LoadImage takes the input image the worker already decoded, instead of decoding it again.

The worker decodes every input image to refuse a corrupt one (``engine.inputs``), and
ComfyUI's ``LoadImage`` then opened and decoded the same file once more: ~4.7 ms of a
512x512 job on the benchmark machine (docs/benchmarks.md). Now the input step offers
its decoded image here, keyed by the stored file's identity (device, inode, size and
mtime in ns: it survives the move into the job's input folder, and a file changed since
matches no more). During ``LoadImage.load_image``, and only then, the ``Image`` name it
looks up in ``nodes`` points at a stand-in whose ``open`` of such a file hands that
image over, once; any other file, or a second open, is read from disk as before. The
same decoder ran on the same bytes, so LoadImage sees the same pixels. What a job did
not take is dropped when it ends (:meth:`DecodedImages.clear`).

Only still images of the formats whose opened file LoadImage walks the same way loaded
or not (PNG, JPEG, WebP with one frame) are offered; everything else is opened from
disk, as before.

The input step also hashed each file's bytes while it held them: the SHA-256 is kept
for the job by the same key, and read by the worker (the job's input folder is named by
it, ``engine.job_files``) and by LoadImage's ``IS_CHANGED``, which would otherwise read
the file back and hash it again (its cache key: the same hex digest either way).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.runtime import fast_save

# Pillow formats offered, when the image has one frame.
_STILL_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# Decoded images held at once, in pixels: a job of many large inputs keeps the rest to
# be decoded from disk rather than holding them all in memory until they are loaded.
_MAX_HELD_PIXELS = 32 * 1024 * 1024

_Key = tuple[int, int, int, int]


def _key(path: str | os.PathLike[str]) -> _Key | None:
    try:
        st = Path(path).stat()
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class DecodedImages:
    """Decoded input images waiting for their LoadImage, by the identity of their file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: dict[_Key, Any] = {}
        self._digests: dict[_Key, str] = {}
        self._pixels = 0
        self.enabled = False
        """Set by :func:`install`: without a LoadImage to take them, nothing is held."""

    def offer(self, path: Path, image: Any | None, content: bytes) -> bool:
        """Note the SHA-256 of ``content``, the bytes just written to ``path``, and hold
        ``image``, those bytes decoded, for one open of ``path``. Whether the image is
        held (else the caller closes it). Without a LoadImage to take them (not
        installed), nothing is hashed or held: the job's input folder is named from the
        files then, as before."""
        if not self.enabled:
            return False
        key = _key(path)
        if key is None:
            return False
        sha256 = hashlib.sha256(content).hexdigest()
        with self._lock:
            self._digests[key] = sha256
        if image is None:
            return False
        if image.format not in _STILL_FORMATS or getattr(image, "n_frames", 1) != 1:
            return False
        pixels = image.width * image.height
        with self._lock:
            if self._pixels + pixels > _MAX_HELD_PIXELS:
                return False
            previous = self._images.pop(key, None)
            if previous is not None:
                self._pixels -= previous.width * previous.height
            self._images[key] = image
            self._pixels += pixels
        return True

    def take(self, path: str | os.PathLike[str]) -> Any | None:
        """The image held for ``path`` as it is now, once; None when there is none."""
        with self._lock:
            if not self._images:  # the common case for every other open: no stat
                return None
        key = _key(path)
        with self._lock:
            image = self._images.pop(key, None) if key is not None else None
            if image is not None:
                self._pixels -= image.width * image.height
        return image

    def digest(self, path: str | os.PathLike[str]) -> str | None:
        """The SHA-256 (hex) of the file at ``path`` as the input step wrote it, if it
        wrote it this job and it has not changed since; None otherwise."""
        with self._lock:
            if not self._digests:
                return None
        key = _key(path)
        with self._lock:
            return self._digests.get(key) if key is not None else None

    def forget(self, paths: Iterable[Path]) -> None:
        """Drop what is held for ``paths`` (files about to be removed): one job's, while
        other jobs' stay for their LoadImage."""
        with self._lock:
            if not self._images and not self._digests:
                return
        for path in paths:
            key = _key(path)
            if key is None:
                continue
            with self._lock:
                image = self._images.pop(key, None)
                if image is not None:
                    self._pixels -= image.width * image.height
                self._digests.pop(key, None)

    def clear(self) -> None:
        """Drop every held image and digest (a job ended)."""
        with self._lock:
            self._images.clear()
            self._digests.clear()
            self._pixels = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)


HANDOFF = DecodedImages()
"""The worker's one handoff: filled by the input step, emptied by LoadImage and job ends."""


class _HandingPil:
    """``PIL.Image`` as LoadImage sees it during one call: ``open`` looks here first."""

    def __init__(self, pil_image: Any, handoff: DecodedImages) -> None:
        self._pil, self._handoff = pil_image, handoff

    def open(self, fp: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs and isinstance(fp, (str, os.PathLike)):
            image = self._handoff.take(fp)
            if image is not None:
                return image
        return self._pil.open(fp, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pil, name)


# One patched call at a time swaps ``nodes.Image``; jobs run one at a time anyway.
_swap_lock = threading.Lock()


def install(nodes: Any, handoff: DecodedImages = HANDOFF) -> bool:
    """Make ``nodes.LoadImage.load_image`` take images from ``handoff``; whether it did.

    Does nothing when already installed, or when ComfyUI's ``nodes`` no longer looks
    up ``Image.open`` the way this relies on (then the original stays).
    """
    load_image_class: Any = getattr(nodes, "LoadImage", None)
    original = getattr(load_image_class, "load_image", None)
    if original is None or getattr(original, "_decoded_inputs", False):
        return False
    if getattr(getattr(nodes, "Image", None), "open", None) is None:
        return False
    load_image_class.load_image = _taking(nodes, original, handoff)
    is_changed = getattr(load_image_class, "IS_CHANGED", None)
    folder_paths = getattr(nodes, "folder_paths", None)
    if is_changed is not None and hasattr(folder_paths, "get_annotated_filepath"):
        load_image_class.IS_CHANGED = classmethod(_hashed(folder_paths, is_changed, handoff))
    handoff.enabled = True
    return True


def _taking(nodes: Any, original: Callable[..., Any], handoff: DecodedImages) -> Callable[..., Any]:
    @functools.wraps(original)
    def load_image(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A file this run saved may still be being written (fast_save.saves_into).
        fast_save.wait_for_saves()
        if not len(handoff):
            return original(self, *args, **kwargs)
        with _swap_lock:
            pil_image = nodes.Image
            nodes.Image = _HandingPil(pil_image, handoff)
            try:
                return original(self, *args, **kwargs)
            finally:
                nodes.Image = pil_image

    load_image._decoded_inputs = True  # type: ignore[attr-defined]
    return load_image


def _hashed(
    folder_paths: Any, original: Callable[..., Any], handoff: DecodedImages
) -> Callable[..., Any]:
    """LoadImage's ``IS_CHANGED``, answered from the input step's digest when it has one.

    ComfyUI's reads the file and returns the hex SHA-256 of its bytes: the same string.
    ``original`` is the bound classmethod; anything unusual goes to it.
    """

    @functools.wraps(original)
    def is_changed(cls: Any, *args: Any, **kwargs: Any) -> Any:
        image = kwargs.get("image", args[0] if len(args) == 1 and not kwargs else None)
        if isinstance(image, str):
            found = handoff.digest(folder_paths.get_annotated_filepath(image))
            if found is not None:
                return found
        return original(*args, **kwargs)

    return is_changed
