"""S3 failures, made by a fault proxy in front of a real S3 server (moto) on 127.0.0.1.

Through ``deliver`` and through the whole worker (fake runtime, real uploads): transient
5xx answers are retried; refusals, dead and stuck endpoints fail the job naming the
bucket, the endpoint and the cause; a stuck endpoint ends at the upload deadline; when
only some outputs fail, the job completes and ``errors[]`` names the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.delivery import deliver
from engine.errors import OutputDeliveryError
from engine.outputs import OutputFile
from engine.s3 import S3Uploader
from engine.settings import BucketSettings, Settings
from engine.worker import Worker
from tests import workflows
from tests.e2e.conftest import WorkerServer, bucket_settings, new_bucket
from tests.e2e.fault_proxy import FaultProxy
from tests.fake_runtime import FakeRuntime
from tests.media_factory import make_png

KEY_ID = "AKIAFAULTPROXYE2E001"
SECRET = "fault/proxy+secret/key/00000000000000000"


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty, private bucket on the real server (made past the proxy)."""
    return new_bucket(s3_endpoint, KEY_ID, SECRET, "faults")


def through(proxy: FaultProxy, bucket: str, upload_timeout_s: float = 120.0) -> BucketSettings:
    """Bucket settings whose endpoint is the proxy."""
    return bucket_settings(proxy.url, bucket, KEY_ID, SECRET, upload_timeout_s=upload_timeout_s)


def pngs(folder: Path, *names: str) -> list[OutputFile]:
    return [
        OutputFile(
            node_id="9",
            filename=name,
            subfolder="",
            path=make_png(folder / name),
            mime_type="image/png",
            kind="image",
            video=None,
        )
        for name in names
    ]


def assert_no_secrets(text: str) -> None:
    assert SECRET not in text
    assert KEY_ID not in text


