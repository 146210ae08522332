"""S3 delivery through the whole worker: local API server -> worker -> moto on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import boto3
import httpx

from tests import workflows
from tests.e2e.conftest import WorkerServer

KEY_ID = "AKIAWORKERE2E0000001"
SECRET = "worker/e2e+secret/key/0000000000000000000"


def test_outputs_are_uploaded_and_downloadable_by_plain_get(
    start_worker: Callable[..., WorkerServer], s3_endpoint: str
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
        assert (
            response.content[:4]
            in (b"RIFF", b"\x00\x00\x00\x1c", b"\x00\x00\x00 ", b"\x1aE\xdf\xa3")
            or len(response.content) == item["size_bytes"]
        )
        assert len(response.content) == item["size_bytes"]
    assert SECRET not in str(body)
    assert SECRET not in worker.log() and KEY_ID not in worker.log()
    assert [p for p in worker.work_dir.rglob("*") if p.is_file()] == []
