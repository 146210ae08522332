"""How long the check of an input video takes on the worst file for it: tiny frames, and
how soon the count of an output video's frames stops when the job is cancelled.

Makes a Matroska file of ``--frames`` 4x4 grey raw frames (about 41 bytes each: 1.2
million fit in ``INPUT_MAX_IMAGE_MB``'s 50 MB) and times ``engine.media.verify_media``
on it, once with ``INPUT_MAX_FRAMES`` at its default (refused at the bound) and once
without a bound (every packet read), the time a job would spend without it. Then, as a
workflow's output, ``engine.video.probe`` reads it whole, and again with the job
cancelled ``--cancel-after`` seconds in: the figure is how long after the cancel it stops.

    .venv/bin/python scripts/bench_media_check.py --frames 1200000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.deadline import Deadline
from engine.errors import ItemError, JobInterruptedError
from engine.media import verify_media
from engine.settings import Settings
from engine.video import probe
from tests.media_factory import tiny_frames_video


def check(data: bytes, max_frames: int) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        verify_media("tiny.mkv", data, "video", 8192 * 8192, "", max_frames=max_frames)
        verdict = "accepted"
    except ItemError as exc:
        verdict = f"refused ({exc.reason.split(';')[0]})"
    return time.perf_counter() - started, verdict


def probe_output(data: bytes, cancel_after_s: float) -> None:
    """The output probe on ``data``: whole, then cancelled part-way."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "output.mkv"
        path.write_bytes(data)
        started = time.perf_counter()
        frames = probe(path).frames
        print(f"output probe, whole file: {frames} frames in {time.perf_counter() - started:.2f} s")
        deadline = Deadline.start(None)
        cancelled: list[float] = []

        def cancel() -> None:
            cancelled.append(time.perf_counter())
            deadline.cancel()

        timer = threading.Timer(cancel_after_s, cancel)
        timer.start()
        try:
            probe(path, deadline)
            print("output probe, cancelled: read to its end before the cancel came")
        except JobInterruptedError:
            stopped = time.perf_counter()
            print(
                f"output probe, cancelled {cancel_after_s:g} s in: stopped "
                f"{(stopped - cancelled[0]) * 1e3:.1f} ms after the cancel"
            )
        finally:
            timer.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_200_000, help="frames (1200000)")
    parser.add_argument(
        "--cancel-after", type=float, default=0.5, help="seconds into the output probe (0.5)"
    )
    args = parser.parse_args()
    frames = args.frames
    data = tiny_frames_video(frames)
    bound = Settings().input_max_frames
    print(f"{frames} frames in {len(data) / 1e6:.1f} MB")
    for label, limit in ((f"INPUT_MAX_FRAMES={bound}", bound), ("no bound", frames + 1)):
        seconds, verdict = check(data, limit)
        print(f"{label}: {verdict} in {seconds:.2f} s")
    probe_output(data, args.cancel_after)


if __name__ == "__main__":
    main()
