"""S3 delivery against a real S3-compatible server (moto) on 127.0.0.1.

Each returned URL is downloaded with a plain HTTP GET, no AWS credentials, and
compared byte for byte: that is what a RunPod user's client does with it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from engine.delivery import deliver
from engine.errors import OutputDeliveryError, ResponseTooLargeError
from engine.outputs import OutputFile
from engine.s3 import S3Uploader
from engine.settings import BucketSettings
from engine.video import VideoInfo
from tests.e2e.conftest import bucket_settings
from tests.media_factory import make_animated_webp, make_png, make_video

pytestmark = pytest.mark.e2e

KEY_ID = "AKIAE2EFAKEKEYID0001"
SECRET = "e2e/fake+secret/access/key/000000000000"


def settings(endpoint: str, bucket: str, public_url: str | None = None) -> BucketSettings:
    """Bucket settings with fake keys for the local server."""
    return bucket_settings(endpoint, bucket, KEY_ID, SECRET, public_url=public_url)


def admin_client(endpoint: str) -> Any:
    """A client for setting the server up, as the bucket's owner would."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty, private bucket on the local server."""
    name = f"outputs-{uuid.uuid4().hex[:12]}"
    admin_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def output(path: Path, mime: str, kind: Any, info: VideoInfo | None = None) -> OutputFile:
    return OutputFile(
        node_id="9",
        filename=path.name,
        subfolder="",
        path=path,
        mime_type=mime,
        kind=kind,
        video=info,
    )


@pytest.fixture
def outputs(tmp_path: Path) -> list[OutputFile]:
    """A PNG, an animated WEBP, an MP4 and a 9 MB file (boto3 uploads that in parts)."""
    large = tmp_path / "large.mkv"
    large.write_bytes(os.urandom(9 * 1024 * 1024))
    info = VideoInfo(duration_s=1.0, fps=8.0, width=64, height=48, frames=8)
    return [
        output(make_png(tmp_path / "ComfyUI_00001_.png"), "image/png", "image"),
        output(make_animated_webp(tmp_path / "anim.webp"), "image/webp", "animation"),
        output(make_video(tmp_path / "clip.mp4"), "video/mp4", "video", info),
        output(large, "video/x-matroska", "video"),
    ]


def download(url: str) -> httpx.Response:
    """A plain GET, as a user's browser or script does it."""
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response


def test_presigned_urls_download_the_exact_bytes(
    s3_endpoint: str, bucket: str, outputs: list[OutputFile]
) -> None:
    """Every upload comes back as a presigned URL serving the same bytes and Content-Type."""
    uploader = S3Uploader(settings(s3_endpoint, bucket))
    items, errors = deliver(outputs, job_id="sync-e2e-1", uploader=uploader, budget_bytes=1)
    assert errors == []
    assert [i["filename"] for i in items] == [f.filename for f in outputs]
    for item, file in zip(items, outputs, strict=True):
        assert item["type"] == "s3_url"
        assert item["data"].startswith(f"{s3_endpoint}/{bucket}/sync-e2e-1/{file.filename}?")
        # SigV4 presigned URLs name the access key id (never the secret); S3 needs it to
        # check the signature, so whatever scrubs responses of secrets must leave it be.
        assert f"X-Amz-Credential={KEY_ID}%2F" in item["data"]
        assert SECRET not in item["data"]
        response = download(item["data"])
        assert response.content == file.path.read_bytes()
        assert response.headers["content-type"] == file.mime_type
        assert item["size_bytes"] == file.path.stat().st_size
    assert items[2]["video"]["frames"] == 8


def test_public_url_mode_returns_plain_urls(
    s3_endpoint: str, bucket: str, outputs: list[OutputFile]
) -> None:
    """With a public URL set, items are ``<public_url>/<key>`` with no signature."""
    # What a deployment with BUCKET_PUBLIC_URL has: a bucket anyone may read from.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    admin_client(s3_endpoint).put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    public = f"{s3_endpoint}/{bucket}"
    uploader = S3Uploader(settings(s3_endpoint, bucket, public_url=public))
    items, errors = deliver(outputs[:2], job_id="job-7", uploader=uploader, budget_bytes=1)
    assert errors == []
    assert [i["data"] for i in items] == [
        f"{public}/job-7/ComfyUI_00001_.png",
        f"{public}/job-7/anim.webp",
    ]
    assert download(items[1]["data"]).content == outputs[1].path.read_bytes()


def test_missing_bucket_fails_the_job_with_a_line_per_file_without_secrets(
    s3_endpoint: str, outputs: list[OutputFile]
) -> None:
    """Uploads to a bucket that does not exist: the job fails naming the bucket and the
    reason, with one line per file, and never a key."""
    uploader = S3Uploader(settings(s3_endpoint, "no-such-bucket"))
    with pytest.raises(OutputDeliveryError) as caught:
        deliver(outputs[:2], job_id="j", uploader=uploader, budget_bytes=1)
    error = caught.value
    assert error.code == "output_delivery_failed"
    assert error.message.startswith("None of the 2 output(s) could be uploaded: S3 refused it")
    assert "NoSuchBucket" in error.message and "BUCKET_NAME" in error.message
    assert [line.split(":")[0] for line in error.details] == ["ComfyUI_00001_.png", "anim.webp"]
    for line in error.details:
        assert "upload failed: S3 refused it (HTTP 404 NoSuchBucket" in line
        assert f"bucket 'no-such-bucket' at {s3_endpoint}" in line
        assert KEY_ID not in line
        assert SECRET not in line


def test_base64_over_the_cap_fails_with_a_readable_message(outputs: list[OutputFile]) -> None:
    """Without S3 a 9 MB output passes a 4 MB cap: the message says what to configure."""
    with pytest.raises(ResponseTooLargeError) as caught:
        deliver(outputs, job_id="j", uploader=None, budget_bytes=4 * 1024 * 1024)
    summary = caught.value.summary()
    assert summary.startswith("The outputs make a 12.")
    assert "MB base64 response, over the 4.0 MB" in summary
    assert "configure S3 delivery (BUCKET_ENDPOINT_URL" in summary
    assert "large.mkv: 12.0 MB as base64 (9.0 MB file)" in summary
