"""Reliability of S3 delivery: a hung endpoint is found by the stall limit long before the
upload deadline, and an upload that keeps moving is never cut by it.

A real S3 server (moto) behind the fault proxy on 127.0.0.1; the worker in-process with
the fake runtime and the real uploader. ``UPLOAD_TIMEOUT_S`` is a minute in every test:
whatever ends a job sooner is the stall limit.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import botocore.args
import pytest

from engine.delivery import MAX_PARALLEL_UPLOADS, deliver
from engine.errors import OutputDeliveryError
from engine.outputs import OutputFile
from engine.s3 import S3Uploader
from engine.settings import BucketSettings, Settings
from engine.worker import Worker
from tests import workflows
from tests.e2e.conftest import bucket_settings, new_bucket
from tests.e2e.fault_proxy import FaultProxy
from tests.fake_runtime import FakeRuntime

pytestmark = pytest.mark.e2e

KEY_ID = "AKIASTALLLIMITE2E001"
SECRET = "stall/limit+secret/key/000000000000000000"
UPLOAD_TIMEOUT_S = 60.0
STALL_S = 0.5


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return new_bucket(s3_endpoint, KEY_ID, SECRET, "stall")


def through(proxy: FaultProxy, bucket: str, stall_s: float = STALL_S) -> BucketSettings:
    return bucket_settings(
        proxy.url,
        bucket,
        KEY_ID,
        SECRET,
        upload_timeout_s=UPLOAD_TIMEOUT_S,
        upload_stall_s=stall_s,
    )


def worker_for(tmp_path: Path, bucket: BucketSettings) -> Worker:
    settings = Settings(work_dir=tmp_path / "work", bucket=bucket, job_stop_grace_s=30.0)
    worker = Worker(settings, FakeRuntime(settings), uploader=S3Uploader(bucket))
    worker.boot()
    return worker


def test_a_hung_endpoint_fails_the_job_at_the_stall_limit_and_the_next_job_is_served(
    fault_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    fault_proxy.hang()
    worker = worker_for(tmp_path, through(fault_proxy, bucket))
    started = time.monotonic()
    body: dict[str, Any] = worker.handle({"id": "hung", "input": {"workflow": workflows.batch(1)}})
    elapsed = time.monotonic() - started
    assert fault_proxy.hung.is_set()
    assert body["code"] == "output_delivery_failed", body
    assert "S3 did not answer for 0.5 s (UPLOAD_STALL_S)" in body["error"], body
    assert "attempts" not in body["error"]  # a stall is not retried
    assert elapsed < UPLOAD_TIMEOUT_S / 2
    assert SECRET not in str(body)
    fault_proxy.pass_through()
    after = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert [i["type"] for i in after["images"]] == ["s3_url"], after


def test_after_a_stall_the_jobs_queued_files_are_not_tried(
    fault_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    """Six outputs, four uploaded at a time: the first four stall together, and the two
    still queued fail at once instead of stalling a second time."""
    fault_proxy.hang()
    worker = worker_for(tmp_path, through(fault_proxy, bucket))
    body: dict[str, Any] = worker.handle({"id": "six", "input": {"workflow": workflows.batch(6)}})
    assert body["code"] == "output_delivery_failed", body
    assert fault_proxy.held == MAX_PARALLEL_UPLOADS  # the queued two never reached S3
    assert len(body["details"]) == 6
    assert sum("not tried: S3 stalled on another file" in d for d in body["details"]) == 2


@pytest.fixture
def link_sized_send_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's socket send buffer a real slow link gives it.

    Linux sizes a connection's send buffer by its congestion window: on a slow uplink, a
    few round trips of data. Over loopback it grows to megabytes, and a whole file waits
    in the kernel while the throttled proxy drains it, so the last read waits as long as
    the drain; a real link never queues that much. botocore has no setting for socket
    options: its one place that makes them is extended here, for this test only.
    """
    make = botocore.args.ClientArgsCreator._compute_socket_options

    def with_small_buffer(self: Any, *args: Any, **kwargs: Any) -> list[tuple[int, int, int]]:
        return [*make(self, *args, **kwargs), (socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)]

    monkeypatch.setattr(
        botocore.args.ClientArgsCreator, "_compute_socket_options", with_small_buffer
    )


@pytest.mark.usefixtures("link_sized_send_buffer")
def test_a_slow_upload_that_keeps_moving_outlasts_the_stall_limit(
    fault_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    """2 MB through a proxy that passes 32 KB every 0.05 s (at least 3.2 s, counted by
    the proxy's own pauses), with a stall limit of 2 s: the upload outlasts the limit
    and is never idle for as long (what the kernel still holds at the end drains in a
    fraction of it)."""
    stall_s = 2.0
    fault_proxy.throttle(32768, 0.05)
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(2 * 1024 * 1024))
    file = OutputFile(
        node_id="9",
        filename="big.bin",
        subfolder="",
        path=path,
        mime_type="application/octet-stream",
        kind="image",
        video=None,
    )
    uploader = S3Uploader(through(fault_proxy, bucket, stall_s))
    try:
        items, errors = deliver([file], job_id="slow", uploader=uploader, budget_bytes=1)
    except OutputDeliveryError as exc:  # pragma: no cover - the failure this test guards
        pytest.fail(exc.summary())
    assert errors == []
    assert items[0]["type"] == "s3_url"
    assert fault_proxy.pauses * 0.05 > stall_s  # the upload outlasted the stall limit
