"""engine.delivery: base64 items within RunPod's cap, uploads through the Uploader seam."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from engine import logs, s3
from engine.deadline import Deadline
from engine.delivery import deliver, object_key
from engine.errors import ItemError, OutputDeliveryError, ResponseTooLargeError
from engine.outputs import OutputFile
from engine.s3 import S3Uploader
from engine.settings import BucketSettings
from engine.video import VideoInfo
from tests.media_factory import make_animated_webp, make_png, make_video

KEY_ID = "AKIAFAKEKEYID0000001"
SECRET = "fake/secret+access/key0000000000000000000"


def output(
    path: Path,
    mime: str = "image/png",
    *,
    node_id: str = "9",
    subfolder: str = "",
    kind: Any = "image",
    info: VideoInfo | None = None,
) -> OutputFile:
    """An OutputFile for a file already on disk."""
    return OutputFile(
        node_id=node_id,
        filename=path.name,
        subfolder=subfolder,
        path=path,
        mime_type=mime,
        kind=kind,
        video=info,
    )


def bucket(**overrides: Any) -> BucketSettings:
    """Bucket settings with fake keys; nothing here talks to a network."""
    values: dict[str, Any] = {
        "endpoint_url": "http://127.0.0.1:9000",
        "bucket": "outputs",
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
        "region": "us-east-1",
        "url_expiry_s": 600,
        "public_url": None,
    }
    values.update(overrides)
    return BucketSettings(**values)


class RecordingUploader:
    """A fake Uploader: records calls, fails for chosen keys, tracks concurrency."""

    def __init__(self, fail: set[str] | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, Path, str]] = []
        self.fail = fail or set()
        self.delay_s = delay_s
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def upload(self, key: str, path: Path, content_type: str) -> str:
        with self._lock:
            self.calls.append((key, path, content_type))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay_s)
            if key in self.fail:
                raise ItemError(key, "S3 refused it (AccessDenied: Access Denied)")
            return f"https://cdn.example.com/{key}"
        finally:
            with self._lock:
                self.active -= 1


class TestObjectKey:
    @pytest.mark.parametrize(
        ("subfolder", "filename", "key"),
        [
            ("", "ComfyUI_00001_.png", "job-1/ComfyUI_00001_.png"),
            ("video/day one", "clip.mp4", "job-1/video/day_one/clip.mp4"),
            ("../..", "x.png", "job-1/x.png"),
            ("", "..", "job-1/output"),
            ("a\\b", "é ü.png", "job-1/a/b/_.png"),
            ("./", "a?b#c%d.webp", "job-1/a_b_c_d.webp"),
        ],
    )
    def test_safe_characters_under_the_job_id(
        self, subfolder: str, filename: str, key: str
    ) -> None:
        """Keys start with the job id and hold only characters no URL or shell must escape."""
        file = dataclasses.replace(output(Path("unused"), subfolder=subfolder), filename=filename)
        assert object_key("job-1", file) == key


class TestBase64:
    def test_items_are_data_uris_with_the_right_mime(self, tmp_path: Path) -> None:
        """Each item decodes back to the file's bytes and carries its MIME, node and size."""
        png = make_png(tmp_path / "ComfyUI_00001_.png")
        webp = make_animated_webp(tmp_path / "anim.webp")
        files = [output(png), output(webp, "image/webp", node_id="12", kind="animation")]
        items, errors = deliver(files, job_id="j", uploader=None, budget_bytes=10_000_000)
        assert errors == []
        assert [i["filename"] for i in items] == ["ComfyUI_00001_.png", "anim.webp"]
        for item, path, mime in zip(items, [png, webp], ["image/png", "image/webp"], strict=True):
            prefix = f"data:{mime};base64,"
            assert item["type"] == "base64"
            assert item["mime_type"] == mime
            assert item["data"].startswith(prefix)
            assert base64.b64decode(item["data"][len(prefix) :]) == path.read_bytes()
            assert item["size_bytes"] == path.stat().st_size
            assert "video" not in item
        assert items[1]["node_id"] == "12"

    def test_bare_items_hold_the_payload_alone_within_the_same_budget(self, tmp_path: Path) -> None:
        """OUTPUT_BASE64=bare: worker-comfyui's form, b64decode(data) is the file; the
        budget counts the shorter JSON exactly as it does the data URIs."""
        files = [output(make_png(tmp_path / f"{i}.png", (40 + i, 40))) for i in range(3)]
        with pytest.raises(ResponseTooLargeError) as caught:
            deliver(files, job_id="j", uploader=None, budget_bytes=1, data_uri=False)
        needed = caught.value.extra["response_bytes"]
        items, errors = deliver(
            files, job_id="j", uploader=None, budget_bytes=needed, data_uri=False
        )
        for item, file in zip(items, files, strict=True):
            assert item["type"] == "base64" and item["mime_type"] == "image/png"
            assert base64.b64decode(item["data"], validate=True) == file.path.read_bytes()
        actual = len(json.dumps({"images": items, "errors": errors}))
        assert needed - 1024 < actual <= needed
        with pytest.raises(ResponseTooLargeError) as uri:
            deliver(files, job_id="j", uploader=None, budget_bytes=1)
        assert uri.value.extra["response_bytes"] - needed == 3 * len("data:image/png;base64,")

    def test_video_items_carry_their_numbers(self, tmp_path: Path) -> None:
        """A video item has duration, fps, size and frame count under ``video``."""
        clip = make_video(tmp_path / "clip.mp4")
        info = VideoInfo(duration_s=1.0, fps=8.0, width=64, height=48, frames=8)
        items, _ = deliver(
            [output(clip, "video/mp4", kind="video", info=info)],
            job_id="j",
            uploader=None,
            budget_bytes=10_000_000,
        )
        assert items[0]["video"] == {
            "duration_s": 1.0,
            "fps": 8.0,
            "width": 64,
            "height": 48,
            "frames": 8,
        }

    def test_the_budget_bounds_the_real_json_tightly(self, tmp_path: Path) -> None:
        """The estimate covers every item's JSON, not only its base64; one byte under it fails."""
        files = [output(make_png(tmp_path / f"{i}.png", (40 + i, 40))) for i in range(12)]
        with pytest.raises(ResponseTooLargeError) as caught:
            deliver(files, job_id="j", uploader=None, budget_bytes=1)
        needed = caught.value.extra["response_bytes"]
        items, errors = deliver(files, job_id="j", uploader=None, budget_bytes=needed)
        assert len(items) == 12
        actual = len(json.dumps({"images": items, "errors": errors}))
        assert needed - 1024 < actual <= needed
        with pytest.raises(ResponseTooLargeError):
            deliver(files, job_id="j", uploader=None, budget_bytes=needed - 1)

    def test_nothing_is_read_or_encoded_when_over_budget(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The cap is checked from file sizes alone: a 500 MB video is never loaded to refuse it."""

        def must_not_encode(data: bytes) -> bytes:
            raise AssertionError("encoded before checking the budget")

        monkeypatch.setattr(base64, "b64encode", must_not_encode)
        files = [output(make_png(tmp_path / "a.png"))]
        with pytest.raises(ResponseTooLargeError):
            deliver(files, job_id="j", uploader=None, budget_bytes=100)

    def test_too_large_says_how_large_and_what_to_do(self, tmp_path: Path) -> None:
        """The message names the size and the budget in MB and the S3 variables to set;
        details list the largest files first."""
        big = tmp_path / "big.mp4"
        big.write_bytes(b"\x00" * 3 * 1024 * 1024)
        small = make_png(tmp_path / "small.png")
        files = [output(small), output(big, "video/mp4", kind="video")]
        with pytest.raises(ResponseTooLargeError) as caught:
            deliver(files, job_id="j", uploader=None, budget_bytes=2 * 1024 * 1024)
        error = caught.value
        assert "4.0 MB" in error.message
        assert "2.0 MB" in error.message
        for variable in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"):
            assert variable in error.message
        assert error.details[0].startswith("big.mp4: 4.0 MB as base64")
        assert error.details[1].startswith("small.png:")
        assert error.code == "response_too_large"

    def test_a_vanished_file_is_an_error_line(self, tmp_path: Path) -> None:
        """A file gone before delivery is named in errors; the others are returned."""
        here = make_png(tmp_path / "here.png")
        files = [output(tmp_path / "gone.png"), output(here)]
        items, errors = deliver(files, job_id="j", uploader=None, budget_bytes=10_000_000)
        assert [i["filename"] for i in items] == ["here.png"]
        assert errors == ["gone.png: cannot be read: No such file or directory"]

    def test_nothing_to_deliver(self) -> None:
        assert deliver([], job_id="j", uploader=None, budget_bytes=1000) == ([], [])


class TestUploads:
    def test_items_are_urls_under_the_job_id(self, tmp_path: Path) -> None:
        """Each file is uploaded with its Content-Type under a key holding the job id."""
        png = make_png(tmp_path / "a.png")
        clip = make_video(tmp_path / "clip.mp4")
        info = VideoInfo(duration_s=1.0, fps=8.0, width=64, height=48, frames=8)
        files = [output(png, subfolder="run"), output(clip, "video/mp4", kind="video", info=info)]
        uploader = RecordingUploader()
        items, errors = deliver(files, job_id="sync-42", uploader=uploader, budget_bytes=1)
        assert errors == []
        assert sorted(uploader.calls) == [
            ("sync-42/clip.mp4", clip, "video/mp4"),
            ("sync-42/run/a.png", png, "image/png"),
        ]
        assert [(i["type"], i["data"]) for i in items] == [
            ("s3_url", "https://cdn.example.com/sync-42/run/a.png"),
            ("s3_url", "https://cdn.example.com/sync-42/clip.mp4"),
        ]
        assert items[1]["video"]["frames"] == 8
        assert items[0]["size_bytes"] == png.stat().st_size

    def test_a_failed_upload_is_an_error_line_the_rest_returned(self, tmp_path: Path) -> None:
        """One refused upload is named with its reason; order of the others is kept."""
        files = [output(make_png(tmp_path / f"{n}.png")) for n in ("a", "b", "c")]
        uploader = RecordingUploader(fail={"j/b.png"})
        items, errors = deliver(files, job_id="j", uploader=uploader, budget_bytes=1)
        assert [i["filename"] for i in items] == ["a.png", "c.png"]
        assert errors == ["b.png: upload failed: S3 refused it (AccessDenied: Access Denied)"]

    def test_a_vanished_file_is_an_error_line(self, tmp_path: Path) -> None:
        files = [output(tmp_path / "gone.png"), output(make_png(tmp_path / "here.png"))]
        items, errors = deliver(files, job_id="j", uploader=RecordingUploader(), budget_bytes=1)
        assert [i["filename"] for i in items] == ["here.png"]
        assert errors == ["gone.png: cannot be read: No such file or directory"]

    def test_an_uploads_log_lines_are_its_jobs(self, tmp_path: Path) -> None:
        """The upload threads log under the delivering job's id, even while another job
        holds the engine (whose id unbound threads' lines would otherwise carry)."""
        seen: list[str] = []

        class Noting(RecordingUploader):
            def upload(self, key: str, path: Path, content_type: str) -> str:
                seen.append(logs.current_job_id())
                return super().upload(key, path, content_type)

        files = [output(make_png(tmp_path / f"{n}.png")) for n in ("a", "b")]
        with logs.engine_job("the-running-one"):
            deliver(files, job_id="sync-7", uploader=Noting(), budget_bytes=1)
        assert seen == ["sync-7", "sync-7"]

    def test_uploads_run_concurrently_but_bounded(self, tmp_path: Path) -> None:
        """Several files upload at once, never more than four."""
        files = [output(make_png(tmp_path / f"{i}.png")) for i in range(10)]
        uploader = RecordingUploader(delay_s=0.05)
        items, _ = deliver(files, job_id="j", uploader=uploader, budget_bytes=1)
        assert len(items) == 10
        assert 1 < uploader.most_active <= 4

    def test_keys_that_collide_after_cleaning_are_made_distinct(self, tmp_path: Path) -> None:
        """``a b.png`` and ``a_b.png`` would share a key; the second gets a suffix."""
        files = [output(make_png(tmp_path / "a b.png")), output(make_png(tmp_path / "a_b.png"))]
        uploader = RecordingUploader()
        deliver(files, job_id="j", uploader=uploader, budget_bytes=1)
        assert sorted(key for key, _, _ in uploader.calls) == ["j/a_b-2.png", "j/a_b.png"]


class StubS3Client:
    """Stands in for boto3's client: raises ``errors`` in turn (the cases under test), then
    uploads."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.uploads: list[tuple[str, str, str, dict[str, str]]] = []

    def upload_file(
        self, filename: str, bucket: str, key: str, ExtraArgs: dict[str, str], Config: Any
    ) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.uploads.append((filename, bucket, key, ExtraArgs))

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> str:
        return "https://signed.example/url"


def s3_answer(status: int, code: str, message: str = "no") -> ClientError:
    """What botocore raises when S3 answers ``status`` with error ``code``."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )


class TestS3Uploader:
    def test_presigned_url_is_path_style_for_an_ip_endpoint(self) -> None:
        """``outputs.127.0.0.1`` cannot resolve, so local endpoints use path-style URLs."""
        url = S3Uploader(bucket()).url_for("job/a.png")
        assert url.startswith("http://127.0.0.1:9000/outputs/job/a.png?")
        assert "X-Amz-Signature=" in url
        assert "X-Amz-Expires=600" in url

    def test_presigned_url_is_path_style_for_localhost(self) -> None:
        url = S3Uploader(bucket(endpoint_url="http://localhost:9000")).url_for("job/a.png")
        assert url.startswith("http://localhost:9000/outputs/job/a.png?")

    def test_public_url_mode_needs_no_signature(self) -> None:
        """With a public URL configured items get ``<public_url>/<key>``."""
        uploader = S3Uploader(bucket(public_url="https://cdn.example.com/out"), StubS3Client())
        assert uploader.upload("job/a b.png", Path("a.png"), "image/png") == (
            "https://cdn.example.com/out/job/a%20b.png"
        )

    def test_upload_sends_the_content_type(self) -> None:
        client = StubS3Client()
        url = S3Uploader(bucket(), client).upload("job/a.webp", Path("a.webp"), "image/webp")
        assert url == "https://signed.example/url"
        assert client.uploads == [
            ("a.webp", "outputs", "job/a.webp", {"ContentType": "image/webp"})
        ]

    def test_service_errors_are_one_line_without_secrets(self) -> None:
        """botocore can quote the key id; the reason never carries it nor the secret."""
        error = ClientError(
            {
                "Error": {
                    "Code": "InvalidAccessKeyId",
                    "Message": f"The AWS Access Key Id {KEY_ID} does not exist; {SECRET}",
                }
            },
            "PutObject",
        )
        uploader = S3Uploader(bucket(), StubS3Client(error))
        with pytest.raises(ItemError) as caught:
            uploader.upload("job/a.png", Path("a.png"), "image/png")
        reason = caught.value.reason
        assert KEY_ID not in reason
        assert SECRET not in reason
        assert reason.startswith("S3 refused it (InvalidAccessKeyId: The AWS Access Key Id ***")
        assert "bucket 'outputs' at http://127.0.0.1:9000" in reason
        assert isinstance(caught.value.__cause__, ClientError)

    def test_transient_failures_are_retried_with_backoff(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """5xx, throttling and refused connections are tried again, after a doubling
        pause; the upload then succeeds."""
        pauses: list[float] = []
        monkeypatch.setattr(s3, "_pause", lambda _, seconds: pauses.append(seconds))
        client = StubS3Client(
            s3_answer(500, "InternalError"),
            s3_answer(503, "SlowDown"),
            EndpointConnectionError(endpoint_url="http://127.0.0.1:9000/outputs/job/a.png"),
            s3_answer(503, "SlowDown"),
        )
        url = S3Uploader(bucket(), client).upload("job/a.png", Path("a.png"), "image/png")
        assert url == "https://signed.example/url"
        assert client.calls == 5
        assert len(pauses) == 4
        assert all(0.25 <= p <= 0.5 * 2**i for i, p in enumerate(pauses))
        assert pauses[3] > pauses[0]

    def test_a_stall_is_not_retried(self) -> None:
        """A read timeout well before the deadline is the stall limit: an endpoint that
        took the request and answers nothing would stall as long again."""
        client = StubS3Client(
            ReadTimeoutError(endpoint_url="http://127.0.0.1:9000/outputs/job/a.png"),
        )
        with pytest.raises(ItemError) as caught:
            S3Uploader(bucket(), client).upload("job/a.png", Path("a.png"), "image/png")
        assert client.calls == 1
        assert caught.value.reason.startswith("S3 did not answer for 30 s (UPLOAD_STALL_S)")

    @pytest.mark.parametrize(
        ("error", "hint"),
        [
            (s3_answer(403, "AccessDenied", "Access Denied"), "BUCKET_ACCESS_KEY_ID"),
            (s3_answer(404, "NoSuchBucket"), "BUCKET_NAME"),
            (s3_answer(400, "InvalidArgument"), "BUCKET_*"),
        ],
    )
    def test_refusals_are_not_retried(self, error: ClientError, hint: str) -> None:
        """A 4xx answer will not change on its own: one attempt, and the reason says what
        to check."""
        client = StubS3Client(error, error)
        with pytest.raises(ItemError) as caught:
            S3Uploader(bucket(), client).upload("job/a.png", Path("a.png"), "image/png")
        assert client.calls == 1
        status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        assert caught.value.reason.startswith(f"S3 refused it (HTTP {status} ")
        assert hint in caught.value.reason
        assert "attempts" not in caught.value.reason

    def test_retries_stop_after_five_attempts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(s3, "_pause", lambda _, seconds: None)
        client = StubS3Client(*[s3_answer(500, "InternalError")] * 9)
        with pytest.raises(ItemError) as caught:
            S3Uploader(bucket(), client).upload("job/a.png", Path("a.png"), "image/png")
        assert client.calls == 5
        assert caught.value.reason.startswith(
            "S3 failed (HTTP 500 InternalError: no) (5 attempts); bucket 'outputs' at "
            "http://127.0.0.1:9000: the S3 service is failing"
        )

    def test_no_retry_that_the_deadline_would_cut_short(self) -> None:
        """With too little time left for a pause and another attempt, the first failure
        is the answer (not a timeout that hides it)."""
        client = StubS3Client(s3_answer(500, "InternalError"))
        uploader = S3Uploader(bucket(), client)
        with pytest.raises(ItemError, match="S3 failed"):
            uploader.upload("a", Path("a.png"), "image/png", deadline=Deadline.start(0.3))
        assert client.calls == 1

    @pytest.mark.parametrize("remaining", [0.5, 3.0, 40.0])
    def test_near_the_deadline_a_request_cannot_outlive_it(self, remaining: float) -> None:
        """Connect and read timeouts are cut so that together they fit in the time left."""
        config = S3Uploader(bucket())._lease(remaining).client.meta.config
        assert config.connect_timeout + config.read_timeout <= remaining
        assert config.retries["total_max_attempts"] == 1  # the retries are ours

    def test_with_time_to_spare_the_shared_client_is_used(self) -> None:
        uploader = S3Uploader(bucket())
        lease = uploader._lease(600.0)
        uploader._give_back(lease)
        assert uploader._lease(120.0) is lease  # an idle client, its connections kept
        config = lease.client.meta.config
        # The read timeout is the stall limit (UPLOAD_STALL_S), not the whole upload's.
        assert (config.connect_timeout, config.read_timeout) == (10, 30)

    @pytest.mark.parametrize(
        ("socket_error", "cause"),
        [
            (ConnectionRefusedError(111, "Connection refused"), "S3 refused the connection"),
            (socket.gaierror(-2, "Name or service not known"), "host name could not be resolved"),
        ],
    )
    def test_connection_failures_say_what_the_socket_said(
        self, socket_error: OSError, cause: str
    ) -> None:
        """botocore keeps the socket's error inside its own: the reason names it in words."""
        error = EndpointConnectionError(endpoint_url="http://127.0.0.1:9000/x", error=socket_error)
        uploader = S3Uploader(bucket(), StubS3Client(error))
        with pytest.raises(ItemError) as caught:
            uploader.upload("a", Path("a.png"), "image/png", deadline=Deadline.start(0.3))
        assert cause in caught.value.reason
        assert "check BUCKET_ENDPOINT_URL" in caught.value.reason

    def test_upload_timeout_comes_from_the_bucket_settings(self) -> None:
        uploader = S3Uploader(bucket(upload_timeout_s=7.5))
        assert uploader.timeout_s == 7.5
        assert uploader.target == "bucket 'outputs' at http://127.0.0.1:9000"

    def test_the_target_never_shows_credentials_in_the_url(self) -> None:
        uploader = S3Uploader(bucket(endpoint_url="https://user:pw@s3.example.com:9000"))
        assert uploader.target == "bucket 'outputs' at https://s3.example.com:9000"


class StuckUploader:
    """A bounded uploader whose endpoint never answers until the test releases it."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self.target = "bucket 'outputs' at https://s3.example.com"
        self.release = threading.Event()
        self.deadlines: list[Deadline | None] = []
        self.cut = 0
        """Uploads that ended because their deadline was cancelled."""

    def upload(
        self, key: str, path: Path, content_type: str, *, deadline: Deadline | None = None
    ) -> str:
        self.deadlines.append(deadline)
        if deadline is None:
            self.release.wait()
        else:  # as the protocol asks: a cancel stops it
            with deadline.on_cancel(self.release.set):
                self.release.wait()
            if deadline.cancelled:
                self.cut += 1
                raise ItemError(key, "cut")
        return f"https://cdn.example.com/{key}"


@pytest.fixture
def stuck() -> Iterator[StuckUploader]:
    uploader = StuckUploader()
    yield uploader
    uploader.release.set()


class TestDeliveryDeadline:
    def test_every_upload_failing_fails_the_job(self, tmp_path: Path) -> None:
        """Not one file delivered: OutputDeliveryError with the cause and a line per file."""
        files = [output(make_png(tmp_path / f"{n}.png")) for n in ("a", "b")]
        uploader = RecordingUploader(fail={"j/a.png", "j/b.png"})
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(files, job_id="j", uploader=uploader, budget_bytes=1)
        error = caught.value
        assert error.code == "output_delivery_failed"
        assert error.message == (
            "None of the 2 output(s) could be uploaded: S3 refused it (AccessDenied: Access Denied)"
        )
        assert error.details == [
            "a.png: upload failed: S3 refused it (AccessDenied: Access Denied)",
            "b.png: upload failed: S3 refused it (AccessDenied: Access Denied)",
        ]
        assert error.to_response()["failed_outputs"] == 2

    def test_mixed_causes_are_counted_in_the_message(self, tmp_path: Path) -> None:
        files = [output(tmp_path / "gone.png"), output(make_png(tmp_path / "b.png"))]
        uploader = RecordingUploader(fail={"j/b.png"})
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(files, job_id="j", uploader=uploader, budget_bytes=1)
        assert caught.value.message == (
            "None of the 2 output(s) could be delivered: gone.png cannot be read: "
            "No such file or directory (and 1 other cause(s): see details)"
        )

    def test_a_stuck_upload_ends_at_the_uploaders_limit(
        self, tmp_path: Path, stuck: StuckUploader
    ) -> None:
        """deliver stops waiting at UPLOAD_TIMEOUT_S, whatever the upload thread does, and
        files still queued behind the stuck ones are reported too."""
        stuck.timeout_s = 0.3
        files = [output(make_png(tmp_path / f"{i}.png")) for i in range(6)]
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(files, job_id="j", uploader=stuck, budget_bytes=1)
        assert len(stuck.deadlines) <= 4  # four at a time: the rest never started
        assert len(caught.value.details) == 6
        assert caught.value.details[5] == (
            "5.png: upload failed: S3 did not answer in time: timed out after 0.3 s "
            "(UPLOAD_TIMEOUT_S=0.3); bucket 'outputs' at https://s3.example.com: "
            "check that the S3 service answers, or raise UPLOAD_TIMEOUT_S"
        )

    @pytest.mark.parametrize(
        ("upload_limit", "job_left", "expected"),
        [(120.0, 5.0, 5.0), (5.0, 120.0, 5.0), (5.0, None, 5.0)],
    )
    def test_the_deadline_is_the_smaller_of_the_two_limits(
        self, tmp_path: Path, upload_limit: float, job_left: float | None, expected: float
    ) -> None:
        """Each upload is handed one deadline: UPLOAD_TIMEOUT_S or the job's time left."""
        uploader = StuckUploader(upload_limit)
        uploader.release.set()
        before = time.monotonic()
        deliver(
            [output(make_png(tmp_path / "a.png"))],
            job_id="j",
            uploader=uploader,
            budget_bytes=1,
            timeout_s=job_left,
        )
        after = time.monotonic()
        (deadline,) = uploader.deadlines
        assert deadline is not None and deadline.limit_s is not None
        end = deadline.started + deadline.limit_s
        assert before + expected <= end <= after + expected

    @pytest.mark.parametrize(
        ("upload_limit", "job_left", "named"),
        [
            (120.0, 0.2, "timed out after 0.2 s (what was left of the job's JOB_TIMEOUT_S)"),
            (0.2, 120.0, "timed out after 0.2 s (UPLOAD_TIMEOUT_S=0.2)"),
        ],
    )
    def test_the_message_names_the_limit_that_ended_it(
        self,
        tmp_path: Path,
        stuck: StuckUploader,
        upload_limit: float,
        job_left: float,
        named: str,
    ) -> None:
        stuck.timeout_s = upload_limit
        with pytest.raises(OutputDeliveryError) as caught:
            deliver(
                [output(make_png(tmp_path / "a.png"))],
                job_id="j",
                uploader=stuck,
                budget_bytes=1,
                timeout_s=job_left,
            )
        assert named in caught.value.message

    def test_plain_uploaders_get_no_deadline_but_the_jobs(self, tmp_path: Path) -> None:
        """An Uploader without its own limit is still bounded by the job's time."""
        release = threading.Event()

        class Plain:
            def upload(self, key: str, path: Path, content_type: str) -> str:
                release.wait()
                return "https://x/" + key

        try:
            with pytest.raises(OutputDeliveryError, match="JOB_TIMEOUT_S"):
                deliver(
                    [output(make_png(tmp_path / "a.png"))],
                    job_id="j",
                    uploader=Plain(),
                    budget_bytes=1,
                    timeout_s=0.2,
                )
        finally:
            release.set()
