"""A cancel through the runpod SDK's own worker loop, over real HTTP on 127.0.0.1.

The SDK's local API server (``--rp_serve_api``) has no cancel route, so this test plays
RunPod's side instead: a small job API that hands out jobs (``/job-take``), sends stop
signals on the long-polled stop channel (``/job-stop``, what RunPod uses for ``/cancel``
and for an endpoint's execution timeout) and takes results (``/job-done``). The worker
is ``python handler.py`` exactly as RunPod starts it, with the fake runtime.

The job is cancelled while its input download is held open by the image server (a cue
from that server says the download started); the download limit is a minute, so only
the cancel can end it that soon. The next job is then served while the first download
is still held.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests import workflows
from tests.e2e.conftest import REPO, stop, worker_env
from tests.e2e.test_reliability import FaultServer, files_under
from tests.local_http import LoopbackServer

pytestmark = pytest.mark.e2e

# How long the fake job API holds an empty poll before answering "nothing" (RunPod's
# own polls are long-held too; an at-once 204 would have the SDK spin).
_EMPTY_POLL_S = 0.2


class FakeRunPodApi:
    """RunPod's side of the worker protocol, as the runpod SDK 1.12 speaks it."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.to_stop: queue.Queue[str] = queue.Queue()
        self.results: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.server = LoopbackServer(type("Handler", (_ApiHandler,), {"api": self}))
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


class _ApiHandler(BaseHTTPRequestHandler):
    api: FakeRunPodApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/job-take/"):
            try:
                job = self.api.jobs.get(timeout=_EMPTY_POLL_S)
            except queue.Empty:
                self._send(204, b"")
                return
            self._send(200, json.dumps(job).encode())
        elif path.startswith("/job-take-batch/"):
            # The SDK asks for as many jobs as it has room for (MAX_CONCURRENT_JOBS through
            # its concurrency_modifier): a list of up to batch_size jobs.
            size = int(parse_qs(parts.query).get("batch_size", ["1"])[0])
            try:
                jobs = [self.api.jobs.get(timeout=_EMPTY_POLL_S)]
            except queue.Empty:
                self._send(204, b"")
                return
            while len(jobs) < size and not self.api.jobs.empty():
                jobs.append(self.api.jobs.get_nowait())
            self._send(200, json.dumps(jobs).encode())
        elif path.startswith("/job-stop/"):
            try:
                job_id = self.api.to_stop.get(timeout=_EMPTY_POLL_S)
            except queue.Empty:
                self._send(204, b"")
                return
            self._send(200, json.dumps({"jobsToStop": [job_id]}).encode())
        else:
            self._send(200, b"{}")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        result = json.loads(body or b"{}")
        # Progress updates go to the same URL, marked IN_PROGRESS; results are the rest.
        if path.startswith("/job-done/") and result.get("status") != "IN_PROGRESS":
            self.api.results.put((path.rsplit("/", 1)[1], result))
        self._send(200, b"{}")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def runpod_api() -> Iterator[FakeRunPodApi]:
    api = FakeRunPodApi()
    yield api
    api.close()


def start_queue_worker(api: FakeRunPodApi, work: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``python handler.py`` as RunPod runs it: jobs come from the job API, not a test input."""
    extra = {
        "INPUT_ALLOW_PRIVATE_URLS": "true",
        "INPUT_DOWNLOAD_TIMEOUT_S": "60",
        "RUNPOD_POD_ID": "test-worker",
        "RUNPOD_AI_API_KEY": "test-key",
        "RUNPOD_WEBHOOK_GET_JOB": f"{api.url}/job-take/$ID?gpu=test",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{api.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
        # The SDK's start-up checks look for a GPU and disk space; a test machine has neither
        # need.
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "handler.py"],
            cwd=REPO,
            env=worker_env(work, extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_a_runpod_cancel_stops_a_held_download_and_the_next_job_is_served(
    runpod_api: FakeRunPodApi, tmp_path: Path
) -> None:
    images = FaultServer()
    work, log_path = tmp_path / "work", tmp_path / "worker.log"
    worker = start_queue_worker(runpod_api, work, log_path)
    try:
        runpod_api.jobs.put(
            {
                "id": "held-job",
                "input": {
                    "workflow": workflows.invert("a.png"),
                    "images": [{"name": "a.png", "image": f"{images.url}/hold"}],
                },
            }
        )
        assert images.held.wait(60), log_path.read_text(errors="replace")
        runpod_api.to_stop.put("held-job")
        runpod_api.jobs.put({"id": "next-job", "input": {"workflow": workflows.batch(1)}})
        job_id, result = runpod_api.results.get(timeout=60)
        log = log_path.read_text(errors="replace")
        assert job_id == "next-job", (job_id, result, log)
        assert len(result["output"]["images"]) == 1, result
        assert not images.release.is_set()  # the first download is still held open
        assert "job held-job cancelled: stopping it" in log
        assert "The job was cancelled and stopped while downloading inputs" in log
        deadline = time.monotonic() + 10
        while files_under(work) and time.monotonic() < deadline:  # next-job's cleanup
            time.sleep(0.02)
        assert files_under(work) == []
        assert runpod_api.results.empty()  # a cancelled job posts no result
    finally:
        stop(worker)
        images.close()
