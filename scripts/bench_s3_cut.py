"""How soon a cancel ends a job's S3 upload: the answer, its connection and its thread.

The worker in-process (fake runtime) delivers to a real S3-compatible server (moto) on
127.0.0.1 through the tests' fault proxy, with ``UPLOAD_STALL_S`` at a minute. Two
cases, each cancelled on a cue from the proxy: ``hang`` (S3 takes the request and
answers nothing; cancelled once the request is held) and ``moving`` (a 3 MB output
goes out 64 KB every 0.02 s; cancelled after its third pause). Prints, per run, the
seconds from ``Worker.cancel`` to the job's answer, to the proxy seeing every
connection closed and to the upload threads gone, and whether the object was stored.

    .venv/bin/python scripts/bench_s3_cut.py --repeat 3
"""

from __future__ import annotations

import argparse
import base64
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


def _stored(endpoint: str, bucket: str) -> int:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    return int(client.list_objects_v2(Bucket=bucket).get("KeyCount", 0))


def _run(endpoint: str, case: str, image: str) -> str:
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
            worker = Worker(settings, FakeRuntime(settings), uploader=S3Uploader(limits))
            worker.boot()
            if case == "hang":
                proxy.hang()
                job = {"id": "hang", "input": {"workflow": workflows.batch(1)}}
                cue: Callable[[], bool] = proxy.hung.is_set
            else:
                proxy.throttle(65536, 0.02)
                images = [{"name": "a.png", "image": image}]
                job = {
                    "id": "moving",
                    "input": {"workflow": workflows.invert("a.png"), "images": images},
                }

                def cue() -> bool:
                    return proxy.pauses >= 3

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

            return (
                f"{case}: answer {since(answer)}, connections closed {since(closed)}, "
                f"upload threads gone {since(gone)}, objects stored {_stored(endpoint, bucket)}"
            )
    finally:
        proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (3)")
    repeat = parser.parse_args().repeat
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    image = base64.b64encode(noise_png(1024)).decode()
    try:
        for _ in range(repeat):
            for case in ("hang", "moving"):
                print(_run(f"http://{host}:{port}", case, image), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
