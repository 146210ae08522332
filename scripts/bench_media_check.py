"""How long the check of an input video takes on the worst file for it: tiny frames.

Makes a Matroska file of ``--frames`` 4x4 grey raw frames (about 41 bytes each: 1.2
million fit in ``INPUT_MAX_IMAGE_MB``'s 50 MB) and times ``engine.media.verify_media``
on it, once with ``INPUT_MAX_FRAMES`` at its default (refused at the bound) and once
without a bound (every packet read), the time a job would spend without it.

    .venv/bin/python scripts/bench_media_check.py --frames 1200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import ItemError
from engine.media import verify_media
from engine.settings import Settings
from tests.media_factory import tiny_frames_video


def check(data: bytes, max_frames: int) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        verify_media("tiny.mkv", data, "video", 8192 * 8192, "", max_frames=max_frames)
        verdict = "accepted"
    except ItemError as exc:
        verdict = f"refused ({exc.reason.split(';')[0]})"
    return time.perf_counter() - started, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_200_000, help="frames (1200000)")
    frames = parser.parse_args().frames
    data = tiny_frames_video(frames)
    bound = Settings().input_max_frames
    print(f"{frames} frames in {len(data) / 1e6:.1f} MB")
    for label, limit in ((f"INPUT_MAX_FRAMES={bound}", bound), ("no bound", frames + 1)):
        seconds, verdict = check(data, limit)
        print(f"{label}: {verdict} in {seconds:.2f} s")


if __name__ == "__main__":
    main()
