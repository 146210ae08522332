#!/usr/bin/env python3
"""SaveImage's PNG writers side by side: Pillow at ComfyUI's level 4 against the fast writer.

For each image: the time to write it as ComfyUI's SaveImage does (``compress_level=4``,
no metadata) by Pillow (``PNG_ENCODER=pillow``) and by ``engine.png_writer``
(``PNG_ENCODER=fast``), the two taking turns run by run; the median of each and of the
per-run ratios; the file sizes; and a check that both files decode to the same pixels.

The images: the benchmark jobs' own outputs (``scripts/bench_latency.py``: a photo-like
input, gradients and mild noise, inverted) at 512x512 and 1024x1024, and any PNG or JPEG
given with ``--file`` (decoded to RGB first).

    python scripts/bench_png.py --repeat 15
    python scripts/bench_png.py --file photo.jpg --file render.png
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=15, help="timed runs of each writer per image"
    )
    parser.add_argument("--file", type=Path, action="append", default=[], help="another image")
    args = parser.parse_args()
    print(f"deflate: {png_writer.DEFLATE}; load average before: {load_average()}")
    print(
        "| image | Pillow level 4 | fast | ratio (median of runs) | Pillow bytes | fast bytes | size |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, image in _images(args.file):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