class TestDeliver:
    @pytest.mark.parametrize("status", [500, 503])
    def test_transient_failures_are_retried_until_the_upload_succeeds(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path, status: int
    ) -> None:
        """Two 5xx answers, then S3 works: the file is delivered and downloads intact."""
        files = pngs(tmp_path, "a.png")
        fault_proxy.answer(status, times=2)
        uploader = S3Uploader(through(fault_proxy, bucket))
        items, errors = deliver(files, job_id="j", uploader=uploader, budget_bytes=1)
        assert errors == []
        assert fault_proxy.faults == 2 and fault_proxy.passed >= 1
        (item,) = items
        assert httpx.get(item["data"], timeout=10).content == files[0].path.read_bytes()

    def test_forbidden_on_every_upload_fails_naming_bucket_and_cause(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        """403 AccessDenied is not retried; the job's error names the bucket, the endpoint,
        the cause and what to check, with a line per file."""
        fault_proxy.answer(403)
        uploader = S3Uploader(through(fault_proxy, bucket))
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(pngs(tmp_path, "a.png", "b.png"), job_id="j", uploader=uploader, budget_bytes=1)
        error = caught.value
        assert error.code == "output_delivery_failed"
        assert error.message.startswith(
            "None of the 2 output(s) could be uploaded: "
            "S3 refused it (HTTP 403 AccessDenied: Access Denied); "
            f"bucket '{bucket}' at {fault_proxy.url}: check BUCKET_ACCESS_KEY_ID"
        )
        assert sorted(line.split(":")[0] for line in error.details) == ["a.png", "b.png"]
        assert fault_proxy.faults == 2  # one request per file: a refusal is final
        assert "j/a.png" not in error.summary()  # object keys stay out of messages
        assert_no_secrets(error.summary())

    def test_refused_connections_fail_naming_the_endpoint(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        """Nothing accepts connections: retried, then the job fails saying so."""
        fault_proxy.refuse()
        uploader = S3Uploader(through(fault_proxy, bucket, upload_timeout_s=3))
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(pngs(tmp_path, "a.png"), job_id="j", uploader=uploader, budget_bytes=1)
        message = caught.value.message
        assert message.startswith(
            "None of the 1 output(s) could be uploaded: "
            "S3 refused the connection (nothing listens on that port)"
        )
        assert "attempts)" in message
        assert f"bucket '{bucket}' at {fault_proxy.url}: check BUCKET_ENDPOINT_URL" in message

    def test_a_stuck_endpoint_ends_at_the_upload_deadline(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        """An endpoint that accepts and never answers: delivery gives up at UPLOAD_TIMEOUT_S
        (here 1.5 s) and says which limit ended it."""
        fault_proxy.hang()
        uploader = S3Uploader(through(fault_proxy, bucket, upload_timeout_s=1.5))
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(pngs(tmp_path, "a.png"), job_id="j", uploader=uploader, budget_bytes=1)
        assert fault_proxy.hung.is_set()
        assert caught.value.message.startswith(
            "None of the 1 output(s) could be uploaded: S3 did not answer in time"
        )
        assert "UPLOAD_TIMEOUT_S" in caught.value.message
        assert f"bucket '{bucket}' at {fault_proxy.url}" in caught.value.message

    def test_the_jobs_remaining_time_bounds_delivery_when_shorter(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        """With 1 s of the job left and UPLOAD_TIMEOUT_S at 120, delivery ends at the job's
        limit and names JOB_TIMEOUT_S."""
        fault_proxy.hang()
        uploader = S3Uploader(through(fault_proxy, bucket))
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(
                pngs(tmp_path, "a.png"), job_id="j", uploader=uploader, budget_bytes=1, timeout_s=1
            )
        assert fault_proxy.hung.is_set()
        assert (
            "S3 did not answer in time: timed out after 1 s "
            "(what was left of the job's JOB_TIMEOUT_S)" in caught.value.message
        )

    def test_when_only_some_fail_the_rest_is_delivered_and_errors_name_them(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        """403 for one file only: the other is delivered; errors[] names the refused one."""
        fault_proxy.answer(403, match="/b.png")
        uploader = S3Uploader(through(fault_proxy, bucket))
        items, errors = deliver(
            pngs(tmp_path, "a.png", "b.png"), job_id="j", uploader=uploader, budget_bytes=1
        )
        assert [i["filename"] for i in items] == ["a.png"]
        assert len(errors) == 1
        assert errors[0].startswith(
            "b.png: upload failed: S3 refused it (HTTP 403 AccessDenied: Access Denied); "
            f"bucket '{bucket}' at {fault_proxy.url}"
        )


def in_process_worker(tmp_path: Path, bucket_settings: BucketSettings) -> Worker:
    """The worker with the fake runtime and a real S3 uploader."""
    settings = Settings(work_dir=tmp_path / "worker", bucket=bucket_settings)
    worker = Worker(settings, FakeRuntime(settings), uploader=S3Uploader(bucket_settings))
    worker.boot()
    return worker


def leftover_files(worker: Worker) -> list[Path]:
    return [p for p in Path(worker.settings.work_dir).rglob("*") if p.is_file()]


class TestWorker:
    def test_transient_500s_are_retried_and_the_job_completes(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        fault_proxy.answer(500, times=2)
        worker = in_process_worker(tmp_path, through(fault_proxy, bucket))
        body = worker.handle({"id": "retry", "input": {"workflow": workflows.batch(2)}})
        assert body.get("errors") == [], body
        assert [i["type"] for i in body["images"]] == ["s3_url", "s3_url"]
        assert fault_proxy.faults == 2

    def test_forbidden_fails_the_job_naming_the_bucket(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        """The job FAILS (not COMPLETED with images: []), and its files are still removed."""
        fault_proxy.answer(403)
        worker = in_process_worker(tmp_path, through(fault_proxy, bucket))
        body = worker.handle({"id": "denied", "input": {"workflow": workflows.batch(2)}})
        assert body["code"] == "output_delivery_failed", body
        assert body["error"].startswith(
            "None of the 2 output(s) could be uploaded: S3 refused it (HTTP 403 AccessDenied"
        )
        assert f"bucket '{bucket}' at {fault_proxy.url}" in body["error"]
        assert len(body["details"]) == 2
        assert_no_secrets(str(body))
        assert leftover_files(worker) == []

    def test_a_stuck_endpoint_fails_the_job_at_the_upload_deadline(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        fault_proxy.hang()
        worker = in_process_worker(tmp_path, through(fault_proxy, bucket, upload_timeout_s=1))
        body = worker.handle({"id": "stuck", "input": {"workflow": workflows.batch(1)}})
        # Not asserted: that the request reached the proxy. On a loaded machine making the
        # S3 client can take the whole 1 s deadline, and the job must fail the same way.
        assert body["code"] == "output_delivery_failed", body
        assert "S3 did not answer in time" in body["error"]
        assert "UPLOAD_TIMEOUT_S" in body["error"]

    def test_partial_failure_completes_with_errors(
        self, fault_proxy: FaultProxy, bucket: str, tmp_path: Path
    ) -> None:
        fault_proxy.answer(403, match="batch_00001_")
        worker = in_process_worker(tmp_path, through(fault_proxy, bucket))
        body = worker.handle({"id": "partial", "input": {"workflow": workflows.batch(2)}})
        assert [i["filename"] for i in body["images"]] == ["batch_00002_.png"], body
        (line,) = body["errors"]
        assert line.startswith("batch_00001_.png: upload failed: S3 refused it (HTTP 403")


def test_runsync_fails_at_upload_timeout_through_the_api_server(
    start_worker: Callable[..., WorkerServer], fault_proxy: FaultProxy, bucket: str
) -> None:
    """UPLOAD_TIMEOUT_S from the environment bounds a stuck endpoint; /runsync answers
    FAILED with the contract's error, and the worker takes the next job."""
    fault_proxy.hang()
    worker = start_worker(
        BUCKET_ENDPOINT_URL=f"{fault_proxy.url}/{bucket}",
        BUCKET_ACCESS_KEY_ID=KEY_ID,
        BUCKET_SECRET_ACCESS_KEY=SECRET,
        UPLOAD_TIMEOUT_S="1",
    )
    body: dict[str, Any] = worker.runsync({"workflow": workflows.batch(1)})
    assert body["status"] == "FAILED", body
    assert "S3 did not answer in time" in body["error"]
    assert "UPLOAD_TIMEOUT_S=1" in body["error"]
    assert SECRET not in str(body) and SECRET not in worker.log()
    fault_proxy.pass_through()
    after = worker.runsync({"workflow": workflows.batch(1)})
    assert after["status"] == "COMPLETED", after
    assert [i["type"] for i in after["output"]["images"]] == ["s3_url"]
