"""The fast PNG writer: Pillow decodes the same pixels and metadata from its files.

Every 8-bit mode it writes, at edge sizes (one pixel, one row, one column, odd widths),
with text and compressed text chunks, Pillow's, in Pillow's order. And what it refuses,
so that Pillow writes those.
"""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from engine import png_writer

MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
SIZES = [(1, 1), (5, 1), (1, 7), (17, 9), (64, 48)]


def _image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = random.Random(seed)  # noqa: S311  (test pixels)
    width, height = size
    data = bytes(rng.randrange(256) for _ in range(width * height * MODES[mode]))
    return Image.frombytes(mode, size, data)


def _info() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", '{"1": {"class_type": "SaveImage"}}')
    info.add_text("workflow", "ü and 東京 " * 50)  # not latin-1: iTXt
    info.add_text("parameters", "x" * 300, zip=True)  # zTXt
    return info


def _chunk_names(data: bytes) -> list[bytes]:
    """The chunk types of a PNG in order, IDAT runs counted once (their split is free)."""
    names: list[bytes] = []
    at = 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        name = data[at + 4 : at + 8]
        if not (name == b"IDAT" and names and names[-1] == b"IDAT"):
            names.append(name)
        at += 12 + length
    return names


def _pillow(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


@pytest.fixture(params=["one band", "bands of a row or two"])
def bands(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images written whole, and a few rows at a time (as a 16384x16384 one is)."""
    if request.param != "one band":
        monkeypatch.setattr(png_writer, "_BAND_BYTES", 100)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_pillow_reads_the_same_pixels_and_metadata(
    mode: str, size: tuple[int, int], bands: None
) -> None:
    image = _image(mode, size, seed=size[0] * 31 + size[1])
    ours = png_writer.encode(image, pnginfo=_info(), compress_level=4)
    theirs = _pillow(image, pnginfo=_info(), compress_level=4)
    with Image.open(io.BytesIO(ours)) as back, Image.open(io.BytesIO(theirs)) as reference:
        back.load()
        reference.load()
        assert back.mode == mode and back.size == size
        assert back.tobytes() == image.tobytes()
        assert back.text == reference.text
    assert _chunk_names(ours) == _chunk_names(theirs)


def test_compress_level_0_stores_the_rows_as_pillow_does(bands: None) -> None:
    image = _image("RGB", (64, 48), seed=1)
    stored = png_writer.encode(image, compress_level=0)
    raw_rows = 48 * (1 + 64 * 3)
    assert len(stored) > raw_rows  # stored, not deflated
    with Image.open(io.BytesIO(stored)) as back:
        assert back.tobytes() == image.tobytes()


def test_smooth_images_compress_about_as_well_as_pillows() -> None:
    """A gradient (what sampled images resemble more than noise) compresses to within a
    few tenths of Pillow's size at ComfyUI's level 4, never to a raw-sized file."""
    width, height = 256, 128
    data = bytes(
        (x + y * 2 + c * 40) % 256 for y in range(height) for x in range(width) for c in range(3)
    )
    image = Image.frombytes("RGB", (width, height), data)
    ours = len(png_writer.encode(image, compress_level=4))
    theirs = len(_pillow(image, compress_level=4))
    assert ours < len(data) / 10
    assert ours < theirs * 1.5, (ours, theirs)


def test_save_writes_the_file(tmp_path: Path, bands: None) -> None:
    image = _image("RGB", (17, 9))
    target = tmp_path / "out.png"
    png_writer.save(image, target, pnginfo=_info(), compress_level=4)
    assert target.read_bytes() == png_writer.encode(image, pnginfo=_info(), compress_level=4)


def test_every_chunk_carries_its_crc() -> None:
    data = png_writer.encode(_image("RGBA", (5, 1)), pnginfo=_info())
    at = 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        body = data[at + 4 : at + 8 + length]
        assert int.from_bytes(data[at + 8 + length : at + 12 + length], "big") == zlib.crc32(body)
        at += 12 + length
    assert at == len(data)


@pytest.mark.parametrize(
    ("mode", "args", "kwargs", "expected"),
    [
        ("RGB", ("a.png",), {"pnginfo": None, "compress_level": 4}, True),
        ("RGBA", (Path("a.PNG"),), {}, True),
        ("L", ("a.bin",), {"format": "PNG"}, True),
        ("RGB", ("a.webp",), {}, False),  # another format
        ("RGB", ("a.png",), {"optimize": True}, False),  # a keyword Pillow honours
        ("RGB", ("a.png",), {"dpi": (72, 72)}, False),
        ("RGB", (io.BytesIO(),), {"format": "PNG"}, False),  # not a path
        ("RGB", ("a.png", "PNG"), {}, False),
        ("P", ("a.png",), {}, False),  # palette, 1-bit, 16-bit: Pillow's
        ("1", ("a.png",), {}, False),
        ("I;16", ("a.png",), {}, False),
        ("CMYK", ("a.png",), {}, False),
    ],
)
def test_writable_takes_only_saves_it_writes_as_pillow_would(
    mode: str, args: tuple[object, ...], kwargs: dict[str, object], expected: bool
) -> None:
    image = Image.new(mode, (2, 2))
    assert png_writer.writable(image, args, kwargs) is expected


def test_pnginfo_with_chunks_other_than_text_is_pillows() -> None:
    """Pillow moves tIME before the image data whatever ``after_idat`` says, keeps private
    chunks after it, drops unknown public ones: such a ``pnginfo`` is Pillow's to write."""
    image = Image.new("RGB", (2, 2))
    for cid, after in ((b"tIME", True), (b"prVt", True), (b"prVt", False), (b"ABCD", False)):
        info = _info()
        info.add(cid, b"\x07\xea\x0c\x07\x0c\x00\x00", after_idat=after)
        assert not png_writer.writable(image, ("a.png",), {"pnginfo": info})
        with pytest.raises(ValueError, match="other than text"):
            png_writer.encode(image, pnginfo=info)
    assert png_writer.writable(image, ("a.png",), {"pnginfo": _info()})
    assert not png_writer.writable(image, ("a.png",), {"pnginfo": "not a PngInfo"})


def test_an_image_with_info_to_carry_is_pillows() -> None:
    image = Image.new("RGB", (2, 2))
    image.info["icc_profile"] = b"profile"
    assert not png_writer.writable(image, ("a.png",), {})
    assert not png_writer.writable(object(), ("a.png",), {})


def test_an_empty_image_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="empty image"):
        png_writer.encode(Image.new("RGB", (0, 0)))
