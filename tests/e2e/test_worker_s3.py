"""S3 delivery through the whole worker: local API server -> worker -> moto on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import imageio_ffmpeg
from PIL import Image

from tests import workflows
from tests.e2e.conftest import WorkerServer, files_left

KEY_ID = "AKIAWORKERE2E0000001"
SECRET = "worker/e2e+secret/key/0000000000000000000"


def test_outputs_are_uploaded_and_downloadable_by_plain_get(
    start_worker: Callable[..., WorkerServer], s3_endpoint: str, tmp_path: Path
) -> None:
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket="outputs")
    worker = start_worker(
        BUCKET_ENDPOINT_URL=f"{s3_endpoint}/outputs",
        BUCKET_ACCESS_KEY_ID=KEY_ID,
        BUCKET_SECRET_ACCESS_KEY=SECRET,
    )
    body = worker.runsync({"workflow": workflows.media(frames=4)})
    assert body["status"] == "COMPLETED", body
    items = body["output"]["images"]
    assert [i["type"] for i in items] == ["s3_url"] * 3
    for item in items:
        url = item["data"]
        assert urlsplit(url).path.startswith(f"/outputs/{body['id']}/")
        response = httpx.get(url)  # no AWS credentials: what a user's client does
        assert response.status_code == 200
        assert response.headers["content-type"] == item["mime_type"]
        assert len(response.content) == item["size_bytes"]
        local = tmp_path / item["filename"]
        local.write_bytes(response.content)
        if item["mime_type"].startswith("video/"):
            assert imageio_ffmpeg.count_frames_and_secs(str(local))[0] == 4
        else:
            assert Image.open(local).format == "WEBP"
    assert SECRET not in str(body)
    assert SECRET not in worker.log() and KEY_ID not in worker.log()
    assert files_left(worker.work_dir) == []
