"""Real servers on 127.0.0.1: the worker under the runpod SDK's local API server, S3 (moto),
and a fault proxy in front of S3."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from engine.settings import BucketSettings
from tests.e2e.fault_proxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
FAKE_RUNTIME = "tests.fake_runtime:FakeRuntime"

# The worker's own env vars and AWS's: a developer's shell must not leak into a test worker.
_SCRUBBED_PREFIXES = (
    "BUCKET_",
    "COMFY",
    "INPUT_",
    "JOB_",
    "RESPONSE_",
    "WORKER_",
    "AWS_",
    "RUNPOD_",
    "UPLOAD_",
    "MODEL_",
    "HF_",
    "CIVITAI_",
    "DOWNLOAD_",
    "MAX_CONCURRENT_JOBS",
)


def files_left(root: Path, expected: Collection[Path] = (), timeout_s: float = 60.0) -> list[Path]:
    """The files under ``root`` (sorted) once they are ``expected`` (none by default), or
    those there after ``timeout_s``.

    A job's files go just after its answer has been sent (``handler.py``), so a test that
    checks for leftovers right after a response waits for them to go: the check fails
    only if they never do.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        # os.walk, not rglob: a folder the worker removes meanwhile is skipped, not raised.
        left = sorted(
            Path(folder, name)
            for folder, _, names in os.walk(root)
            for name in names
            if Path(folder, name).is_file()
        )
        if left == sorted(expected) or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def free_port() -> int:
    """An ephemeral port on loopback, free when asked."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def worker_env(work_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a ``handler.py`` subprocess of a test gets: none of the developer's
    worker settings, the fake runtime, ``work_dir``, and ``extra`` over all that."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    return {
        **base,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "WORKER_RUNTIME": FAKE_RUNTIME,
        "WORKER_DIR": str(work_dir),
        "COMFY_LOG_LEVEL": "INFO",
        # WorkerServer waits for uvicorn's "running on" line: a shell's quieter level would hide it.
        "UVICORN_LOG_LEVEL": "info",
        **extra,
    }


# uvicorn's line once the worker's socket listens (UVICORN_LOG_LEVEL=info, worker_env).
_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+) ")


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate a worker process, killing it if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class WorkerServer:
    """``python handler.py --rp_serve_api`` in a subprocess, talked to over real HTTP."""

    def __init__(
        self, env: dict[str, str], log_path: Path, work_dir: Path, port: int | None = None
    ) -> None:
        """Start the worker and wait until it serves.

        Without ``port`` the worker binds a free port itself (``--rp_api_port 0``), so no
        other process can take it between a probe and the bind; ``port`` is for a test that
        must name the URL before the worker starts.
        """
        self.log_path = log_path
        self.work_dir = work_dir
        full_env = worker_env(work_dir, env)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "handler.py",
                "--rp_serve_api",
                "--rp_api_host",
                "127.0.0.1",
                "--rp_api_port",
                str(port or 0),
            ],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.port = self._wait_listening(port)
        except BaseException:
            stop(self.proc)
            self._log.close()
            raise
        self.url = f"http://127.0.0.1:{self.port}"
        # Bounds against a hang only, generous for a loaded 2-core machine: the SDK's local
        # /status answers when the job ends, and the worker starts in seconds.
        self.client = httpx.Client(base_url=self.url, timeout=300)

    def _wait_listening(self, port: int | None, timeout_s: float = 120.0) -> int:
        """The port the worker listens on, once its own log says so (uvicorn logs it after
        the socket listens and the app has started).

        Its own word, not an answer on the port: whatever server holds the port answers
        that, and a test would go on against it with the worker not started (its log empty).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_path.read_bytes())
            if found is not None:
                listening = int(found[1])
                if port is not None and listening != port:
                    raise RuntimeError(f"worker listens on {listening}, not {port}:\n{self.log()}")
                return listening
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited early (exit code {self.proc.returncode}):\n{self.log()}"
                )
            time.sleep(0.05)  # the log is a file: read again for the line
        raise RuntimeError(f"worker did not start in {timeout_s} s:\n{self.log()}")

    def state(self) -> str:
        """The process's state and its whole log, for a failing test's message."""
        code = self.proc.poll()
        alive = "running" if code is None else f"exited with code {code}"
        return f"worker pid {self.proc.pid} at {self.url}, {alive}; its log:\n{self.log()}"

    def log(self) -> str:
        """Everything the worker printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def runsync(self, job_input: Any) -> dict[str, Any]:
        """POST /runsync and return the JSON RunPod would."""
        response = self.client.post("/runsync", json={"input": job_input})
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def run_and_poll(self, job_input: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST /run, then POST /status/{id} (how the SDK's local server answers it)."""
        queued = self.client.post("/run", json={"input": job_input})
        queued.raise_for_status()
        job_id = queued.json()["id"]
        for _ in range(600):
            status = self.client.post(f"/status/{job_id}").json()
            if status["status"] in {"COMPLETED", "FAILED"}:
                return queued.json(), status
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish")

    def close(self) -> None:
        """Stop the worker."""
        self.client.close()
        stop(self.proc)
        self._log.close()


@pytest.fixture(autouse=True)
def no_developer_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's AWS credentials, profile or config never reach these tests."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., WorkerServer]]:
    """A factory: start a worker with extra env; all are stopped after the module."""
    servers: list[WorkerServer] = []

    def start(**env: str) -> WorkerServer:
        root = tmp_path_factory.mktemp("worker")
        server = WorkerServer(env, root / "worker.log", root / "work")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on an ephemeral loopback port, for the module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str, key_id: str, secret: str, prefix: str) -> str:
    """A fresh, empty, private bucket ``<prefix>-<12 hex>`` on the S3 server at ``endpoint``,
    made as its owner (past any proxy)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    return name


def bucket_settings(
    endpoint: str,
    bucket: str,
    key_id: str,
    secret: str,
    public_url: str | None = None,
    **limits: float,
) -> BucketSettings:
    """Settings for ``bucket`` at ``endpoint`` (the S3 server or a proxy in front of it), with
    a test's fake keys; ``limits`` set ``upload_timeout_s`` / ``upload_stall_s``."""
    return BucketSettings(
        endpoint_url=endpoint,
        bucket=bucket,
        access_key_id=key_id,
        secret_access_key=secret,
        region="us-east-1",
        url_expiry_s=600,
        public_url=public_url,
        **limits,
    )


@pytest.fixture
def fault_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A proxy to the S3 server that passes through until told to fail; any request it
    holds (``hang()``) is released at teardown."""
    proxy = FaultProxy(s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()
