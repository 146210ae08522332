"""Jobs in flight together through the runpod SDK, over real HTTP: its local API server,
and its own queue loop (the job API played by the test, as RunPod's).

The local server does not ask the SDK's ``concurrency_modifier``: it hands every request
to the handler as it arrives, so ``MAX_CONCURRENT_JOBS`` is the worker's own. The queue
loop asks it, and takes that many jobs from the job API at once. Job A's run
waits for a file the test creates (``TestWaitFile``, a cue that crosses processes); job
B's input comes from a loopback server that notes when it is fetched. The properties
are proven by those cues, never by elapsed time.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests import workflows
from tests.e2e.conftest import WorkerServer, stop
from tests.e2e.test_reliability_cancel import FakeRunPodApi, runpod_api, start_queue_worker
from tests.local_http import LoopbackServer

__all__ = ["runpod_api"]  # a fixture, used by name

_HANG_S = 60.0  # bounds against a hang only: each wait ends on a cue


class InputSite:
    """Serves one PNG; ``fetched`` is set when it is asked for, and ``release_seen``
    records whether A's release file existed at that moment."""

    def __init__(self, release: Path) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (40, 80, 120)).save(buffer, "PNG")
        self.body = buffer.getvalue()
        self.release = release
        self.fetched = threading.Event()
        self.release_seen: list[bool] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                site.release_seen.append(site.release.exists())
                site.fetched.set()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(site.body)))
                self.end_headers()
                self.wfile.write(site.body)

        self.server = LoopbackServer(Handler)
        self.url = f"{self.server.url}/b.png"


@pytest.fixture
def cues(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "a-started", tmp_path / "a-release"


@pytest.fixture
def site(cues: tuple[Path, Path]) -> Iterator[InputSite]:
    served = InputSite(cues[1])
    try:
        yield served
    finally:
        served.server.close()


def held_run(cue: Path, release: Path) -> dict[str, Any]:
    return {
        "1": {"class_type": "TestWaitFile", "inputs": {"cue": str(cue), "release": str(release)}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
    }


def wait_for(condition: Any, what: str) -> None:
    pause = threading.Event()
    for _ in range(int(_HANG_S / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError(f"never happened: {what}")


def start(tmp_path: Path, jobs: int) -> WorkerServer:
    return WorkerServer(
        {"MAX_CONCURRENT_JOBS": str(jobs), "INPUT_ALLOW_PRIVATE_URLS": "true"},
        tmp_path / "worker.log",
        tmp_path / "work",
    )


def send_both(
    server: WorkerServer, cues: tuple[Path, Path], site: InputSite, pool: ThreadPoolExecutor
) -> tuple[Future[dict[str, Any]], Future[dict[str, Any]]]:
    cue, release = cues
    a = pool.submit(server.runsync, {"workflow": held_run(cue, release)})
    wait_for(cue.exists, "A's run started")
    b_input = {
        "workflow": workflows.invert("b.png"),
        "images": [{"name": "b.png", "image": site.url}],
    }
    b = pool.submit(server.runsync, b_input)
    return a, b


def test_the_next_jobs_input_is_fetched_while_a_run_is_held(
    tmp_path: Path, cues: tuple[Path, Path], site: InputSite
) -> None:
    """MAX_CONCURRENT_JOBS=2: B's input is downloaded while A's run waits for the test;
    both complete once A is let go."""
    server = start(tmp_path, 2)
    try:
        with ThreadPoolExecutor(2) as pool:
            a, b = send_both(server, cues, site, pool)
            assert site.fetched.wait(_HANG_S)
            assert site.release_seen == [False]  # fetched while A's run was held
            cues[1].write_text("go")
            first, second = a.result(_HANG_S), b.result(_HANG_S)
        assert first["status"] == second["status"] == "COMPLETED", (first, second)
        assert len(first["output"]["images"]) == len(second["output"]["images"]) == 1
        assert second["output"]["stats"]["wait_s"] >= 0.0
    finally:
        server.close()


def test_one_job_at_a_time_fetches_the_next_input_only_after_the_run(
    tmp_path: Path, cues: tuple[Path, Path], site: InputSite
) -> None:
    """MAX_CONCURRENT_JOBS=1: B reaches the worker and waits for a place (its log says
    so) without fetching anything; it fetches once A is done."""
    server = start(tmp_path, 1)
    try:
        with ThreadPoolExecutor(2) as pool:
            a, b = send_both(server, cues, site, pool)
            wait_for(lambda: "job waits for a place" in server.log(), "B waits for a place")
            assert not site.fetched.is_set()
            cues[1].write_text("go")
            first, second = a.result(_HANG_S), b.result(_HANG_S)
        assert first["status"] == second["status"] == "COMPLETED", (first, second)
        assert site.release_seen == [True]
        log = server.log()
        assert json.dumps(second["output"]["stats"]["wait_s"]) == "0.0", log
    finally:
        server.close()


def test_the_sdks_queue_loop_takes_two_jobs_and_overlaps_them(
    tmp_path: Path, cues: tuple[Path, Path], site: InputSite, runpod_api: FakeRunPodApi
) -> None:
    """``python handler.py`` as RunPod runs it: the SDK asks ``concurrency_modifier``, takes
    A from the job API, then B while A's run is held, and B's input is fetched meanwhile."""
    cue, release = cues
    worker = start_queue_worker(runpod_api, tmp_path / "work", tmp_path / "worker.log")
    try:
        runpod_api.jobs.put({"id": "a", "input": {"workflow": held_run(cue, release)}})
        # B is offered once A's run holds the engine: offered together, B's download could
        # end before A's run begins, which proves nothing (and failed on a loaded machine).
        wait_for(cue.exists, "A's run started")
        b_input = {
            "workflow": workflows.invert("b.png"),
            "images": [{"name": "b.png", "image": site.url}],
        }
        runpod_api.jobs.put({"id": "b", "input": b_input})
        log = tmp_path / "worker.log"
        assert site.fetched.wait(_HANG_S), log.read_text(errors="replace")
        assert site.release_seen == [False]  # fetched while A's run was held
        release.write_text("go")
        results = dict(runpod_api.results.get(timeout=_HANG_S) for _ in range(2))
        assert sorted(results) == ["a", "b"], results
        for result in results.values():
            assert len(result["output"]["images"]) == 1, result
    finally:
        stop(worker)
