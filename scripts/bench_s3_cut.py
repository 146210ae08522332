"""How soon a cancel ends a job's S3 upload: the answer, its connection and its thread.

The worker in-process (fake runtime) delivers to a real S3-compatible server (moto) on
127.0.0.1 through the tests' fault proxy, with ``UPLOAD_STALL_S`` at a minute. Three
cases, each cancelled on a cue from the proxy: ``hang`` (S3 takes the request and
answers nothing; cancelled once the request is held), ``moving`` (a 3 MB output
goes out 64 KB every 0.02 s; cancelled after its third pause) and ``multipart`` (a
20 MB output, sent in parts of 8 MB, each 64 KB every 0.05 s; cancelled after 20
pauses, the parts moving). Prints, per run, the seconds from ``Worker.cancel`` to the
job's answer, to the proxy seeing every connection closed, to the upload threads gone
and (multipart) to the end of the abort of what the cut left, then the objects stored
and the multipart uploads left in the bucket.

    .venv/bin/python scripts/bench_s3_cut.py --repeat 3
    .venv/bin/python scripts/bench_s3_cut.py --repeat 1 --cases multipart
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
from moto.server import ThreadedMotoServer

from engine.s3 import S3Uploader
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.e2e.conftest import bucket_settings, new_bucket
from tests.e2e.fault_proxy import FaultProxy
from tests.e2e.test_reliability import noise_png
from tests.fake_runtime import FakeRuntime

KEY_ID, SECRET = "AKIABENCHS3CUT000001", "bench/s3/cut/secret/000000000000000000"
BOUND_S = 90.0  # how long a run waits for each state before saying it never came


def _when(condition: Callable[[], bool]) -> float | None:
    end = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > end:
            return None
        time.sleep(0.002)
    return time.monotonic()


def _left(endpoint: str, bucket: str) -> str:
    """Objects stored and multipart uploads left in ``bucket``, asked past the proxy."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    objects = int(client.list_objects_v2(Bucket=bucket).get("KeyCount", 0))
    uploads = len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    return f"objects stored {objects}, multipart uploads left {uploads}"


def _run(endpoint: str, case: str, images: dict[str, str]) -> str:
    bucket = new_bucket(endpoint, KEY_ID, SECRET, "bench")
    proxy = FaultProxy(endpoint)
    limits = bucket_settings(
        proxy.url, bucket, KEY_ID, SECRET, upload_timeout_s=120, upload_stall_s=60
    )
    job: dict[str, Any]
    try:
        with tempfile.TemporaryDirectory() as folder:
            settings = Settings(
                work_dir=Path(folder), bucket=limits, job_timeout_s=600.0, job_stop_grace_s=30.0
            )
            uploader = S3Uploader(limits)
            worker = Worker(settings, FakeRuntime(settings), uploader=uploader)
            worker.boot()
            if case == "hang":
                proxy.hang()
                job = {"id": "hang", "input": {"workflow": workflows.batch(1)}}
                cue: Callable[[], bool] = proxy.hung.is_set
            else:
                pause_s, pauses = (0.02, 3) if case == "moving" else (0.05, 20)
                proxy.throttle(65536, pause_s)
                job = {
                    "id": case,
                    "input": {
                        "workflow": workflows.invert("a.png"),
                        "images": [{"name": "a.png", "image": images[case]}],
                    },
                }

                def cue() -> bool:
                    return proxy.pauses >= pauses

            answered = threading.Event()
            thread = threading.Thread(target=lambda: (worker.handle(job), answered.set()))
            thread.start()
            _when(cue)
            cancelled = time.monotonic()
            worker.cancel(job["id"])
            answer = _when(answered.is_set)
            closed = _when(lambda: proxy.open_connections == 0)
            gone = _when(
                lambda: not [t for t in threading.enumerate() if t.name.startswith("upload")]
            )
            thread.join()

            def since(moment: float | None) -> str:
                return f"none in {BOUND_S:g} s" if moment is None else f"{moment - cancelled:.3f} s"

            cleanup = ""
            if case == "multipart":
                # Before engine/s3_multipart.py there was no cleanup to wait for.
                cleaner = getattr(uploader, "cleaner", None)
                ended = (
                    None if cleaner is None else _when(lambda: cleaner.finished > 0)  # type: ignore[union-attr]
                )
                cleanup = ", abort ended " + ("(no cleanup)" if cleaner is None else since(ended))
            return (
                f"{case}: answer {since(answer)}, connections closed {since(closed)}, "
                f"upload threads gone {since(gone)}{cleanup}, {_left(endpoint, bucket)}"
            )
    finally:
        proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (3)")
    parser.add_argument(
        "--cases",
        default="hang,moving,multipart",
        help="which cases, comma-separated (hang,moving,multipart)",
    )
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - {"hang", "moving", "multipart"}
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # 1024 px of noise: a 3 MB PNG, one request; 2600 px: about 20 MB, three parts.
    images = {
        case: base64.b64encode(noise_png(side)).decode()
        for case, side in (("moving", 1024), ("multipart", 2600))
        if case in cases
    }
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        for _ in range(args.repeat):
            for case in cases:
                print(_run(f"http://{host}:{port}", case, images), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
