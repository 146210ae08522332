"""A cancel, or the job's own limit, cuts an S3 upload at once: wherever the upload is
(connecting, in its TLS handshake, sending its body, waiting for S3's answer), the job
answers, the upload's thread and socket end with it, nothing is stored under the job's
name afterwards, and the worker serves the next job. A multipart upload (above 8 MB) cut
part-way is aborted afterwards, off the job's path: no parts are left in the bucket,
and where the abort is refused the job answers as before and the log says why.

A real S3 server (moto) behind the fault proxy on 127.0.0.1, and the dead ends of
tests/e2e/dead_ends.py for the connect and the handshake. The stall limit
(``UPLOAD_STALL_S``) is a minute and the upload limit two: only the cut ends anything
within the bound these tests wait (``_GONE_S``). Each cancel is cued by what the proxy
or the listener sees (a request held, the body moving, a hello, a SYN), never by time.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from engine.deadline import Deadline
from engine.delivery import deliver
from engine.errors import JobInterruptedError, OutputDeliveryError
from engine.outputs import OutputFile
from engine.s3 import S3Uploader
from engine.settings import BucketSettings, Settings
from engine.worker import Worker
from tests import workflows
from tests.e2e.conftest import bucket_settings, new_bucket
from tests.e2e.dead_ends import FullQueue, SilentTls
from tests.e2e.fault_proxy import FaultProxy
from tests.e2e.test_reliability import noise_png
from tests.e2e.test_s3_faults import pngs
from tests.fake_runtime import FakeRuntime

pytestmark = pytest.mark.e2e

KEY_ID = "AKIACUTUPLOADSE2E001"
SECRET = "cut/uploads+secret/key/0000000000000000"
STALL_S = 60.0
UPLOAD_TIMEOUT_S = 120.0
# How long a cut upload's thread and socket may outlive the job's answer: far under the
# stall limit and the connect timeout (10 s), which ended them before.
_GONE_S = 5.0


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return new_bucket(s3_endpoint, KEY_ID, SECRET, "cut")


def settings_for(endpoint: str, bucket: str) -> BucketSettings:
    return bucket_settings(
        endpoint,
        bucket,
        KEY_ID,
        SECRET,
        upload_timeout_s=UPLOAD_TIMEOUT_S,
        upload_stall_s=STALL_S,
    )


def worker_for(tmp_path: Path, bucket: BucketSettings) -> Worker:
    settings = Settings(
        work_dir=tmp_path / "work", bucket=bucket, job_timeout_s=600.0, job_stop_grace_s=30.0
    )
    worker = Worker(settings, FakeRuntime(settings), uploader=S3Uploader(bucket))
    worker.boot()
    return worker


def upload_threads() -> list[str]:
    """The delivery's upload threads alive now (each ends after boto3's own)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("upload")]


def until(condition: Callable[[], bool], bound_s: float = _GONE_S) -> bool:
    """Whether ``condition`` holds within ``bound_s`` (a bound, not a timing)."""
    end = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def cancel_when(worker: Worker, job: dict[str, Any], cue: Callable[[], bool]) -> dict[str, Any]:
    """Run ``job``, cancel it once ``cue()`` holds, and return its answer."""
    answer: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answer.append(worker.handle(job)))
    thread.start()
    assert until(cue, 60.0), "the upload never reached the point the test cancels at"
    worker.cancel(job["id"])
    thread.join(30)
    assert answer, "the job did not answer"
    return answer[0]


def assert_cancelled_while_delivering(body: dict[str, Any]) -> None:
    assert body["code"] == "execution_interrupted", body
    assert body["error"].startswith("The job was cancelled and stopped while delivering outputs")
    assert SECRET not in str(body)


def owner_client(endpoint: str) -> Any:
    """A client of the S3 server itself (past the proxy), with the test's keys."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


def stored(endpoint: str, bucket: str) -> list[str]:
    """The keys in ``bucket``, asked of the S3 server itself (past the proxy)."""
    listed = owner_client(endpoint).list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


def multipart_uploads(endpoint: str, bucket: str) -> list[str]:
    """The keys of the bucket's unfinished multipart uploads, asked of the S3 server."""
    listed = owner_client(endpoint).list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


def big_file(folder: Path, mb: int = 20) -> OutputFile:
    """A file above boto3's 8 MB multipart threshold: three parts of up to 8 MB."""
    (file,) = pngs(folder, "small.png")
    path = folder / "big.png"
    path.write_bytes(os.urandom(mb * 1024 * 1024))
    return dataclasses.replace(file, filename="big.png", path=path)


def deliver_cut(uploader: S3Uploader, file: OutputFile, cue: Callable[[], bool]) -> str:
    """Deliver ``file`` as job ``cut``, cancel the job once ``cue()`` holds; the answer
    (the cancel's message)."""
    job = Deadline.start(None)

    def cancel() -> None:
        until(cue, 60.0)
        job.cancel()

    threading.Thread(target=cancel, daemon=True).start()
    with pytest.raises(JobInterruptedError) as raised:
        deliver([file], job_id="cut", uploader=uploader, budget_bytes=1, job=job)
    return raised.value.message


