"""Still-image outputs re-encoded into the format the request asked for.

Only files typed ``image`` (one frame) are converted: animations (animated WEBP/PNG,
GIF), videos and audio are delivered as ComfyUI wrote them. A file already in the
asked format is left as it is (no second lossy pass; ComfyUI's PNG metadata kept).
Every other file is re-encoded at its own size into the job's scratch folder, so the
job's cleanup removes it, and its ``filename`` extension and ``mime_type`` follow.

JPEG has no alpha channel: a transparent image is composited on white, which is how
a browser or an image viewer shows it on a page, rather than dropping the alpha and
revealing whatever colour the transparent pixels happen to hold.

A file that cannot be converted is delivered unchanged, with a line in ``errors[]``;
so is one over the output pixel limit (``OUTPUT_MAX_PIXELS``), which bounds the memory
a decode takes. Inputs have their own limit; it does not apply here.

The job's deadline and cancel are checked before each file and at every block Pillow
reads while it decodes (64 KB) and writes while it encodes (a row band, 64 KB or more):
a conversion stops there with the job's own timeout or cancel error, files not started
are not, and the file it was writing is removed. A WEBP encode is one call into libwebp,
checked before and after only.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO, cast

from PIL import Image

from engine.deadline import Deadline
from engine.errors import ItemError, JobInterruptedError
from engine.outputs import OutputFile, mime_type_for
from engine.request import ConvertOutput

log = logging.getLogger(__name__)

# The extension each format gets: ``.jpg`` because it is what people and tools expect.
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

# Vector images are not pixels Pillow can read; they are delivered as they are.
_NOT_RASTER = frozenset({"image/svg+xml"})

# Pillow releases the GIL while it decodes and encodes, so threads convert files side
# by side. More threads than this only queue on the cores and hold more decoded images
# (a 4096x4096 RGBA image is 64 MB) in memory at once.
_MAX_THREADS = 8

# JPEG's composite background for transparent pixels.
_WHITE = (255, 255, 255)


def convert_outputs(
    files: Sequence[OutputFile],
    request: ConvertOutput,
    scratch_dir: Path,
    *,
    max_pixels: int | None = None,
    deadline: Deadline | None = None,
) -> tuple[list[OutputFile], list[str]]:
    """``files`` in the same order, still images re-encoded; a line per file left as it was.

    ``max_pixels`` (``OUTPUT_MAX_PIXELS``): a larger image is left as it was, unread.
    Raises ``deadline``'s timeout or cancel error once the job must stop.
    """
    todo = [i for i, file in enumerate(files) if _wants_conversion(file, request.format)]
    result = list(files)
    errors: list[str] = []
    if not todo:
        return result, errors
    threads = min(len(todo), _MAX_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convert") as pool:
        # Each file gets a folder of its own: two outputs named alike (a.png, a.webp)
        # may become the same a.jpg.
        futures = {
            i: pool.submit(
                _encode,
                files[i],
                request,
                scratch_dir / "converted" / str(i),
                max_pixels,
                deadline,
            )
            for i in todo
        }
        try:
            for i, future in futures.items():
                try:
                    result[i] = future.result()
                except ItemError as exc:
                    errors.append(
                        f"{files[i].filename} (node {files[i].node_id}): could not convert to "
                        f"{request.format}, returned as it was: {exc.reason}"
                    )
        except JobInterruptedError:
            # The files not started are dropped; those under way stop at their next
            # block (leaving the block waits for them: none writes after the cleanup).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    for line in errors:
        log.warning("output not converted: %s", line)
    log.debug("converted %d output(s) to %s", len(todo) - len(errors), request.format)
    return result, errors


def _wants_conversion(file: OutputFile, target: str) -> bool:
    if file.kind != "image" or file.mime_type in _NOT_RASTER:
        return False
    return file.mime_type != mime_type_for(f"x.{_EXTENSIONS[target]}")


def _encode(
    file: OutputFile,
    request: ConvertOutput,
    folder: Path,
    max_pixels: int | None,
    deadline: Deadline | None = None,
) -> OutputFile:
    """Re-encode one still image into ``folder``; ``ItemError`` saying why it could not,
    ``deadline``'s error once the job must stop."""
    _check(deadline)
    name = f"{PurePosixPath(file.filename).stem}.{_EXTENSIONS[request.format]}"
    target = folder / name
    try:
        with (
            _Checked(file.path.open("rb"), deadline) as source,
            Image.open(cast(BinaryIO, source)) as opened,
        ):
            width, height = opened.size  # from the header: nothing decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ItemError(
                    file.filename,
                    f"the image is {width}x{height} = {width * height} pixels, over the "
                    f"{max_pixels}-pixel limit (OUTPUT_MAX_PIXELS)",
                )
            opened.load()
            image, options = _prepared(opened, request)
        _check(deadline)
        folder.mkdir(parents=True, exist_ok=True)
        with _Checked(target.open("wb"), deadline) as sink:
            image.save(cast(BinaryIO, sink), format=request.format.upper(), **options)
    except JobInterruptedError:
        target.unlink(missing_ok=True)
        raise
    except Image.DecompressionBombError as exc:
        raise ItemError(
            file.filename, f"too large to re-encode: {exc} (OUTPUT_MAX_PIXELS, INPUT_MAX_PIXELS)"
        ) from exc
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        target.unlink(missing_ok=True)
        raise ItemError(file.filename, f"{type(exc).__name__}: {exc}") from exc
    return replace(file, filename=name, path=target, mime_type=mime_type_for(name))


def _check(deadline: Deadline | None) -> None:
    if deadline is not None and deadline.expired():
        raise deadline.exceeded("while converting outputs")


class _Checked(io.RawIOBase):
    """A file Pillow reads or writes a block at a time, the job's deadline checked at
    each block. It has no ``fileno``: given one, Pillow's encoders write the whole image
    to it in C, with no block to check at."""

    def __init__(self, raw: BinaryIO, deadline: Deadline | None) -> None:
        super().__init__()
        self._raw, self._deadline = raw, deadline

    def readable(self) -> bool:
        return self._raw.readable()

    def writable(self) -> bool:
        return self._raw.writable()

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        _check(self._deadline)
        return self._raw.readinto(buffer)  # type: ignore[attr-defined,no-any-return]

    def write(self, data: Any) -> int:
        _check(self._deadline)
        return self._raw.write(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        if not self.closed:
            self._raw.flush()

    def close(self) -> None:
        try:
            super().close()  # flushes first
        finally:
            self._raw.close()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _prepared(image: Image.Image, request: ConvertOutput) -> tuple[Image.Image, dict[str, Any]]:
    """The image in a mode the target format stores, and the encoder's options."""
    options: dict[str, Any] = {}
    icc = image.info.get("icc_profile")
    if icc:
        options["icc_profile"] = icc  # colours stay as the source meant them
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (
        image.mode in {"P", "L", "RGB"} and "transparency" in image.info
    )
    if request.format == "jpeg":
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
            image = Image.alpha_composite(background, rgba).convert("RGB")
        elif image.mode not in {"L", "RGB"}:
            image = image.convert("RGB")
        options["quality"] = request.quality
    elif request.format == "webp":
        if image.mode not in {"RGB", "RGBA"}:
            image = image.convert("RGBA" if has_alpha else "RGB")
        options["quality"] = request.quality
    elif image.mode not in {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}:
        image = image.convert("RGBA" if has_alpha else "RGB")  # CMYK, YCbCr...: no PNG mode
    return image, options
