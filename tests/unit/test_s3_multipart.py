"""engine/s3_multipart.py: the ledger knows each multipart upload a client started and has
not ended, by its UploadId; the cleaner aborts exactly those, never another key's or an
older upload, within its bound, and says in one line what it did or why it could not.

The cut of a real 20 MB upload and its abort, through a real S3 server, is tested end to
end in tests/e2e/test_s3_cut.py.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from engine import logs
from engine.s3 import S3Uploader
from engine.s3_multipart import MultipartCleaner, MultipartLedger, Outcome, Unfinished
from tests.unit.test_delivery import KEY_ID, SECRET, bucket

KEY = "job-1/video/wan_00001_.mp4"


def client_for(port: int = 9) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    """A client whose every call is answered by its stubber, nothing on a network."""
    client = client_for()
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def created(stub: Stubber, client: Any, upload_id: str, key: str = KEY) -> None:
    stub.add_response(
        "create_multipart_upload",
        {"Bucket": "outputs", "Key": key, "UploadId": upload_id},
        {"Bucket": "outputs", "Key": key},
    )
    client.create_multipart_upload(Bucket="outputs", Key=key)


def test_the_ledger_knows_a_started_upload_by_its_upload_id(
    stubbed: tuple[Any, Stubber],
) -> None:
    client, stub = stubbed
    ledger = MultipartLedger(client)
    before = time.time()
    created(stub, client, "u-1")
    (upload,) = ledger.unfinished()
    assert (upload.key, upload.upload_id) == (KEY, "u-1")
    assert before <= upload.sent_at <= time.time()


def test_a_completed_or_aborted_upload_leaves_the_ledger(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    ledger = MultipartLedger(client)
    created(stub, client, "u-1")
    created(stub, client, "u-2")
    created(stub, client, "u-3")
    ids = {"Bucket": "outputs", "Key": KEY}
    stub.add_response("complete_multipart_upload", {}, {**ids, "UploadId": "u-1"})
    client.complete_multipart_upload(**ids, UploadId="u-1")
    stub.add_response("abort_multipart_upload", {}, {**ids, "UploadId": "u-2"})
    client.abort_multipart_upload(**ids, UploadId="u-2")
    assert [u.upload_id for u in ledger.unfinished()] == ["u-3"]


def test_an_upload_s3_no_longer_has_leaves_it_and_a_failed_end_keeps_it(
    stubbed: tuple[Any, Stubber],
) -> None:
    """NoSuchUpload: ended already (completed or aborted); a 500 to the completion: S3
    may still hold the parts, so it stays to abort."""
    client, stub = stubbed
    ledger = MultipartLedger(client)
    created(stub, client, "gone")
    created(stub, client, "held")
    stub.add_client_error("abort_multipart_upload", "NoSuchUpload", http_status_code=404)
    with pytest.raises(client.exceptions.NoSuchUpload):
        client.abort_multipart_upload(Bucket="outputs", Key=KEY, UploadId="gone")
    stub.add_client_error("complete_multipart_upload", "InternalError", http_status_code=500)
    with pytest.raises(client.exceptions.ClientError):
        client.complete_multipart_upload(Bucket="outputs", Key=KEY, UploadId="held")
    assert [u.upload_id for u in ledger.unfinished()] == ["held"]


def test_a_refused_start_is_not_an_upload(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    ledger = MultipartLedger(client)
    stub.add_client_error("create_multipart_upload", "AccessDenied", http_status_code=403)
    with pytest.raises(client.exceptions.ClientError):
        client.create_multipart_upload(Bucket="outputs", Key=KEY)
    assert ledger.unfinished() == ()


def test_a_start_never_answered_is_kept_without_an_upload_id() -> None:
    """The request failed before an answer (here nothing listens): S3 may or may not
    have made it, so it is kept, to be looked for by its key and time."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    client = client_for(port)
    ledger = MultipartLedger(client)
    with pytest.raises(EndpointConnectionError):
        client.create_multipart_upload(Bucket="outputs", Key=KEY)
    (upload,) = ledger.unfinished()
    assert (upload.key, upload.upload_id) == (KEY, None)
    ledger.clear()
    assert ledger.unfinished() == ()


def cleaner_for(client: Any, bound_s: float | None = None) -> MultipartCleaner:
    return MultipartCleaner("outputs", lambda: client, (KEY_ID, SECRET), bound_s, 0.0)


