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
# Image data goes in IDAT chunks of at most this many bytes (a PNG chunk holds < 2 GiB).
_IDAT_MAX = 1 << 30


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
    """Write ``image`` to ``path`` as a PNG (call only what :func:`writable` accepted)."""
    data = encode(image, pnginfo=kwargs.get("pnginfo"), compress_level=kwargs.get("compress_level"))
    Path(path).write_bytes(data)


def encode(image: Image.Image, pnginfo: Any = None, compress_level: int | None = None) -> bytes:
    """The PNG file of an 8-bit L, LA, RGB or RGBA image, with ``pnginfo``'s chunks.

    ``compress_level`` 0 stores the data uncompressed, as Pillow does; any other level (and
    ``None``, Pillow's default 6) deflates at ISA-L's level 1, the smallest files of its
    fast levels on the images measured.
    """
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot write an empty image ({width}x{height}) as PNG")
    color_type = _COLOR_TYPES[image.mode]
    texts = _text_chunks(pnginfo)
    if texts is None:
        raise ValueError("pnginfo holds chunks other than text: Pillow's to write")
    parts = [
        _SIGNATURE,
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)),
    ]
    parts += [_chunk(cid, data) for cid, data in texts]
    filtered = _up_filtered(image)
    if compress_level == 0:
        compressed = zlib.compress(filtered, 0)
    else:
        compressed = _deflate.compress(filtered, 1)
    for start in range(0, len(compressed), _IDAT_MAX):
        parts.append(_chunk(b"IDAT", compressed[start : start + _IDAT_MAX]))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


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


def _up_filtered(image: Image.Image) -> bytes:
    """The image's rows as PNG stores them with the Up filter: a filter byte, then each byte
    minus the one above it (mod 256); the first row is kept as it is (the row above is 0)."""
    width, height = image.size
    above = Image.new(image.mode, (width, height))
    if height > 1:
        above.paste(image.crop((0, 0, width, height - 1)), (0, 1))
    raw = ImageChops.subtract_modulo(image, above).tobytes()
    stride = len(raw) // height
    view = memoryview(raw)
    return b"".join(
        piece for y in range(height) for piece in (_UP, view[y * stride : (y + 1) * stride])
    )


def _chunk(cid: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(cid))
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", crc)
