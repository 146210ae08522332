"""PNG files written ten to twenty times faster than Pillow writes them: same pixels, same chunks.

ComfyUI's SaveImage writes each image with Pillow at ``compress_level`` 4. Pillow tries
five PNG filters on every row and deflates with zlib: on this project's 2-core machine a
512x512 photo-like image took 58 ms and a 1024x1024 one 235 ms, most of a job that does
not sample (docs/benchmarks.md). Here every row gets PNG's "Up" filter (the row minus the
row above, byte by byte, done by Pillow's ``ImageChops.subtract_modulo`` in C) and the
filtered bytes are deflated by ISA-L (``isal``, Intel's deflate, level 1): 3 ms and 12 ms
for the same images, files 3-9% larger (``scripts/bench_png.py``). Deflate runs with the
GIL released, so a batch's images encode side by side on threads.

Any PNG reader decodes the same pixels as from Pillow's file, and the same text chunks,
in the same order (ComfyUI's ``prompt`` and ``workflow``). Only the compressed bytes
differ. ``PNG_ENCODER=pillow`` keeps Pillow's bytes.

:func:`writable` says whether an image and a ``save`` call are ones this writer handles
the same way Pillow would: 8-bit L, LA, RGB or RGBA, no ``info`` (no palette, ICC profile,
transparency or DPI to carry), a ``.png`` path or ``format="PNG"``, no keyword but
``pnginfo`` and ``compress_level``, and a ``pnginfo`` of text chunks only (Pillow moves,
merges or drops other chunks by rules of its own). Anything else is Pillow's to save.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

log = logging.getLogger(__name__)

try:  # ISA-L's deflate; a custom image built without it still writes valid PNGs, slower.
    from isal import isal_zlib as _deflate

    DEFLATE = "isal"
    """Which deflate writes the image data: ``isal`` or, without the package, ``zlib``."""
except ImportError:  # pragma: no cover - the image and the dev environment install isal
    _deflate = zlib  # type: ignore[misc]
    DEFLATE = "zlib"

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types of the modes written here (8 bits per sample each).
_COLOR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
_KEYWORDS = frozenset({"pnginfo", "compress_level"})
# The chunks PngInfo.add_text makes, which Pillow writes in order before the image data.
_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_UP = b"\x02"  # PNG filter type 2: each byte minus the byte above it
# Rows are filtered and deflated this many bytes at a time (one IDAT chunk each): memory
# stays bounded whatever the image's size; a 1024x1024 RGB image is one band.
_BAND_BYTES = 4 << 20


def writable(image: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``image.save(*args, **kwargs)`` is a PNG save this module writes as Pillow would."""
    if not isinstance(image, Image.Image) or image.mode not in _COLOR_TYPES or image.info:
        return False
    if len(args) != 1 or not isinstance(args[0], (str, os.PathLike)):
        return False
    if not set(kwargs) <= _KEYWORDS | {"format"}:
        return False
    if _text_chunks(kwargs.get("pnginfo")) is None:
        return False
    fmt = kwargs.get("format")
    if fmt is not None:
        return isinstance(fmt, str) and fmt.upper() == "PNG"
    return Path(args[0]).suffix.lower() == ".png"


def save(image: Image.Image, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Write ``image`` to ``path`` as a PNG (call only what :func:`writable` accepted).

    Written a band of rows at a time: beside the image itself it holds about
    ``_BAND_BYTES`` of filtered rows and one band's compressed bytes, never the whole
    file (a 16384x16384 output, ``OUTPUT_MAX_PIXELS``'s default, is 768 MB of pixels)."""
    head = _head(image, kwargs.get("pnginfo"))
    with Path(path).open("wb") as file:
        file.write(head)
        for chunk in _image_data(image, kwargs.get("compress_level")):
            file.write(chunk)


def encode(image: Image.Image, pnginfo: Any = None, compress_level: int | None = None) -> bytes:
    """The PNG file of an 8-bit L, LA, RGB or RGBA image, with ``pnginfo``'s chunks.

    ``compress_level`` 0 stores the data uncompressed, as Pillow does; any other level (and
    ``None``, Pillow's default 6) deflates at ISA-L's level 1, the smallest files of its
    fast levels on the images measured.
    """
    return _head(image, pnginfo) + b"".join(_image_data(image, compress_level))


def _head(image: Image.Image, pnginfo: Any) -> bytes:
    """The signature, IHDR and the text chunks, after checking the image can be written."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot write an empty image ({width}x{height}) as PNG")
    color_type = _COLOR_TYPES[image.mode]
    texts = _text_chunks(pnginfo)
    if texts is None:
        raise ValueError("pnginfo holds chunks other than text: Pillow's to write")
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join([_SIGNATURE, _chunk(b"IHDR", header)] + [_chunk(c, d) for c, d in texts])


def _image_data(image: Image.Image, compress_level: int | None) -> Iterator[bytes]:
    """IDAT chunks, one per band's compressed bytes, and IEND."""
    compressor = zlib.compressobj(0) if compress_level == 0 else _deflate.compressobj(1)
    for rows in _up_filtered(image):
        data = compressor.compress(rows)
        if data:
            yield _chunk(b"IDAT", data)
    yield _chunk(b"IDAT", compressor.flush())
    yield _chunk(b"IEND", b"")


def _text_chunks(pnginfo: Any) -> list[tuple[bytes, bytes]] | None:
    """``pnginfo``'s chunks as (type, data) when all are text (none: ``[]``), else None."""
    if pnginfo is None:
        return []
    chunks = getattr(pnginfo, "chunks", None)
    if not isinstance(chunks, list):
        return None
    texts = []
    for chunk in chunks:
        if not isinstance(chunk, tuple) or len(chunk) < 2 or chunk[0] not in _TEXT_CHUNKS:
            return None
        if not isinstance(chunk[1], bytes):
            return None
        texts.append((chunk[0], chunk[1]))
    return texts


def _up_filtered(image: Image.Image) -> Iterator[bytes]:
    """The image's rows as PNG stores them with the Up filter, a band of rows at a time: a
    filter byte, then each byte minus the one above it (mod 256); above the first row is 0."""
    width, height = image.size
    stride = width * len(image.getbands())  # bytes per row as tobytes packs them
    rows = max(1, _BAND_BYTES // (stride + 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        whole = top == 0 and bottom == height
        band = image if whole else image.crop((0, top, width, bottom))
        above = Image.new(image.mode, band.size)
        first = max(top - 1, 0)  # the rows above the band's rows: top-1 .. bottom-2
        if bottom - 1 > first:
            above.paste(image.crop((0, first, width, bottom - 1)), (0, first - (top - 1)))
        view = memoryview(ImageChops.subtract_modulo(band, above).tobytes())
        yield b"".join(
            piece
            for y in range(bottom - top)
            for piece in (_UP, view[y * stride : (y + 1) * stride])
        )


def _chunk(cid: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(cid))
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", crc)