def test_the_cleaner_aborts_known_uploads_by_their_id_on_its_own_thread(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.s3_multipart")
    client, stub = stubbed
    stub.add_response(
        "abort_multipart_upload", {}, {"Bucket": "outputs", "Key": KEY, "UploadId": "u-1"}
    )
    threads: list[str] = []
    jobs: list[str] = []

    def new_client() -> Any:
        threads.append(threading.current_thread().name)
        jobs.append(logs.current_job_id())
        return client

    cleaner = MultipartCleaner("outputs", new_client, start_after_s=0.0)
    with logs.bind_job("job-1"):
        cleaner.abort(KEY, [Unfinished(KEY, "u-1", time.time())])
    assert cleaner.wait(1, 30.0)
    assert cleaner.outcomes() == [Outcome(KEY, ("u-1",), None)]
    assert (threads, jobs) == (["s3-abort"], ["job-1"])  # its lines are the cut job's
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"aborted the unfinished multipart upload of {KEY} that a cut left (1 upload, its parts deleted)"
    ]


def test_an_unanswered_start_is_found_by_exactly_its_key_and_time(
    stubbed: tuple[Any, Stubber],
) -> None:
    """The listing by prefix also holds a longer key and an older upload of the same key
    (another writer's, or one ended long ago): only this one is aborted."""
    client, stub = stubbed
    sent = time.time()
    now = datetime.fromtimestamp(sent, tz=UTC)
    uploads = [
        {"Key": KEY, "UploadId": "older", "Initiated": now - timedelta(minutes=5)},
        {"Key": KEY + ".part", "UploadId": "longer-key", "Initiated": now},
        {"Key": KEY, "UploadId": "mine", "Initiated": now + timedelta(seconds=0.2)},
    ]
    stub.add_response(
        "list_multipart_uploads",
        {"Bucket": "outputs", "Uploads": uploads},
        {"Bucket": "outputs", "Prefix": KEY},
    )
    stub.add_response(
        "abort_multipart_upload", {}, {"Bucket": "outputs", "Key": KEY, "UploadId": "mine"}
    )
    cleaner = cleaner_for(client)
    cleaner.abort(KEY, [Unfinished(KEY, None, sent)])
    assert cleaner.wait(1, 30.0)
    assert cleaner.outcomes() == [Outcome(KEY, ("mine",), None)]


def test_a_refused_abort_is_said_once_without_secrets(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.s3_multipart")
    client, stub = stubbed
    stub.add_client_error(
        "abort_multipart_upload",
        "AccessDenied",
        f"User with key {KEY_ID} is not authorized",
        http_status_code=403,
    )
    cleaner = cleaner_for(client)
    cleaner.abort(KEY, [Unfinished(KEY, "u-1", time.time())])
    assert cleaner.wait(1, 30.0)
    (outcome,) = cleaner.outcomes()
    assert outcome.aborted == () and outcome.failure is not None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    line = record.getMessage()
    assert line.startswith(f"could not abort the unfinished multipart upload of {KEY}")
    assert "HTTP 403 AccessDenied" in line and "not allowed s3:AbortMultipartUpload" in line
    assert "lifecycle rule aborts incomplete multipart uploads" in line
    assert KEY_ID not in line and SECRET not in line


def test_an_abort_s3_never_answers_ends_at_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    """The endpoint takes the connection and answers nothing: the request's own timeout
    (30 s here) is not waited out; the bound cuts it."""
    caplog.set_level(logging.INFO, logger="engine.s3_multipart")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the kernel completes the connect, nobody answers
    try:
        cleaner = cleaner_for(client_for(silent.getsockname()[1]), bound_s=0.5)
        cleaner.abort(KEY, [Unfinished(KEY, "u-1", time.time())])
        assert cleaner.wait(1, 20.0), "the bound did not end the abort"
        (outcome,) = cleaner.outcomes()
        assert outcome.failure == "S3 did not answer within 0.5 s"
        assert "S3 did not answer within 0.5 s" in caplog.text
    finally:
        silent.close()


def test_the_uploaders_leased_clients_keep_a_ledger() -> None:
    """What a cut leaves is known only where the leased client carries one."""
    lease = S3Uploader(bucket())._lease(600.0)
    assert isinstance(lease.ledger, MultipartLedger)


def test_an_upload_s3_no_longer_has_is_not_a_failure(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    """The cut came as the completion went out and S3 completed it (or it was aborted
    already): NoSuchUpload is said as such, not as a refusal."""
    caplog.set_level(logging.INFO, logger="engine.s3_multipart")
    client, stub = stubbed
    stub.add_client_error("abort_multipart_upload", "NoSuchUpload", http_status_code=404)
    cleaner = cleaner_for(client)
    cleaner.abort(KEY, [Unfinished(KEY, "u-1", time.time())])
    assert cleaner.wait(1, 30.0)
    assert cleaner.outcomes() == [Outcome(KEY, (), None, ("u-1",))]
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "had ended already" in record.getMessage()
