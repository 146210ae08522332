"""Reliability of the worker's I/O against servers on 127.0.0.1 that trickle, hang, and
send empty or short bodies: every download stops at the job's deadline and on cancel
(never reaching the stuck-worker path), the model cache keeps only whole files within
its limit, and a killed worker's partial download is gone after the next boot.

Each job here has a short limit and a long stop grace (``JOB_STOP_GRACE_S``): a phase
that does not stop by itself would show as ``worker_stuck``, which no test accepts.
Cues come from the servers (a request arrived, a chunk was sent), never from sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.deadline import Deadline
from engine.errors import JobInterruptedError
from engine.fetch import HttpFetcher
from engine.model_cache import CACHE_DIR_NAME
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.e2e.conftest import WorkerServer
from tests.e2e.dead_ends import FullQueue, SilentTls
from tests.e2e.test_reliability import files_under, first_pixel, png
from tests.fake_runtime import FakeRuntime
from tests.local_http import LoopbackServer
from tests.media_factory import tiny_frames_video
from tests.unit.test_pipeline import wait_until

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 2.0
# Far above the job's limit: a job still running this long after it has not stopped
# by itself, and the worker would call itself stuck.
STOP_GRACE_S = 30.0
TRICKLE_BYTES = 4096  # the server: 4 KB every 0.2 s
TRICKLE_PAUSE_S = 0.2


def safetensors(size: int) -> bytes:
    header = json.dumps({"__metadata__": {"kind": "test"}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(i % 251 for i in range(size))


class Site:
    """Model files and input images, served well and badly; ``sent`` is set once a
    trickle has sent its first chunk (the cue for a cancel)."""

    def __init__(self) -> None:
        self.model = safetensors(200_000)
        # 2 MB at 20 KB/s: 100 s, past the job's limit and its stop grace together, and
        # more than a megabyte (a check per megabyte would come after 50 s).
        self.trickled = safetensors(2_000_000)
        self.small_model = safetensors(100_000)
        self.image = png((10, 20, 30))
        self.sent = threading.Event()
        self.stop = threading.Event()
        self.release = threading.Event()
        self.requests: list[str] = []
        self.server = LoopbackServer(type("Handler", (_Handler,), {"site": self}))
        self.url = self.server.url

    def close(self) -> None:
        self.stop.set()
        self.release.set()
        self.server.close()


class _Handler(BaseHTTPRequestHandler):
    site: Site
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet; the paths are recorded instead."""

    def do_GET(self) -> None:
        self.site.requests.append(self.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(self.path)

    def _route(self, path: str) -> None:
        site = self.site
        if path in {"/trickle.safetensors", "/trickle.png"}:
            body = site.trickled if path.endswith(".safetensors") else site.image + site.trickled
            self._head(200, len(body))
            for start in range(0, len(body), TRICKLE_BYTES):
                self.wfile.write(body[start : start + TRICKLE_BYTES])
                self.wfile.flush()
                site.sent.set()
                if site.stop.wait(TRICKLE_PAUSE_S):
                    return
        elif path == "/silent.safetensors":
            self._head(200, len(site.model))
            self.wfile.write(site.model[:1000])
            self.wfile.flush()
            site.sent.set()
            site.stop.wait(60)
        elif path == "/hold.safetensors":
            site.sent.set()  # the request is here; no byte of an answer will follow
            site.stop.wait(60)
        elif path == "/empty.safetensors":
            self._head(200, 0)
        elif path == "/short.safetensors":
            self._head(200, len(site.model))
            self.wfile.write(site.model[:1000])
            self.close_connection = True
        elif path == "/big.safetensors":
            self._head(200, len(site.model))
            self.wfile.write(site.model)
        elif path == "/unsized.safetensors":
            # No Content-Length: chunked, so the size is known only as bytes arrive.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            body = site.small_model
            for start in range(0, len(body), 16384):
                chunk = body[start : start + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/gated.safetensors":
            site.sent.set()
            site.release.wait(30)
            self._head(200, len(site.small_model))
            self.wfile.write(site.small_model)
        elif path == "/good.png":
            self._head(200, len(site.image))
            self.wfile.write(site.image)
        else:
            self._head(404, 0)

    def _head(self, status: int, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.close()


def make_worker(tmp_path: Path, **overrides: Any) -> Worker:
    fields: dict[str, Any] = {
        "work_dir": tmp_path / "work",
        "input_allow_private_urls": True,
        "job_timeout_s": JOB_TIMEOUT_S,
        "job_stop_grace_s": STOP_GRACE_S,
        **overrides,
    }
    settings = Settings(**fields)
    worker = Worker(settings, FakeRuntime(settings))
    worker.boot()
    return worker


def model_job(job_id: str, url: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "input": {
            "workflow": {
                "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": url}},
                "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
            }
        },
    }


def image_job(job_id: str, url: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "input": {
            "workflow": workflows.invert("a.png"),
            "images": [{"name": "a.png", "image": url}],
        },
    }


def cache_files(worker: Worker) -> list[Path]:
    models = worker.runtime.models_dir  # type: ignore[attr-defined]
    return sorted(p for p in Path(models).rglob("*") if p.is_file() and p.suffix != ".json")


def serves_the_next_job(worker: Worker, site: Site) -> None:
    site.stop.set()  # the bad server lets go of its connections
    body = worker.handle(image_job("next", site.url + "/good.png"))
    assert body.get("errors") == [], body
    assert first_pixel(body["images"][0]) == (245, 235, 225)


# -- the deadline and cancel, per read --------------------------------------------------


@pytest.mark.parametrize("path", ["/trickle.safetensors", "/silent.safetensors"])
def test_a_model_download_stops_at_the_job_deadline_not_the_stuck_worker_path(
    site: Site, tmp_path: Path, path: str
) -> None:
    """4 KB every 0.2 s (a megabyte takes 50 s), or one chunk then nothing: the job
    ends with its own timeout while downloading, and the worker takes the next job."""
    worker = make_worker(tmp_path)
    started = time.monotonic()
    body = worker.handle(model_job("slow", site.url + path))
    elapsed = time.monotonic() - started
    assert body["code"] == "job_timeout", body  # not worker_stuck
    assert "while downloading" in body["message"], body
    assert elapsed < STOP_GRACE_S
    assert cache_files(worker) == []
    serves_the_next_job(worker, site)


def test_a_cancel_stops_a_trickling_model_download_within_a_read(
    site: Site, tmp_path: Path
) -> None:
    worker = make_worker(tmp_path, job_timeout_s=600.0)
    answer: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            worker.handle(model_job("c", site.url + "/trickle.safetensors"))
        )
    )
    thread.start()
    assert site.sent.wait(30)
    worker.cancel("c")
    thread.join(STOP_GRACE_S)
    (body,) = answer
    assert body["code"] == "execution_interrupted", body
    assert "cancelled" in body["message"] and "downloading" in body["message"], body
    assert cache_files(worker) == []
    serves_the_next_job(worker, site)