def serves_the_next_job(worker: Worker, proxy: FaultProxy) -> None:
    proxy.pass_through()
    body = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert [i["type"] for i in body["images"]] == ["s3_url"], body


def test_a_cancel_cuts_an_upload_that_s3_never_answers(
    fault_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    """S3 takes the request and answers nothing: the cancel ends the job, and its
    request's socket and thread with it, not the stall limit a minute later."""
    fault_proxy.hang()
    worker = worker_for(tmp_path, settings_for(fault_proxy.url, bucket))
    job = {"id": "held", "input": {"workflow": workflows.batch(1)}}
    body = cancel_when(worker, job, fault_proxy.hung.is_set)
    assert_cancelled_while_delivering(body)
    assert until(lambda: fault_proxy.open_connections == 0), "the held request was left open"
    assert until(lambda: not upload_threads()), upload_threads()
    serves_the_next_job(worker, fault_proxy)


def test_a_cancel_cuts_an_upload_mid_body_and_nothing_is_stored_after(
    fault_proxy: FaultProxy, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """A 3 MB output goes out 64 KB at a time: cancelled while its body is moving, the
    upload stops there; the object never appears, even once the proxy has passed on
    all it had (before, the upload went on to the end and stored the file)."""
    fault_proxy.throttle(65536, 0.02)
    worker = worker_for(tmp_path, settings_for(fault_proxy.url, bucket))
    image = base64.b64encode(noise_png(1024)).decode()
    job = {
        "id": "moving",
        "input": {
            "workflow": workflows.invert("a.png"),
            "images": [{"name": "a.png", "image": image}],
        },
    }
    body = cancel_when(worker, job, lambda: fault_proxy.pauses >= 3)
    assert_cancelled_while_delivering(body)
    assert until(lambda: fault_proxy.open_connections == 0), "the upload went on"
    assert until(lambda: not upload_threads()), upload_threads()
    assert stored(s3_endpoint, bucket) == []
    serves_the_next_job(worker, fault_proxy)


def test_the_jobs_limit_cuts_a_moving_upload_and_nothing_is_stored_after(
    fault_proxy: FaultProxy, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """A 6 MB file going out 64 KB every 0.1 s (at least 9 s) with 3 s of the job left:
    delivery ends at the limit and cuts the upload there. A transfer that keeps moving
    is never cut by a timeout (the stall limit, 1 s here, is per send): before, it went
    on after the job's answer and stored the file."""
    fault_proxy.throttle(65536, 0.1)
    limits = bucket_settings(
        fault_proxy.url, bucket, KEY_ID, SECRET, upload_timeout_s=UPLOAD_TIMEOUT_S, upload_stall_s=1
    )
    path = tmp_path / "big.png"
    path.write_bytes(noise_png(1448))
    (file,) = pngs(tmp_path, "small.png")
    file = dataclasses.replace(file, filename="big.png", path=path)
    with pytest.raises(
        OutputDeliveryError, match=r"timed out after 3 s \(what was left of the job"
    ):
        deliver([file], job_id="j", uploader=S3Uploader(limits), budget_bytes=1, timeout_s=3)
    assert fault_proxy.pauses > 0  # the limit passed while the body was moving
    assert until(lambda: fault_proxy.open_connections == 0), "the upload went on"
    assert until(lambda: not upload_threads()), upload_threads()
    assert stored(s3_endpoint, bucket) == []


def test_a_cancel_cuts_an_upload_still_connecting(bucket: str, tmp_path: Path) -> None:
    """The endpoint's accept queue is full: the connect waits in SYN_SENT (10 s of
    connect timeout, then retries). The cancel cuts the connect itself."""
    queue = FullQueue()
    try:
        worker = worker_for(tmp_path, settings_for(queue.url, bucket))
        job = {"id": "connecting", "input": {"workflow": workflows.batch(1)}}
        body = cancel_when(worker, job, lambda: queue.connecting() > 0)
        assert_cancelled_while_delivering(body)
        assert until(lambda: queue.connecting() == 0), "the connect was left behind"
        assert until(lambda: not upload_threads()), upload_threads()
    finally:
        queue.close()


def test_a_cancel_cuts_an_upload_in_its_tls_handshake(bucket: str, tmp_path: Path) -> None:
    """The endpoint takes the connection and the TLS hello and answers nothing: the
    handshake would wait out the connect timeout, then be tried again."""
    silent = SilentTls()
    try:
        worker = worker_for(tmp_path, settings_for(silent.url, bucket))
        job = {"id": "handshake", "input": {"workflow": workflows.batch(1)}}
        body = cancel_when(worker, job, silent.hello.is_set)
        assert_cancelled_while_delivering(body)
        assert until(lambda: not upload_threads()), upload_threads()
    finally:
        silent.close()


def parts_moving(proxy: FaultProxy) -> Callable[[], bool]:
    """The parts' bodies are on their way (CreateMultipartUpload, one read, has answered)."""
    return lambda: proxy.pauses >= 20


def test_a_multipart_upload_cut_part_way_is_aborted_after_the_answer(
    fault_proxy: FaultProxy,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 20 MB file goes out in parts, throttled; cancelled while they move, the job
    answers, and the upload S3 holds for it is aborted afterwards by its UploadId: no
    parts are left (before, one unfinished multipart upload stayed, billed)."""
    caplog.set_level(logging.INFO, logger="engine.s3_multipart")
    fault_proxy.throttle(65536, 0.05)
    uploader = S3Uploader(settings_for(fault_proxy.url, bucket))
    message = deliver_cut(uploader, big_file(tmp_path), parts_moving(fault_proxy))
    assert message.startswith("The job was cancelled and stopped while delivering outputs")
    assert uploader.cleaner.wait(1, 30.0), "the cleanup never ended"
    (outcome,) = uploader.cleaner.outcomes()
    assert (outcome.key, len(outcome.aborted), outcome.failure) == ("cut/big.png", 1, None)
    assert multipart_uploads(s3_endpoint, bucket) == []
    assert stored(s3_endpoint, bucket) == []
    assert "aborted the unfinished multipart upload of cut/big.png" in caplog.text


def test_a_refused_abort_leaves_the_answer_as_it_was_and_says_why(
    fault_proxy: FaultProxy,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The key may not AbortMultipartUpload (S3 answers 403 to the DELETE): the worker
    answers the cancelled job as before and serves the next one, and one log line says
    the parts stay and why."""
    caplog.set_level(logging.INFO, logger="engine.s3_multipart")
    fault_proxy.throttle(65536, 0.05)
    limits = settings_for(fault_proxy.url, bucket)
    settings = Settings(
        work_dir=tmp_path / "work", bucket=limits, job_timeout_s=600.0, job_stop_grace_s=30.0
    )
    uploader = S3Uploader(limits)
    worker = Worker(settings, FakeRuntime(settings), uploader=uploader)
    worker.boot()
    # 2600 px of noise: a PNG of about 20 MB, inverted into an output as large.
    image = base64.b64encode(noise_png(2600)).decode()
    job = {
        "id": "refused",
        "input": {
            "workflow": workflows.invert("a.png"),
            "images": [{"name": "a.png", "image": image}],
        },
    }
    moving = parts_moving(fault_proxy)

    def cue() -> bool:
        if not moving():
            return False
        fault_proxy.answer(403, match="DELETE ")  # the parts' connections stay throttled
        return True

    body = cancel_when(worker, job, cue)
    assert_cancelled_while_delivering(body)
    assert uploader.cleaner.wait(1, 30.0), "the cleanup never ended"
    assert fault_proxy.faults == 1
    (key,) = multipart_uploads(s3_endpoint, bucket)
    assert key.startswith("refused/")
    lines = [r.getMessage() for r in caplog.records if r.name == "engine.s3_multipart"]
    assert len(lines) == 1, lines
    assert f"could not abort the unfinished multipart upload of {key}" in lines[0]
    assert "HTTP 403 AccessDenied" in lines[0]
    assert "not allowed s3:AbortMultipartUpload" in lines[0]
    assert "lifecycle rule" in lines[0]
    assert SECRET not in caplog.text and KEY_ID not in caplog.text
    serves_the_next_job(worker, fault_proxy)


def test_an_abort_s3_never_answers_holds_neither_the_answer_nor_the_next_job(
    fault_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    """S3 holds the abort unanswered: the cancelled job has answered already and the next
    delivery completes while the abort is still held (it ends with the connection)."""
    fault_proxy.throttle(65536, 0.05)
    uploader = S3Uploader(settings_for(fault_proxy.url, bucket))
    moving = parts_moving(fault_proxy)

    def cue() -> bool:
        if not moving():
            return False
        fault_proxy.hang()
        return True

    message = deliver_cut(uploader, big_file(tmp_path), cue)
    assert message.startswith("The job was cancelled and stopped while delivering outputs")
    assert until(fault_proxy.hung.is_set, 30.0), "the abort never reached S3"
    assert fault_proxy.held == 1  # the abort's request, not a part's
    fault_proxy.pass_through()  # the abort's own connection stays held
    items, errors = deliver(
        pngs(tmp_path, "next.png"), job_id="next", uploader=uploader, budget_bytes=1
    )
    assert ([i["type"] for i in items], errors) == (["s3_url"], [])
    assert uploader.cleaner.finished == 0, "the abort ended before it was let go"
    fault_proxy.close()  # drops the held abort
    assert uploader.cleaner.wait(1, 30.0), "the cleanup never ended"
    assert uploader.cleaner.outcomes()[0].failure is not None
