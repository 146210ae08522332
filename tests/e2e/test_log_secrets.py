"""No secret reaches a log line, in any mode ``handler.py`` runs in: the runpod SDK's
test_input mode, its local API server, and RunPod's job queue (a fake queue on 127.0.0.1
that hands the SDK one job and takes its result), each at the SDK's DEBUG level, where
it prints whole jobs, and with an unusable variable, where the settings never load."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests import workflows
from tests.e2e.conftest import REPO, WorkerServer, stop, worker_env
from tests.local_http import LoopbackServer

ENV_SECRETS = {
    "COMFY_ORG_API_KEY": "env-comfy-key-5e1f0a",
    "HF_TOKEN": "hf_envtoken7b2c91",
    "CIVITAI_TOKEN": "civitai-envtoken-33d8",
}
REQUEST_KEY = "request-key-field-8c4e"
ALIAS_KEY = "request-key-alias-1f9d"
URL_TOKEN = "url-query-token-6a0b"
ALL_SECRETS = [*ENV_SECRETS.values(), REQUEST_KEY, ALIAS_KEY, URL_TOKEN]


def job_input(
    key_field: str = "comfy_org_api_key", key: str = REQUEST_KEY, *, url: bool = False
) -> dict[str, Any]:
    """A job carrying a key and a node whose error message holds the key and the
    environment's; with ``url``, also an input URL with a token in its query (refused,
    being on loopback, before the node runs). The worker must redact all of them."""
    job: dict[str, Any] = {
        "workflow": workflows.raises(f"leaked {key} {ENV_SECRETS['COMFY_ORG_API_KEY']}"),
        key_field: key,
    }
    if url:
        job["images"] = [{"name": "a.png", "image": f"http://127.0.0.1:9/a.png?token={URL_TOKEN}"}]
    return job


JOBS = [job_input(), job_input("api_key_comfy_org", ALIAS_KEY, url=True)]


def assert_clean(log: str) -> None:
    leaked = [secret for secret in ALL_SECRETS if secret in log]
    assert leaked == [], f"secrets in the log: {leaked}\n{log}"


def run_test_input(tmp_path: Path, job: dict[str, Any], **env: str) -> str:
    """``python handler.py --test_input ...``: the SDK's local test mode, one job, then exit."""
    proc = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(job)],
        cwd=REPO,
        env=worker_env(tmp_path / "work", {**ENV_SECRETS, **env}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"RUNPOD_LOG_LEVEL": "DEBUG"},
        # An unusable variable: the settings never load, the SDK's level must still be set.
        {"JOB_TIMEOUT_S": "soon"},
        {"JOB_TIMEOUT_S": "soon", "RUNPOD_LOG_LEVEL": "DEBUG"},
        # A level the SDK does not know: it would raise at import without the worker's help.
        {"RUNPOD_LOG_LEVEL": "WARNING"},
    ],
)
def test_test_input_mode(tmp_path: Path, env: dict[str, str]) -> None:
    log = run_test_input(tmp_path, {"input": job_input(url=True)}, **env)
    assert "Traceback" not in log, log
    if env.get("RUNPOD_LOG_LEVEL") == "DEBUG":
        # The SDK prints the whole job here: the line is there, the key is not.
        assert "Retrieved local job" in log and "'comfy_org_api_key': '***'" in log
    else:
        assert "Retrieved local job" not in log  # the SDK at INFO, whatever else failed
    if "JOB_TIMEOUT_S" in env:
        assert "JOB_TIMEOUT_S must be a number" in log
    if env.get("RUNPOD_LOG_LEVEL") == "WARNING":
        assert "RUNPOD_LOG_LEVEL must be one of" in log
    assert_clean(log)


def test_test_input_mode_with_the_request_as_a_json_string(tmp_path: Path) -> None:
    """worker-comfyui's string input: the keys inside the string are kept out too."""
    as_string = json.dumps(job_input("api_key_comfy_org", ALIAS_KEY))
    log = run_test_input(tmp_path, {"input": as_string}, RUNPOD_LOG_LEVEL="DEBUG")
    assert "Retrieved local job" in log and "leaked *** ***" in log
    assert_clean(log)


def test_local_api_server_mode(tmp_path: Path) -> None:
    server = WorkerServer(
        {**ENV_SECRETS, "RUNPOD_LOG_LEVEL": "DEBUG"}, tmp_path / "w.log", tmp_path
    )
    try:
        for job in JOBS:
            body = server.runsync(job)
            assert body["status"] == "FAILED"
            assert_clean(json.dumps(body))
        log = server.log()
    finally:
        server.close()
    assert "Handler output" in log  # the SDK's DEBUG lines were printed, redacted
    assert_clean(log)


class FakeQueue:
    """RunPod's job queue as the SDK's worker loop talks to it: job-take (and job-take-batch,
    which the SDK uses when it takes more than one job at once) hands out the jobs given,
    once each; job-stop has nothing; every POST (progress, results) is kept."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = list(jobs)
        self.posts: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.done = threading.Event()
        expected = len(jobs)
        queue = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/job-take/") and queue.jobs:
                    payload = json.dumps(queue.jobs.pop(0)).encode()
                elif self.path.startswith("/job-take-batch/") and queue.jobs:
                    # The SDK asks for as many as it has room for (MAX_CONCURRENT_JOBS).
                    size = int(parse_qs(urlsplit(self.path).query).get("batch_size", ["1"])[0])
                    taken, queue.jobs[:] = queue.jobs[:size], queue.jobs[size:]
                    payload = json.dumps(taken).encode()
                else:
                    payload = b""
                if payload:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                # No job (or no stop signal): the SDK asks again.
                threading.Event().wait(0.2)
                self.send_response(204)
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                queue.posts.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if self.path.startswith("/job-done/") and "error" in body:
                    queue.results.append(body)
                    if len(queue.results) == expected:
                        queue.done.set()

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.server = LoopbackServer(Handler)
        self.url = self.server.url


@pytest.fixture
def fake_queue() -> Iterator[FakeQueue]:
    queue = FakeQueue([{"id": f"rp-job-{i}", "input": job} for i, job in enumerate(JOBS)])
    try:
        yield queue
    finally:
        queue.server.close()


def test_runpod_queue_mode(tmp_path: Path, fake_queue: FakeQueue) -> None:
    """``python handler.py`` as RunPod starts it, its queue on 127.0.0.1: two jobs, the
    log read once both results are in."""
    env = worker_env(
        tmp_path / "work",
        {
            **ENV_SECRETS,
            "RUNPOD_LOG_LEVEL": "DEBUG",
            "RUNPOD_WEBHOOK_GET_JOB": f"{fake_queue.url}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{fake_queue.url}/job-done/$RUNPOD_POD_ID?gpu=test",
            "RUNPOD_POD_ID": "local-pod",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        },
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "handler.py"],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            # A bound against a hang only: the result comes when the job ends.
            finished = fake_queue.done.wait(timeout=240)
        finally:
            stop(proc)
    log = log_path.read_text(errors="replace")
    assert finished, log
    errors = sorted(result["error"] for result in fake_queue.results)  # in any order
    assert any("leaked *** ***" in error for error in errors), errors
    assert any("Failed to upload one or more input images" in e for e in errors), errors
    assert "Handler output" in log  # the SDK's DEBUG lines were printed, redacted
    assert_clean(log)
    assert_clean(json.dumps(fake_queue.posts))