def test_a_cancel_stops_a_model_download_still_waiting_for_its_headers(
    site: Site, tmp_path: Path
) -> None:
    """The server takes the request and answers nothing. The stall limit is a minute and
    the stop grace 3 s: only the cancel, shutting the connection, can end the job in time
    (before, the job waited out the stall limit and the worker declared itself stuck)."""
    worker = make_worker(tmp_path, job_timeout_s=600.0, job_stop_grace_s=3.0, download_stall_s=60.0)
    answer: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: answer.append(worker.handle(model_job("h", site.url + "/hold.safetensors")))
    )
    thread.start()
    assert site.sent.wait(30)
    worker.cancel("h")
    thread.join(30)
    (body,) = answer
    assert body["code"] == "execution_interrupted", body  # not worker_stuck
    assert "cancelled" in body["message"], body
    assert cache_files(worker) == []
    serves_the_next_job(worker, site)


def _cancel_when(worker: Worker, job: dict[str, Any], stuck: Callable[[], bool]) -> dict[str, Any]:
    """Run ``job``, cancel it once ``stuck()`` says it is waiting where only a cancel can
    end the wait, and return its answer (the stop grace bounds the join)."""
    answer: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answer.append(worker.handle(job)))
    thread.start()
    wait_until(stuck)
    worker.cancel(job["id"])
    thread.join(30)
    assert answer, "the job did not answer"
    return answer[0]


def test_a_cancel_stops_a_model_download_still_connecting(site: Site, tmp_path: Path) -> None:
    """The server's accept queue is full: the connect waits in SYN_SENT, past the 3 s stop
    grace (the stall limit, a minute, bounds it). Only the cancel, shutting the socket
    it connects on, ends it in time; before, the worker declared itself stuck."""
    queue = FullQueue()
    try:
        worker = make_worker(
            tmp_path, job_timeout_s=600.0, job_stop_grace_s=3.0, download_stall_s=60.0
        )
        body = _cancel_when(
            worker, model_job("k", queue.url + "/m.safetensors"), lambda: queue.connecting() > 0
        )
        assert body["code"] == "execution_interrupted", body  # not worker_stuck
        assert "cancelled" in body["message"], body
        assert queue.connecting() == 0  # the connect itself was cut, not left behind
    finally:
        queue.close()
    assert cache_files(worker) == []
    serves_the_next_job(worker, site)


