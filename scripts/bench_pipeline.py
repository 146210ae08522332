#!/usr/bin/env python3
"""Pipelined jobs: a stream of jobs through the worker, MAX_CONCURRENT_JOBS=2 against 1.

Each job downloads its input image from a slow URL server, runs a node that sleeps
while holding no lock (as a GPU kernel would: the engine busy, the CPU free), and
uploads its PNG to S3 (moto) through a proxy that adds a delay to every request and
limits the upload bandwidth. All three servers run on 127.0.0.1 in a child process of
this script (``--world``), so their Python work does not share the worker's GIL. Tuned
by default so that a job's I/O (download + upload) takes about as long as its run.

The stream: ``--jobs`` jobs, each with its own image, sent the way the runpod SDK sends
them: as many callers of ``Worker.handle`` as ``MAX_CONCURRENT_JOBS`` (the SDK's job
loop keeps that many jobs in progress). Both settings run on the same booted runtime,
alternated (1, 2, then 2, 1, ...) for ``--rounds`` rounds. Figures per setting: jobs
per minute (jobs / the stream's wall time) and the engine's busy fraction (the time
inside ``Runtime.run``, ComfyUI's validation and execution, over the stream's wall time).
Then the same without I/O (inputs as base64 in the request, outputs as base64): what
overlapping costs when there is nothing to overlap.

The engine, two ways:

- default: a stand-in runtime (this file's ``SleepRuntime``) that runs the three nodes
  (LoadImage, BenchSleep, SaveImage) itself;
- ``--comfyui`` (or ``COMFYUI_PATH`` set): the real ComfyUI in-process, with
  ``BenchSleep`` as a custom node written into a temporary ``custom_nodes`` folder
  (through an ``EXTRA_MODEL_PATHS`` file); its SaveImage is ComfyUI's own.

    python scripts/bench_pipeline.py
    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_pipeline.py --comfyui

A benchmark, not a test: it prints figures and the settings that made them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _bench_common import Metered, sleep_node_paths, stream_jobs  # noqa: E402

BUCKET = "bench"
_KEYS = {"BUCKET_ACCESS_KEY_ID": "bench-key", "BUCKET_SECRET_ACCESS_KEY": "bench-secret"}


# -- the outside world: a slow URL server, S3 and a slow link to it (a child process) ----


def noise_png(index: int, side: int) -> bytes:
    """A PNG that does not compress (about side * side * 3 bytes), different per index."""
    from PIL import Image

    data = random.Random(index).randbytes(side * side * 3)  # noqa: S311  (test pixels)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), data).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _send_slowly(sock_file: Any, data: bytes, bytes_per_s: float) -> None:
    chunk = 16 * 1024
    for start in range(0, len(data), chunk):
        sock_file.write(data[start : start + chunk])
        sock_file.flush()
        time.sleep(chunk / bytes_per_s)


def serve_inputs(delay_s: float, bytes_per_s: float, side: int) -> ThreadingHTTPServer:
    """GET /<n>.png: image n, answered after ``delay_s`` at ``bytes_per_s``."""
    images: dict[int, bytes] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            index = int(self.path.strip("/").removesuffix(".png"))
            with lock:
                body = images.get(index) or images.setdefault(index, noise_png(index, side))
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            _send_slowly(self.wfile, body, bytes_per_s)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class SlowLink:
    """A TCP proxy on 127.0.0.1: each request from the client (bytes after a quiet spell)
    waits ``delay_s``, and the client's bytes go at ``bytes_per_s``; answers go back as
    they come."""

    def __init__(self, upstream: tuple[str, int], delay_s: float, bytes_per_s: float) -> None:
        self.upstream, self.delay_s, self.bytes_per_s = upstream, delay_s, bytes_per_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.closing(client), socket.create_connection(self.upstream) as server:
            quiet = True  # the next bytes from the client start a request
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.05)
                if not ready:
                    quiet = True
                    continue
                for sock in ready:
                    data = sock.recv(64 * 1024)
                    if not data:
                        return
                    if sock is client:
                        if quiet:
                            time.sleep(self.delay_s)
                        quiet = False
                        server.sendall(data)
                        time.sleep(len(data) / self.bytes_per_s)
                    else:
                        quiet = True  # the answer came: the next request waits again
                        client.sendall(data)


def world_main(args: argparse.Namespace) -> int:
    """``--world``: start the servers, print their addresses, serve until stdin closes."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    inputs = serve_inputs(args.input_delay_s, args.input_mbps * 1e6, args.side)
    link = SlowLink((host, port), args.upload_delay_s, args.upload_mbps * 1e6)
    print(
        json.dumps(
            {
                "inputs": f"http://127.0.0.1:{inputs.server_address[1]}",
                "s3": f"http://127.0.0.1:{link.port}",
                "s3_direct": f"http://{host}:{port}",
            }
        ),
        flush=True,
    )
    sys.stdin.read()  # until the parent ends
    return 0


