#!/usr/bin/env python3
"""SaveImage's PNG writers side by side: Pillow at ComfyUI's level 4 against the fast writer.

For each image: the time to write it as ComfyUI's SaveImage does (``compress_level=4``,
no metadata) by Pillow (``PNG_ENCODER=pillow``) and by ``engine.png_writer``
(``PNG_ENCODER=fast``), the two taking turns run by run; the median of each and of the
per-run ratios; the file sizes; and a check that both files decode to the same pixels.

The images: the benchmark jobs' own outputs (``scripts/bench_latency.py``: a photo-like
input, gradients and mild noise, inverted) at 512x512 and 1024x1024, and any PNG or JPEG
given with ``--file`` (decoded to RGB first).

``--levers``: the other settings tried for the fast writer, each image's Up-filtered rows
deflated by ISA-L at levels 1 (the writer's), 2 and 3 and by zlib at levels 1 and 4 (time
and size of the deflate alone). ``--memory``: the peak resident memory of a child process
that writes an 8192x8192 RGB image, band by band as the writer does and in one piece.

    python scripts/bench_png.py --repeat 15
    python scripts/bench_png.py --file photo.jpg --file render.png
    python scripts/bench_png.py --levers --memory
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _bench_common import JOB_KINDS, load_average

from engine import png_writer


def _pillow(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=4)
    return buffer.getvalue()


def _fast(image: Image.Image) -> bytes:
    return png_writer.encode(image, compress_level=4)


def _timed(write: object, image: Image.Image) -> tuple[float, bytes]:
    start = time.perf_counter()
    data = write(image)  # type: ignore[operator]
    return time.perf_counter() - start, data


def _images(files: list[Path]) -> list[tuple[str, Image.Image]]:
    images = []
    for key in ("512", "4x1024"):
        kind = JOB_KINDS[key]
        with Image.open(io.BytesIO(kind.input_png(seed=1))) as source:
            images.append(
                (
                    "a benchmark job's output",
                    ImageOps.invert(source.convert("RGB")),
                )
            )
    for path in files:
        with Image.open(path) as source:
            images.append((path.name, source.convert("RGB")))
    return images


def _levers(images: list[tuple[str, Image.Image]], repeat: int) -> None:
    """Deflate settings against the writer's (ISA-L level 1), on the same filtered rows."""
    from isal import isal_zlib

    settings = [("ISA-L 1 (kept)", isal_zlib, 1), ("ISA-L 2", isal_zlib, 2)]
    settings += [("ISA-L 3", isal_zlib, 3), ("zlib 1", zlib, 1), ("zlib 4", zlib, 4)]
    print("\n| image | " + " | ".join(name for name, _, _ in settings) + " |")
    print("|---|" + "---|" * len(settings))
    for name, image in images:
        rows = b"".join(png_writer._up_filtered(image))
        cells = []
        for _, module, level in settings:
            seconds = []
            for _ in range(repeat):
                start = time.perf_counter()
                size = len(module.compress(rows, level))
                seconds.append(time.perf_counter() - start)
            cells.append(f"{statistics.median(seconds) * 1000:.1f} ms, {size:,} B")
        print(f"| {name} {image.width}x{image.height} | " + " | ".join(cells) + " |")


# A child process: write an 8192x8192 RGB image, band by band or whole (argv[1]).
_MEMORY_CHILD = """
import os, resource, sys, tempfile
from PIL import Image
from engine import png_writer
if sys.argv[1] == "whole":
    png_writer._BAND_BYTES = 1 << 40
image = Image.effect_noise((8192, 8192), 40).convert("RGB")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    png_writer.save(image, os.path.join(folder, "big.png"), compress_level=4)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
"""


def _memory() -> None:
    """Peak RSS added by writing the image, in a fresh process per way of writing it."""
    root = str(Path(__file__).resolve().parents[1])
    print("\n| 8192x8192 RGB (256 MiB of pixels) | peak RSS added by the write |")
    print("|---|---:|")
    for way in ("bands", "whole"):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, way],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        label = "band by band (the writer)" if way == "bands" else "in one piece"
        print(f"| {label} | {int(out.split()[-1])} MiB |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=15, help="timed runs of each writer per image"
    )
    parser.add_argument("--file", type=Path, action="append", default=[], help="another image")
    parser.add_argument("--levers", action="store_true", help="the deflate settings tried")
    parser.add_argument("--memory", action="store_true", help="peak RSS of an 8192x8192 write")
    args = parser.parse_args()
    images = _images(args.file)
    print(f"deflate: {png_writer.DEFLATE}; load average before: {load_average()}")
    print(
        "| image | Pillow level 4 | fast | ratio (median of runs) | Pillow bytes | fast bytes | size |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, image in images:
        _pillow(image), _fast(image)  # warm-up: imports, allocator
        pillow_s, fast_s, ratios = [], [], []
        for _ in range(args.repeat):
            a, theirs = _timed(_pillow, image)
            b, ours = _timed(_fast, image)
            pillow_s.append(a)
            fast_s.append(b)
            ratios.append(a / b)
        with Image.open(io.BytesIO(theirs)) as one, Image.open(io.BytesIO(ours)) as two:
            if one.tobytes() != two.tobytes():
                raise SystemExit(f"{name}: the two files decode to different pixels")
        print(
            f"| {name} {image.width}x{image.height} | {statistics.median(pillow_s) * 1000:.1f} ms"
            f" | {statistics.median(fast_s) * 1000:.1f} ms | {statistics.median(ratios):.1f}x"
            f" | {len(theirs):,} | {len(ours):,} | {len(ours) / len(theirs) - 1:+.1%} |"
        )
    print(f"load average after: {load_average()}; same pixels in every pair")
    if args.levers:
        _levers(images, args.repeat)
    if args.memory:
        _memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