def test_a_cancel_stops_a_model_download_in_its_tls_handshake(site: Site, tmp_path: Path) -> None:
    """The server takes the connection and the TLS hello and answers nothing: the
    handshake would wait out the minute of stall limit, past the 3 s stop grace."""
    silent = SilentTls()
    try:
        worker = make_worker(
            tmp_path, job_timeout_s=600.0, job_stop_grace_s=3.0, download_stall_s=60.0
        )
        body = _cancel_when(
            worker, model_job("t", silent.url + "/m.safetensors"), silent.hello.is_set
        )
        assert body["code"] == "execution_interrupted", body  # not worker_stuck
        assert "cancelled" in body["message"], body
    finally:
        silent.close()
    assert cache_files(worker) == []
    serves_the_next_job(worker, site)


def test_a_cancel_ends_an_input_download_in_its_tls_handshake_not_just_the_wait(
    tmp_path: Path,
) -> None:
    """An input download is waited for on a thread of its own, so the job answers at
    once either way; the cancel must also end the download itself, or each cancelled
    job would leave a connection and a thread behind for the stall limit."""
    silent = SilentTls()
    settings = Settings(work_dir=tmp_path, input_allow_private_urls=True, download_stall_s=60.0)
    deadline = Deadline.start(600.0)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            with HttpFetcher(settings) as fetcher:
                fetcher.fetch_within(silent.url + "/a.png", deadline)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=fetch)
    try:
        thread.start()
        assert silent.hello.wait(30)
        deadline.cancel()
        thread.join(10)  # far under the stall limit: only the cancel ends it in time
        assert not thread.is_alive(), "the handshake outlived the cancel"
    finally:
        silent.close()
    (error,) = errors
    assert isinstance(error, JobInterruptedError) and "cancelled" in error.message


def test_an_input_download_stops_at_the_job_deadline_before_its_own_limit(
    site: Site, tmp_path: Path
) -> None:
    """INPUT_DOWNLOAD_TIMEOUT_S is a minute here; the job's 2 s limit comes first."""
    worker = make_worker(tmp_path, input_download_timeout_s=60.0)
    body = worker.handle(image_job("slow", site.url + "/trickle.png"))
    assert body["code"] == "job_timeout", body
    assert "downloading inputs" in body["message"], body
    assert files_under(tmp_path / "work") == []
    serves_the_next_job(worker, site)


def test_a_stalled_model_server_fails_by_the_stall_limit(site: Site, tmp_path: Path) -> None:
    worker = make_worker(tmp_path, job_timeout_s=600.0, download_stall_s=0.3)
    body = worker.handle(model_job("stall", site.url + "/silent.safetensors"))
    assert body["code"] == "model_files_failed", body
    assert "the server sent nothing for 0.3 s (DOWNLOAD_STALL_S)" in body["error"], body
    serves_the_next_job(worker, site)


@pytest.mark.parametrize(
    ("job", "path"), [(model_job, "/trickle.safetensors"), (image_job, "/trickle.png")]
)
def test_a_download_under_the_minimum_rate_fails_naming_the_setting(
    site: Site, tmp_path: Path, job: Any, path: str
) -> None:
    """20 KB/s against a minimum of 1000 KB/s over 0.5 s: stopped after the first window."""
    worker = make_worker(
        tmp_path,
        job_timeout_s=600.0,
        input_download_timeout_s=600.0,
        download_min_kb_per_s=1000.0,
        download_rate_window_s=0.5,
    )
    body = worker.handle(job("slow", site.url + path))
    assert body["code"] in {"model_files_failed", "input_images_failed"}, body
    assert "under the minimum of 1000 KB/s (DOWNLOAD_MIN_KB_PER_S)" in body["error"], body
    serves_the_next_job(worker, site)


def test_a_video_of_many_tiny_frames_is_refused_at_the_frame_bound(
    site: Site, tmp_path: Path
) -> None:
    """5000 frames of 41 bytes against INPUT_MAX_FRAMES=1000: refused by count, the job
    ends on its own error, and the worker serves the next job."""
    worker = make_worker(tmp_path, job_timeout_s=600.0, input_max_frames=1000)
    video = base64.b64encode(tiny_frames_video(5000)).decode()
    body = worker.handle(
        {
            "id": "frames",
            "input": {
                "workflow": workflows.invert("a.png"),
                "images": [{"name": "many.mkv", "image": video}],
            },
        }
    )
    assert body["code"] == "input_images_failed", body
    assert "more than 1000 frames (INPUT_MAX_FRAMES)" in body["error"], body
    assert files_under(tmp_path / "work") == []
    serves_the_next_job(worker, site)