@contextlib.contextmanager
def world(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    command = [args.world_python, __file__, "--world", *_world_flags(args)]
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        urls: dict[str, str] = json.loads(child.stdout.readline())
        import boto3

        boto3.client(
            "s3",
            endpoint_url=urls["s3_direct"],
            aws_access_key_id=_KEYS["BUCKET_ACCESS_KEY_ID"],
            aws_secret_access_key=_KEYS["BUCKET_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        try:
            yield urls
        finally:
            child.stdin.close()
            child.wait(10)


def _world_flags(args: argparse.Namespace) -> list[str]:
    names = ("input_delay_s", "input_mbps", "upload_delay_s", "upload_mbps", "side")
    return [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]


# -- the engine: a stand-in, or ComfyUI with a sleeping custom node ----------------------


class SleepRuntime:
    """A stand-in engine for the three nodes of the benchmark's workflow: LoadImage reads
    the file, BenchSleep sleeps (interruptible, holding no lock), SaveImage writes a PNG
    into the job's output folder as ComfyUI would, its ui dict in ComfyUI's shape."""

    def __init__(self, work_dir: Path) -> None:
        from engine.deadline import JobThread
        from engine.runtime import Directories

        self._dirs = Directories(work_dir / "input", work_dir / "output", work_dir / "temp")
        self._thread = JobThread("bench-engine")
        self._interrupt = threading.Event()

    @property
    def directories(self) -> Any:
        return self._dirs

    @property
    def job_thread(self) -> Any:
        return self._thread

    def boot(self) -> None:
        for folder in (self._dirs.input, self._dirs.output, self._dirs.temp):
            folder.mkdir(parents=True, exist_ok=True)

    def file_inputs(self, class_type: str) -> frozenset[str]:
        return frozenset({"image"}) if class_type == "LoadImage" else frozenset()

    def node_definitions(self) -> dict[str, Any]:
        return {}

    def model_folder_of(self, class_type: str, input_name: str) -> None:
        return None

    def model_folders(self) -> list[Any]:
        return []

    def forget_model_files(self, folder_name: str) -> None:
        del folder_name

    def validate(self, job: Any) -> Any:
        return job  # the benchmark's three nodes, always the same: nothing to check

    def run(self, job: Any) -> Any:
        from PIL import Image

        from engine.errors import JobInterruptedError
        from engine.runtime import RunResult

        self._interrupt.clear()
        started = time.perf_counter()
        nodes = job.workflow
        with Image.open(self._dirs.input / nodes["1"]["inputs"]["image"]) as opened:
            image = opened.convert("RGB")
        if self._interrupt.wait(float(nodes["2"]["inputs"]["seconds"])) or job.deadline.expired():
            raise JobInterruptedError("interrupted", [])
        prefix = nodes["3"]["inputs"]["filename_prefix"]
        subfolder, _, base = prefix.rpartition("/")
        (self._dirs.output / subfolder).mkdir(parents=True, exist_ok=True)
        name = f"{base}_00001_.png"
        image.save(self._dirs.output / subfolder / name, compress_level=4)
        ui = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
        return RunResult(outputs={"3": ui}, timings={"execute_s": time.perf_counter() - started})

    def after_job(self) -> None:
        return None

    def interrupt(self) -> None:
        self._interrupt.set()


def make_runtime(args: argparse.Namespace, work: Path) -> tuple[Metered, dict[str, str]]:
    """The metered runtime, booted, and the settings' environment it needs."""
    env: dict[str, str] = {}
    if not args.comfyui:
        runtime = Metered(SleepRuntime(work))
        runtime.boot()
        return runtime, env
    from engine.runtime.comfy import ComfyRuntime
    from engine.settings import Settings

    yaml = sleep_node_paths(work)
    env = {
        "COMFYUI_PATH": args.comfyui,
        "EXTRA_MODEL_PATHS": str(yaml),
        "COMFY_LOG_LEVEL": "WARNING",
    }
    comfy = ComfyRuntime(Settings.from_env({**env, "WORKER_DIR": str(work)}))
    comfy.boot()
    return Metered(comfy), env


# -- the streams ------------------------------------------------------------------------


@dataclass
class Figures:
    jobs: int
    wall_s: float
    busy_s: float

    @property
    def per_minute(self) -> float:
        return 60.0 * self.jobs / self.wall_s

    @property
    def busy(self) -> float:
        return self.busy_s / self.wall_s


def workflow(image: str, seconds: float, prefix: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "BenchSleep", "inputs": {"image": ["1", 0], "seconds": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def stream(worker: Any, runtime: Metered, jobs: list[dict[str, Any]], callers: int) -> Figures:
    """Send ``jobs`` through ``worker`` with ``callers`` in flight at once, as the SDK does."""
    wall, busy = stream_jobs(worker, runtime, jobs, callers)
    return Figures(len(jobs), wall, busy)


def run_streams(
    args: argparse.Namespace,
    runtime: Metered,
    env: dict[str, str],
    work: Path,
    urls: dict[str, str] | None,
) -> dict[int, list[Figures]]:
    from engine.settings import Settings
    from engine.worker import Worker

    base = {
        **env,
        "WORKER_DIR": str(work),
        "INPUT_ALLOW_PRIVATE_URLS": "true",
        "OUTPUT_METADATA": "false",
        "COMFY_LOG_LEVEL": "WARNING",
    }
    if urls is not None:
        base |= {"BUCKET_ENDPOINT_URL": f"{urls['s3']}/{BUCKET}", **_KEYS}
    workers = {}
    for n in (1, 2):
        worker = Worker(Settings.from_env({**base, "MAX_CONCURRENT_JOBS": str(n)}), runtime)  # type: ignore[arg-type]
        worker.boot()
        workers[n] = worker
    run_s = args.run_s if urls is not None else args.noio_run_s
    count = args.jobs if urls is not None else args.noio_jobs
    figures: dict[int, list[Figures]] = {1: [], 2: []}
    serial = 0
    for round_no in range(args.rounds + 1):  # round 0 warms up, unreported
        order = (1, 2) if round_no % 2 else (2, 1)
        for n in order:
            jobs = []
            for _ in range(count if round_no else 2):
                serial += 1
                name = f"in-{serial}.png"
                source = (
                    f"{urls['inputs']}/{serial}.png"
                    if urls is not None
                    else base64.b64encode(noise_png(serial, args.side)).decode()
                )
                jobs.append(
                    {
                        "id": f"bench-{serial}",
                        "input": {
                            "workflow": workflow(name, run_s, "bench"),
                            "images": [{"name": name, "image": source}],
                        },
                    }
                )
            result = stream(workers[n], runtime, jobs, n)
            if round_no:
                figures[n].append(result)
                print(
                    f"  round {round_no} MAX_CONCURRENT_JOBS={n}: {result.per_minute:6.1f} jobs/min,"
                    f" engine busy {100 * result.busy:5.1f}% ({result.jobs} jobs in {result.wall_s:.1f} s)",
                    flush=True,
                )
    return figures


def report(title: str, figures: dict[int, list[Figures]]) -> None:
    one, two = figures[1], figures[2]
    ratios = [b.per_minute / a.per_minute for a, b in zip(one, two, strict=True)]
    print(f"{title}:")
    for n, runs in figures.items():
        print(
            f"  MAX_CONCURRENT_JOBS={n}: median {statistics.median(r.per_minute for r in runs):.1f}"
            f" jobs/min, engine busy median {100 * statistics.median(r.busy for r in runs):.1f}%"
        )
    outside = statistics.median((r.wall_s - r.busy_s) / r.jobs for r in one)
    inside = statistics.median(r.busy_s / r.jobs for r in one)
    print(
        f"  one at a time, a job spends {outside:.3f} s outside the engine (I/O and the"
        f" rest) against {inside:.3f} s in it (medians)"
    )
    print(
        f"  2 against 1: jobs/min x{statistics.median(ratios):.2f} median of rounds"
        f" (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--comfyui",
        default=os.environ.get("COMFYUI_PATH"),
        help="ComfyUI checkout (default: $COMFYUI_PATH; none: the stand-in engine)",
    )
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="use the stand-in engine even when COMFYUI_PATH is set",
    )
    parser.add_argument(
        "--world-python",
        default=sys.executable,
        help="the Python that runs the servers (needs moto and Pillow; default: this one)",
    )
    parser.add_argument("--jobs", type=int, default=20, help="jobs per stream with I/O")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternated rounds (each: a stream per setting)"
    )
    parser.add_argument("--run-s", type=float, default=0.5, help="seconds the sleeping node takes")
    parser.add_argument(
        "--side", type=int, default=384, help="input and output images: side in pixels (noise)"
    )
    parser.add_argument(
        "--input-delay-s", type=float, default=0.15, help="the URL server's delay per request"
    )
    parser.add_argument(
        "--input-mbps", type=float, default=2.0, help="the URL server's bandwidth, MB/s"
    )
    parser.add_argument(
        "--upload-delay-s", type=float, default=0.1, help="the S3 link's delay per request"
    )
    parser.add_argument(
        "--upload-mbps", type=float, default=4.0, help="the S3 link's upload bandwidth, MB/s"
    )
    parser.add_argument("--skip-io", action="store_true", help="only the streams without I/O")
    parser.add_argument("--noio-jobs", type=int, default=40, help="jobs per stream without I/O")
    parser.add_argument(
        "--noio-run-s", type=float, default=0.1, help="the node's seconds without I/O"
    )
    args = parser.parse_args()
    if args.world:
        return world_main(args)
    if args.stand_in:
        args.comfyui = None
    logging.basicConfig(level=logging.WARNING)
    from engine import logs

    logs.configure("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        runtime, env = make_runtime(args, work)
        engine = f"ComfyUI at {args.comfyui}" if args.comfyui else "the stand-in engine"
        size = len(noise_png(0, args.side))
        print(
            f"engine: {engine}; {os.cpu_count()} CPU(s); the node sleeps {args.run_s} s;"
            f" (without I/O {args.noio_run_s} s); images {args.side}x{args.side} noise (~{size / 1e6:.2f} MB PNG in)"
        )
        print(
            f"I/O: input after {args.input_delay_s} s at {args.input_mbps} MB/s; S3 (moto) behind"
            f" {args.upload_delay_s} s per request and {args.upload_mbps} MB/s up"
        )
        with_io = None
        if not args.skip_io:
            with world(args) as urls:
                with_io = run_streams(args, runtime, env, work, urls)
        without_io = run_streams(args, runtime, env, work, None)
        if with_io is not None:
            report(f"with I/O ({args.jobs} jobs a stream)", with_io)
        report(
            f"without I/O ({args.noio_jobs} jobs a stream, node {args.noio_run_s} s, base64 in and out)",
            without_io,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
