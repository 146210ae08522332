"""Input images: each request image becomes a verified file in ComfyUI's input directory.

A source is an ``http(s)://`` URL (downloaded by a :class:`Fetcher`, by default
:class:`engine.fetch.HttpFetcher`), a ``data:`` URI or bare base64. All images of a
request are fetched and decoded concurrently, each is checked by Pillow, and only
when every one is good are they moved into place: a request with one bad image
writes nothing and fails with :class:`InputImageError`, one detail per bad image.

Entries named like videos or audio (``.mp4``, ``.wav``...; see :mod:`engine.media`)
come the same three ways, under the same size limit, and are checked by decoding
them with PyAV instead of Pillow.

Each file is written under a short temporary name (``.in-<16 hex>.part``) in its
folder and renamed into place: a name of the full 255 bytes still fits.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from PIL import Image, UnidentifiedImageError

from engine.deadline import Deadline
from engine.errors import InputImageError, ItemError, WorkerError
from engine.fetch import HttpFetcher
from engine.media import media_kind, verify_media
from engine.request import InputImage
from engine.runtime import decoded_inputs
from engine.settings import Settings
from engine.urls import is_url, redact_url

T = TypeVar("T")

# HttpFetcher is re-exported: callers wire the store and its default fetcher from here.
__all__ = ["BoundedFetcher", "Fetcher", "HttpFetcher", "safe_input_path", "store_images"]

logger = logging.getLogger(__name__)

# Each worker thread holds at most one image (up to INPUT_MAX_IMAGE_MB) in memory:
# 8 x 50 MB bounds a request's peak, and 8 parallel downloads already fill a link.
_MAX_PARALLEL = 8
# What browsers and phone cameras produce. The allow-list keeps Pillow's rarer parsers
# off untrusted bytes, EPS above all (it runs Ghostscript).
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
_WHITESPACE = " \n\r\t\v\f"  # what str.split() removes from ASCII text
_MB = 1024 * 1024


class Fetcher(Protocol):
    """Downloads one URL; raises :class:`ItemError` (its ``reason`` is shown to the user)."""

    def fetch(self, url: str) -> bytes: ...


@runtime_checkable
class BoundedFetcher(Fetcher, Protocol):
    """A :class:`Fetcher` that also stops, within a read, when the job's deadline passes
    or the job is cancelled (raising the deadline's own error)."""

    def fetch_within(self, url: str, deadline: Deadline | None) -> bytes: ...


def safe_input_path(input_dir: Path, name: str) -> Path:
    """The file ``name`` under ``input_dir``; raises :class:`ItemError` if it could leave it."""
    return _safe_target(os.path.realpath(input_dir), name)


def _safe_target(base: str, name: str) -> Path:
    """:func:`safe_input_path` under ``base``, a folder's real path (no links in it)."""
    # ComfyUI on Windows writes sub-folders with backslashes; the workflow's names are
    # normalised to '/' (engine.workflow), so the file names must be too.
    posix = name.replace("\\", "/")
    if not name.strip():
        raise ItemError(name, "the name is empty")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise ItemError(name, "the name holds a control character (NUL, newline...)")
    if posix.startswith("/"):
        raise ItemError(name, "the name is an absolute path; use a relative one such as a.png")
    if _DRIVE.match(posix):
        raise ItemError(name, "the name starts with a drive letter; use a relative one")
    parts = posix.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise ItemError(
            name, "the name has an empty, '.' or '..' segment; use a plain path like masks/a.png"
        )
    if any(len(part.encode()) > 255 for part in parts):
        raise ItemError(name, "a segment of the name is longer than 255 bytes")
    # Symlinks that already exist are followed, so a linked sub-folder that points
    # elsewhere is caught here, not after the write. ``base`` is real and no part is '.'
    # or '..', so only links among the parts can lead elsewhere: one lstat per part, and
    # realpath only when one is a link. Strings, not Path.resolve and is_relative_to:
    # the same answer at a tenth of the cost.
    target = base
    for part in parts:
        target = os.path.join(target, part)  # noqa: PTH118  # see above
        if os.path.islink(target):  # noqa: PTH114
            target = os.path.realpath(os.path.join(base, *parts))  # noqa: PTH118
            break
    if not target.startswith(base.rstrip(os.sep) + os.sep):
        raise ItemError(name, "the name resolves outside the input directory (a symlink?)")
    return Path(target)


def store_images(
    images: Sequence[InputImage],
    input_dir: Path,
    settings: Settings,
    fetcher: Fetcher | None = None,
    deadline: Deadline | None = None,
) -> list[Path]:
    """Fetch, verify and write every image; returns the written paths, or writes none.

    ``deadline`` bounds the checks of videos and audio (their downloads are the
    fetcher's to bound): its passing or cancel raises its own error.
    """
    if not images:
        return []
    if len(images) > settings.input_max_images:
        reason = (
            f"{len(images)} images sent, at most {settings.input_max_images} are accepted "
            "per request (INPUT_MAX_IMAGES)"
        )
        raise InputImageError([ItemError("input.images", reason)])
    input_dir.mkdir(parents=True, exist_ok=True)
    base = os.path.realpath(input_dir)
    # Names are checked before anything is fetched: a request that fails anyway
    # makes no outbound requests.
    targets = _check_names(images, base)
    owned = (
        HttpFetcher(settings)
        if fetcher is None and any(is_url(image.image) for image in images)
        else None
    )
    started = time.monotonic()
    created: list[Path] = []
    staged: dict[Path, Path] = {}
    try:
        _make_parents(targets.values(), Path(base), created)
        _stage_all(images, targets, settings, owned or fetcher, staged, deadline)
        written = _commit(staged, {path: name for name, path in targets.items()})
    except BaseException:
        for temp in staged.values():
            temp.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                folder.rmdir()
        raise
    finally:
        if owned is not None:
            owned.close()
    elapsed_ms = (time.monotonic() - started) * 1e3
    logger.debug("stored %d input images in %.0f ms", len(written), elapsed_ms)
    return written


def _check_names(images: Sequence[InputImage], base: str) -> dict[str, Path]:
    """Each name's target path; raises for bad and duplicate names, all at once."""
    targets: dict[str, Path] = {}
    failures: list[ItemError] = []
    first_use: dict[Path, int] = {}
    for index, image in enumerate(images):
        try:
            target = _safe_target(base, image.name)
        except ItemError as exc:
            failures.append(exc)
            continue
        if target in first_use:
            reason = (
                f"duplicate name (images[{first_use[target]}] and images[{index}] both write "
                "this file); give each image its own name"
            )
            failures.append(ItemError(image.name, reason))
            continue
        first_use[target] = index
        targets[image.name] = target
    if failures:
        raise InputImageError(failures)
    return targets


def _make_parents(targets: Iterable[Path], base: Path, created: list[Path]) -> None:
    """Create the targets' missing sub-folders, appending each to ``created``, outermost first."""
    for target in targets:
        # Targets lie under ``base`` (safe_input_path): walk up to it, then create down.
        missing: list[Path] = []
        folder = target.parent
        while folder != base and folder != folder.parent and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except OSError as exc:  # most often a file of that name is in the way
                name = target.relative_to(base).as_posix()
                reason = f"cannot create the folder {folder.name}/ ({exc.strerror or exc})"
                raise InputImageError([ItemError(name, reason)]) from exc
            created.append(folder)


def _done(fn: Callable[..., T], *args: Any) -> Future[T]:
    """``fn(*args)`` run here, as a finished future (its result or its exception)."""
    future: Future[T] = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


def _stage_all(
    images: Sequence[InputImage],
    targets: dict[str, Path],
    settings: Settings,
    fetcher: Fetcher | None,
    staged: dict[Path, Path],
    deadline: Deadline | None = None,
) -> None:
    """Stage every image concurrently into ``staged`` (target -> temp); raise on any failure."""
    failures: list[ItemError] = []
    unexpected: BaseException | None = None
    if len(images) == 1:
        # The common request: one image. A thread pool would only add its start-up.
        (image,) = images
        futures = [_done(_stage, image, targets[image.name], settings, fetcher, deadline)]
    else:
        with ThreadPoolExecutor(min(_MAX_PARALLEL, len(images)), "input-image") as pool:
            futures = [
                pool.submit(_stage, im, targets[im.name], settings, fetcher, deadline)
                for im in images
            ]
    # Every future is collected, even after a failure, so that each temporary file
    # is known and removed, and every bad image is reported at once.
    for future in futures:
        try:
            temp, final = future.result()
        except ItemError as exc:
            failures.append(exc)
        except Exception as exc:  # a bug (in a fetcher, say): re-raised below
            unexpected = unexpected or exc
        else:
            staged[final] = temp
    if unexpected is not None:
        raise unexpected
    if failures:
        raise InputImageError(failures)


def _stage(
    image: InputImage,
    target: Path,
    settings: Settings,
    fetcher: Fetcher | None,
    deadline: Deadline | None = None,
) -> tuple[Path, Path]:
    """Load and verify one image, then write it beside its target under a temporary name."""
    data = _load(image, settings, fetcher)
    kind = media_kind(image.name)
    decoded = None
    if kind is None:
        decoded = _verify(image, data, settings, deadline)
    else:
        source = f" downloaded from {redact_url(image.image)}" if is_url(image.image) else ""
        verify_media(
            image.name,
            data,
            kind,
            settings.input_max_pixels,
            source,
            max_frames=settings.input_max_frames,
            max_video_pixels=settings.input_max_video_pixels,
            max_audio_samples=settings.input_max_audio_samples,
            deadline=deadline,
        )
    # A hidden temporary name in the same folder: the final rename is atomic and
    # ComfyUI never sees a half-written file. Short, and not built from the target's
    # name, so a 255-byte name (the file system's limit) still has a temporary one.
    temp = target.with_name(f".in-{uuid.uuid4().hex[:16]}.part")
    try:
        temp.write_bytes(data)
    except OSError as exc:
        if decoded is not None:
            decoded.close()
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise ItemError(image.name, f"could not be written ({exc.strerror or exc})") from exc
    # Decoded and hashed once: ComfyUI's LoadImage takes these pixels and this digest
    # instead of reading the file again, as does the naming of the job's input folder
    # (engine/runtime/decoded_inputs.py). The file's identity survives the renames.
    if not decoded_inputs.HANDOFF.offer(temp, decoded, data) and decoded is not None:
        decoded.close()
    return temp, target


def _commit(staged: dict[Path, Path], names: dict[Path, str]) -> list[Path]:
    """Rename every staged file (target -> temp) into place; on failure remove those placed."""
    placed: list[Path] = []
    for final, temp in staged.items():
        try:
            temp.replace(final)
        except OSError as exc:
            for path in placed:
                path.unlink(missing_ok=True)
            reason = f"could not be written ({exc.strerror or exc})"
            raise InputImageError([ItemError(names[final], reason)]) from exc
        placed.append(final)
    return placed


def _load(image: InputImage, settings: Settings, fetcher: Fetcher | None) -> bytes:
    """The image's bytes from its URL, data URI or base64 text."""
    source = image.image.strip()
    if is_url(source):
        assert fetcher is not None  # store_images makes one whenever a URL is present
        try:
            return fetcher.fetch(source)
        except ItemError as exc:
            raise ItemError(
                image.name,
                f"Failed to download {media_kind(image.name) or 'image'} from URL: "
                f"{redact_url(source)} ({exc.reason})",
            ) from exc
    if source[:5].lower() == "data:":
        return _decode_data_uri(image.name, source, settings.input_max_image_bytes)
    scheme = _SCHEME.match(source)
    if scheme:
        # Base64 has no ':', so this is a URL or path of a kind the worker cannot read.
        raise ItemError(
            image.name,
            f"unsupported source '{scheme.group(1)}:...'; send an http(s) URL, "
            "a data URI (data:image/png;base64,...) or base64",
        )
    return _decode_base64(image.name, source, settings.input_max_image_bytes)


def _decode_data_uri(name: str, uri: str, max_bytes: int) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise ItemError(name, "not a valid data URI (no ','); expected data:image/png;base64,...")
    params = [p.strip().lower() for p in header[5:].split(";")[1:]]
    if "base64" not in params:
        raise ItemError(
            name, "the data URI is not base64-encoded; expected data:image/png;base64,..."
        )
    return _decode_base64(name, payload, max_bytes)


def _decode_base64(name: str, text: str, max_bytes: int) -> bytes:
    # Tolerated: line breaks and spaces (MIME wraps at 76 columns), missing '=' padding
    # and the URL-safe alphabet ('-', '_'). Each rewrite copies the payload, so it runs
    # only when needed: a search is ~0.1 ms per MB, the split and join ~1.2 ms.
    # str.replace, not translate: ~20x faster on a multi-MB payload.
    compact = text
    if not compact.isascii() or any(space in compact for space in _WHITESPACE):
        compact = "".join(compact.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact = compact.rstrip("=")
    if not compact:
        raise ItemError(name, f"the {_noun(name)} data is empty")
    if len(compact) % 4 == 1 and not _NOT_BASE64.search(compact):
        raise ItemError(name, "not valid base64 (the data is cut short: one character too many)")
    # Without padding, n base64 characters decode to exactly n*3//4 bytes: the limit is
    # checked before the decoded copy is made.
    size = len(compact) * 3 // 4
    if size > max_bytes:
        raise ItemError(
            name,
            f"the {_noun(name)} is {_mb(size)}, over the {_mb(max_bytes)} limit "
            "(INPUT_MAX_IMAGE_MB)",
        )
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except ValueError as exc:  # binascii.Error, or a character that is not ASCII
        # Only now is the payload scanned, to name the offending character: the
        # decoder already checks the alphabet, and a scan costs ~2 ms per MB.
        bad = _NOT_BASE64.search(compact)
        if bad:
            raise ItemError(
                name,
                f"not valid base64 (found {bad.group()!r}); send the file's bytes "
                "base64-encoded, alone or as data:image/png;base64,...",
            ) from None
        raise ItemError(name, f"not valid base64 ({exc})") from exc


@cache
def _formats() -> tuple[str, ...]:
    """The accepted formats this Pillow build can open (AVIF needs libavif)."""
    Image.init()
    return tuple(f for f in _ACCEPTED_FORMATS if f in Image.OPEN)


def _verify(
    image: InputImage, data: bytes, settings: Settings, deadline: Deadline | None = None
) -> Image.Image:
    """The image, decoded; raises :class:`ItemError` unless ``data`` is a whole image
    within the pixel limit (the deadline's own error once the job must stop)."""
    name = image.name
    source = f" downloaded from {redact_url(image.image)}" if is_url(image.image) else ""
    accepted = ", ".join(_formats())
    try:
        with Image.open(io.BytesIO(data), formats=_formats()) as im:
            width, height = im.size
            if width * height > settings.input_max_pixels:
                raise ItemError(
                    name,
                    f"the image is {width}x{height} = {width * height} pixels, over the "
                    f"{settings.input_max_pixels}-pixel limit (INPUT_MAX_PIXELS)",
                )
            _check_frames(name, im, settings, deadline)
            # verify() checks structure and checksums but leaves the image unusable...
            im.verify()
        # ...so a second open decodes the pixels, which catches truncated data (also a
        # PNG whose chunk checksums pass but whose pixel data stops short).
        decoded = Image.open(io.BytesIO(data), formats=_formats())
        try:
            decoded.load()
        except BaseException:
            decoded.close()
            raise
        return decoded
    except (ItemError, WorkerError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (Image.MAX_IMAGE_PIXELS) fires inside open() for headers
        # that declare absurd sizes, before the check above can.
        raise ItemError(
            name,
            f"the image{source} declares more pixels than is safe to decode (a decompression "
            f"bomb?); the limit is {settings.input_max_pixels} pixels (INPUT_MAX_PIXELS)",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ItemError(name, f"not a decodable image{source} (not one of {accepted})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's parsers raise many types on hostile input (OSError, SyntaxError,
        # struct.error, IndexError...); each means the bytes are not a usable image.
        raise ItemError(
            name, f"not a decodable image{source} (corrupt or truncated: {exc})"
        ) from exc


def _check_frames(
    name: str, im: Image.Image, settings: Settings, deadline: Deadline | None
) -> None:
    """Raise :class:`ItemError` when an animated image's frames together exceed the limits.

    ComfyUI's LoadImage decodes every frame of a GIF, WEBP, APNG or TIFF into one tensor
    of the canvas's size (12 bytes a pixel), so the frames together are held to
    ``INPUT_MAX_PIXELS``, as one still image is, and their count to ``INPUT_MAX_FRAMES``.
    Without it a GIF of 150 KB (10,000 one-pixel frames on a 4096x4096 canvas) passed the
    checks and asked LoadImage for 2 TB.
    """
    width, height = im.size
    cap = max(1, min(settings.input_max_frames, settings.input_max_pixels // (width * height)))
    frames, exact = _count_frames(im, cap, deadline)
    if frames <= cap:
        return
    count = f"{frames}" if exact else f"more than {cap}"
    if frames > settings.input_max_frames:
        over = f"over the {settings.input_max_frames}-frame limit (INPUT_MAX_FRAMES)"
    else:
        over = f"over the {settings.input_max_pixels}-pixel limit (INPUT_MAX_PIXELS)"
    total = f" = {frames * width * height} pixels together" if exact else ""
    raise ItemError(
        name,
        f"the image has {count} frames of {width}x{height}{total}, {over}; LoadImage decodes "
        "every frame: send fewer or smaller frames, or a video (.mp4) for the video loaders",
    )


def _count_frames(im: Image.Image, cap: int, deadline: Deadline | None) -> tuple[int, bool]:
    """The frames of ``im`` and whether that is their exact count, or ``cap + 1`` (not exact)
    once it has more than ``cap``.

    Pillow's ``n_frames`` reads a GIF's frame headers (3.3 million in a 50 MB GIF took
    4.7 s on two shared cores) and the count an APNG or WEBP declares, but walks every
    page of a TIFF, about 180 us a page (a 50 MB TIFF of 128-byte pages holds 390,000):
    TIFF pages are walked here one at a time, up to the cap, with the job's deadline
    and cancel read every few hundred.
    """
    if im.format != "TIFF":
        frames = int(getattr(im, "n_frames", 1))
        return frames, True
    count = 1
    while count <= cap:
        if count % 256 == 0 and deadline is not None and deadline.expired():
            raise deadline.exceeded("while checking input images")
        try:
            im.seek(count)
        except EOFError:
            im.seek(0)
            return count, True
        count += 1
    im.seek(0)
    return count, False


def _noun(name: str) -> str:
    """What an entry is called in messages: ``image``, ``video`` or ``audio``."""
    return media_kind(name) or "image"


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"