# -- the model cache holds only what was checked ----------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/empty.safetensors", "empty file (0 bytes)"),
        ("/short.safetensors", "RemoteProtocolError"),  # 1000 of the 200,075 bytes announced
    ],
)
def test_an_empty_or_short_body_is_never_cached(
    site: Site, tmp_path: Path, path: str, expected: str
) -> None:
    worker = make_worker(tmp_path, job_timeout_s=600.0)
    for job_id in ("first", "again"):
        body = worker.handle(model_job(job_id, site.url + path))
        assert body["code"] == "model_files_failed", body
        assert expected in body["error"], body
        assert cache_files(worker) == []
    assert site.requests.count(path) == 2  # asked again: nothing was kept


def test_the_cache_limit_counts_bytes_as_they_arrive_without_a_content_length(
    site: Site, tmp_path: Path
) -> None:
    """The cache holds 200 KB of a 250 KB limit; a body without Content-Length brings
    100 KB more: the older file is evicted as the bytes arrive, never both kept."""
    worker = make_worker(tmp_path, job_timeout_s=600.0, model_cache_max_bytes=250_000)
    assert worker.handle(model_job("a", site.url + "/big.safetensors")).get("errors") == []
    body = worker.handle(model_job("b", site.url + "/unsized.safetensors"))
    assert body.get("errors") == [], body
    files = cache_files(worker)
    assert [p.name.split("-", 1)[1] for p in files] == ["unsized.safetensors"]
    assert sum(p.stat().st_size for p in files) <= 250_000


def test_stats_have_the_model_downloads_as_a_phase_of_their_own(site: Site, tmp_path: Path) -> None:
    """The server holds the file until the test lets it go, 0.3 s after the request
    arrived: the download took at least that, and models_s says so."""
    worker = make_worker(tmp_path, job_timeout_s=600.0)

    def release_later() -> None:
        assert site.sent.wait(30)
        time.sleep(0.3)  # a lower bound the download cannot beat, whatever the machine
        site.release.set()

    threading.Thread(target=release_later, daemon=True).start()
    body = worker.handle(model_job("m", site.url + "/gated.safetensors"))
    stats = body["stats"]
    assert stats["models_s"] >= 0.3, stats
    assert stats["total_s"] >= stats["models_s"] + stats["execute_s"]


# -- a killed worker's partial download -------------------------------------------------


def test_a_killed_workers_partial_download_is_removed_at_the_next_boot(
    site: Site, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    env = {"INPUT_ALLOW_PRIVATE_URLS": "true", "JOB_TIMEOUT_S": "600"}
    url = site.url + "/trickle.safetensors"
    cache = work / "models" / "checkpoints" / CACHE_DIR_NAME
    first = WorkerServer(env, tmp_path / "first.log", work)
    try:
        queued = first.client.post("/run", json=model_job("k", url)).json()

        def run_it() -> None:
            with contextlib.suppress(httpx.HTTPError):
                first.client.post(f"/status/{queued['id']}")

        threading.Thread(target=run_it, daemon=True).start()
        assert site.sent.wait(60), first.log()
        parts: list[Path] = []
        for _ in range(600):  # the first chunk is on its way to the part file
            parts = [p for p in cache.glob(".*.part") if p.stat().st_size > 0]
            if parts or first.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert parts, first.log()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.close()
    assert all(p.exists() for p in parts)  # nobody cleaned up
    second = WorkerServer(env, tmp_path / "second.log", work)
    try:
        assert list(cache.glob(".*.part")) == [], second.log()
        assert "partial download(s) left by a killed worker" in second.log()
    finally:
        second.close()


def test_the_sha_of_what_is_cached_is_what_was_served(site: Site, tmp_path: Path) -> None:
    """The good path still holds: a whole file is cached under its hash."""
    worker = make_worker(tmp_path, job_timeout_s=600.0)
    digest = hashlib.sha256(site.model).hexdigest()
    body = worker.handle(model_job("ok", f"{site.url}/big.safetensors#sha256={digest}"))
    assert body.get("errors") == [], body
    (cached,) = cache_files(worker)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
