"""How fast a model file streams to disk by URL, and that memory stays flat while it does.

Serves a sparse file of ``--mib`` MiB from 127.0.0.1 and downloads it with the worker's
own downloader (``engine.model_download.HttpDownloader``: address checks, SHA-256 on the
way, each network read written to a temporary file), then prints the time, the rate and how much the
process's peak memory grew. Loopback only: it measures the worker's own cost, not a
network's.

    .venv/bin/python scripts/bench_model_download.py --mib 1024
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.deadline import Deadline
from engine.model_download import HttpDownloader
from engine.settings import Settings
from tests.local_http import serve_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (1024)")
    size = parser.parse_args().mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with (root / "model.safetensors").open("wb") as file:
            file.truncate(size)  # sparse: the disk holds only the downloaded copy
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with serve_directory(root) as url:
            downloader = HttpDownloader(Settings(input_allow_private_urls=True))
            started = time.monotonic()
            result = downloader.download(
                f"{url}/model.safetensors",
                root / ".download.part",
                max_bytes=size,
                limit_name="MODEL_MAX_FILE_GB",
                deadline=Deadline.start(None),
                check_size=lambda declared: None,
                on_progress=lambda done, total: None,
            )
            seconds = time.monotonic() - started
            downloader.close()
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    mib = result.size / 1024 / 1024
    print(
        f"{mib:.0f} MiB in {seconds:.1f} s = {mib / seconds:.0f} MiB/s (SHA-256 included); "
        f"peak memory grew {grew:.0f} MiB"
    )


if __name__ == "__main__":
    main()
