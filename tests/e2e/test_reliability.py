"""Reliability under faults, with real servers on 127.0.0.1 and the fake runtime.

Each test breaks one thing the way the world does and checks three promises: the job
gets a clear error within its deadline, nothing it made is left behind, and the worker
serves the next job. Input URLs that hang, trickle, send short bodies or redirect in a
loop (tests/e2e/test_input_urls.py covers the fetcher's own limits; these go through the
whole worker); a cancel while a download is held open; a worker killed with SIGKILL
mid-job and restarted on the same folders; a disk that fills up; 50 concurrent jobs.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.e2e.conftest import WorkerServer, files_left
from tests.fake_runtime import FakeRuntime
from tests.local_http import LoopbackServer

pytestmark = pytest.mark.e2e

DOWNLOAD_TIMEOUT_S = 0.5  # INPUT_DOWNLOAD_TIMEOUT_S for the fault tests
JOB_TIMEOUT_S = 20.0  # far above every fault's own bound: the job must end well before


def png(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about ``side * side * 3`` bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def first_pixel(item: dict[str, Any]) -> tuple[int, ...]:
    raw = base64.b64decode(item["data"].partition(",")[2])
    value: tuple[int, ...] = Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))
    return value


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- input URL servers that misbehave ---------------------------------------------------


class FaultServer:
    """One endpoint per fault. ``/hold`` keeps the request open until ``release`` is set
    and sets ``held`` when it arrives: the cue a cancel test waits for."""

    def __init__(self) -> None:
        self.good = png((10, 20, 30))
        self.held = threading.Event()
        self.release = threading.Event()
        self.requests: list[str] = []
        self.server = LoopbackServer(type("Handler", (_FaultHandler,), {"site": self}))
        self.url = self.server.url

    def close(self) -> None:
        self.release.set()
        self.server.close()


class _FaultHandler(BaseHTTPRequestHandler):
    site: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet; the paths are recorded instead."""

    def do_GET(self) -> None:
        self.site.requests.append(self.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route()

    def _route(self) -> None:
        site = self.site
        if self.path == "/good.png":
            self._headers(200, len(site.good))
            self.wfile.write(site.good)
        elif self.path in {"/hang", "/hold"}:
            site.held.set()
            site.release.wait(60)  # answers nothing until the test ends
        elif self.path == "/trickle":
            # One byte per 0.1 s: each within any read timeout, the whole past the deadline.
            self._headers(200, len(site.good))
            for byte in site.good:
                if site.release.wait(0.1):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        elif self.path == "/short":
            # Content-Length promises the whole image; the server hangs up after 40 bytes.
            self._headers(200, len(site.good))
            self.wfile.write(site.good[:40])
            self.wfile.flush()
            self.close_connection = True
        elif self.path in {"/loop-a", "/loop-b"}:
            self.send_response(302)
            self.send_header("Location", "/loop-b" if self.path == "/loop-a" else "/loop-a")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._headers(404, 0)

    def _headers(self, status: int, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


def url_worker(tmp_path: Path, **overrides: Any) -> Worker:
    """A worker with the real HTTP fetcher, allowed to reach 127.0.0.1."""
    fields: dict[str, Any] = {
        "work_dir": tmp_path / "work",
        "input_allow_private_urls": True,
        "input_download_timeout_s": DOWNLOAD_TIMEOUT_S,
        "job_timeout_s": JOB_TIMEOUT_S,
        **overrides,
    }
    settings = Settings(**fields)
    worker = Worker(settings, FakeRuntime(settings))
    worker.boot()
    return worker


def url_job(job_id: str, url: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "input": {
            "workflow": workflows.invert("a.png"),
            "images": [{"name": "a.png", "image": url}],
        },
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/hang", "timed out"),
        ("/trickle", "timed out"),
        ("/short", "received 40 bytes"),  # of the 82 its Content-Length promised
        ("/loop-a", "too many redirects"),
    ],
)
def test_a_misbehaving_url_fails_its_job_clearly_and_the_next_job_is_served(
    fault_server: FaultServer, tmp_path: Path, path: str, expected: str
) -> None:
    worker = url_worker(tmp_path)
    started = time.monotonic()
    body = worker.handle(url_job("bad", fault_server.url + path))
    elapsed = time.monotonic() - started
    assert body["code"] == "input_images_failed", body
    assert body["error"].startswith(
        f"Failed to upload one or more input images: a.png: Failed to download image from URL: "
        f"{fault_server.url}{path}"
    )
    assert expected in body["error"], body["error"]
    assert elapsed < JOB_TIMEOUT_S / 2  # ended by the fault's own bound, not the job's limit
    assert files_under(tmp_path / "work") == []
    fault_server.release.set()  # the hung request may end now
    good = worker.handle(url_job("next", fault_server.url + "/good.png"))
    assert good["errors"] == [] and first_pixel(good["images"][0]) == (245, 235, 225)
    assert files_under(tmp_path / "work") == []


def test_a_cancel_while_a_download_is_held_open_ends_the_job_at_once(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """The server holds the request and answers nothing; the download limit is a minute,
    so only the cancel (sent on the server's cue) can end the job this soon."""
    worker = url_worker(tmp_path, input_download_timeout_s=60.0)
    answer: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: answer.append(worker.handle(url_job("held", fault_server.url + "/hold")))
    )
    thread.start()
    assert fault_server.held.wait(10)
    cancelled_at = time.monotonic()
    worker.cancel("held")
    thread.join(30)
    assert time.monotonic() - cancelled_at < 10
    (body,) = answer
    assert body["code"] == "execution_interrupted", body
    assert body["message"] == "The job was cancelled and stopped while downloading inputs"
    assert worker.runtime.jobs == []  # type: ignore[attr-defined]
    good = worker.handle(url_job("next", fault_server.url + "/good.png"))
    assert good["errors"] == [], good
    assert files_under(tmp_path / "work") == []


# -- kill -9 mid-job, then a restart on the same folders --------------------------------


def wait_for_file(path: Path, server: WorkerServer, timeout_s: float = 30.0) -> None:
    """Wait for a cue file the worker's job writes (the bound only guards a broken test)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no cue {path.name}; the worker said:\n{server.log()}")
        time.sleep(0.02)


def test_a_worker_killed_mid_job_leaves_nothing_a_later_job_can_read(tmp_path: Path) -> None:
    """The issue's case, really killed: job A sends killme.png and is mid-run when the
    worker gets SIGKILL. The restarted worker sweeps A's files at boot; job B, which names
    killme.png without sending it, fails saying it is not found, and a file baked into the
    input folder is still there and still served."""
    work = tmp_path / "work"
    (work / "input").mkdir(parents=True)
    (work / "input" / "baked.png").write_bytes(png((0, 0, 200)))
    cue, never = tmp_path / "started", tmp_path / "never"
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "killme.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
        "3": {
            "class_type": "TestWaitFile",
            "inputs": {"images": ["1", 0], "cue": str(cue), "release": str(never)},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}},
    }
    killme = base64.b64encode(png((255, 0, 0))).decode()
    first = WorkerServer({}, tmp_path / "first.log", work)
    try:
        queued = first.client.post(
            "/run",
            json={
                "input": {"workflow": workflow, "images": [{"name": "killme.png", "image": killme}]}
            },
        ).json()

        def run_it() -> None:
            # The local API server runs a /run job when its status is asked for; the
            # kill ends this request.
            with contextlib.suppress(httpx.HTTPError):
                first.client.post(f"/status/{queued['id']}")

        poller = threading.Thread(target=run_it, daemon=True)
        poller.start()
        wait_for_file(cue, first)
        left = {p.relative_to(work).parts[0] for p in files_under(work)}
        assert any(p.name == "killme.png" for p in files_under(work / "input"))
        assert left == {"input", "output"}  # A's input and its first output
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        poller.join(10)
    finally:
        first.close()
    assert any(p.name == "killme.png" for p in files_under(work / "input"))  # nobody cleaned

    second = WorkerServer({}, tmp_path / "second.log", work)
    try:
        assert files_under(work) == [work / "input" / "baked.png"]
        body = second.runsync({"workflow": workflows.invert("killme.png")})
        assert body["status"] == "FAILED", body
        assert "file 'killme.png' not found" in body["error"]
        baked = second.runsync({"workflow": workflows.invert("baked.png")})
        assert baked["status"] == "COMPLETED", baked
        assert first_pixel(baked["output"]["images"][0]) == (255, 255, 55)
        # The killed job's input and output folders.
        assert "removed 2 file(s) or folder(s) that killed jobs left behind" in second.log()
    finally:
        second.close()


# -- a disk that fills up ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, where this machine lets the test mount one."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here (no mount command: {exc})")
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, timeout=30)


def test_a_full_disk_fails_the_job_clearly_and_leaves_nothing(small_disk: Path) -> None:
    """An input that does not fit, then an output that does not fit: each job fails naming
    the full disk, no half-written file stays, and a small job still runs."""
    settings = Settings(work_dir=small_disk / "work")
    worker = Worker(settings, FakeRuntime(settings))
    worker.boot()

    too_big = base64.b64encode(noise_png(1000)).decode()  # ~3 MB on a 2 MB disk
    body = worker.handle(
        {
            "id": "in",
            "input": {
                "workflow": workflows.invert("big.png"),
                "images": [{"name": "big.png", "image": too_big}],
            },
        }
    )
    assert body["code"] == "input_images_failed", body
    assert "big.png: could not be written (No space left on device)" in body["error"]
    assert files_under(settings.work_dir) == []

    fits_once = base64.b64encode(noise_png(600)).decode()  # ~1.1 MB: stored, not saved again
    body = worker.handle(
        {
            "id": "out",
            "input": {
                "workflow": workflows.invert("big.png"),
                "images": [{"name": "big.png", "image": fits_once}],
            },
        }
    )
    assert body["code"] == "execution_failed", body
    assert "Node 3 (SaveImage) failed" in body["error"]
    assert "No space left on device" in body["error"]
    assert files_under(settings.work_dir) == []

    small = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert len(small["images"]) == 1 and small["errors"] == []
    assert files_under(settings.work_dir) == []


# -- many jobs at once ------------------------------------------------------------------


def test_fifty_concurrent_run_jobs_all_complete_each_with_its_own_image(
    tmp_path: Path,
) -> None:
    """50 /run jobs, their statuses polled at once over real HTTP; each job sends an image
    of its own colour under the same name, and each gets back its own colour inverted:
    no job reads another's input, and no file is left behind."""
    work = tmp_path / "work"
    server = WorkerServer({}, tmp_path / "worker.log", work)
    try:
        colors = [(i * 5, 100, 255 - i * 5) for i in range(50)]
        ids = []
        for color in colors:
            job_input = {
                "workflow": workflows.invert("same-name.png"),
                "images": [
                    {"name": "same-name.png", "image": base64.b64encode(png(color)).decode()}
                ],
            }
            queued = server.client.post("/run", json={"input": job_input})
            ids.append(queued.json()["id"])

        def status(job_id: str) -> dict[str, Any]:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                body: dict[str, Any] = client.post(f"/status/{job_id}").json()
                return body

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(status, ids))
        assert [r["status"] for r in results] == ["COMPLETED"] * 50, results
        got = [first_pixel(r["output"]["images"][0]) for r in results]
        assert got == [(255 - r, 255 - g, 255 - b) for r, g, b in colors]
        assert files_left(work) == []
    finally:
        server.close()
