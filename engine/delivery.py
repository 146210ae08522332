"""Output files -> the response's ``images[]``: base64 data URIs, or S3 URLs.

Base64 is the default and is bounded by RunPod's payload cap, checked before
anything is encoded. With a bucket configured, each file is uploaded (a few at a
time) and its item carries a URL a plain HTTP GET can download. A file that cannot
be read or uploaded becomes one line of ``errors[]``; the others are still returned.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from engine.errors import ItemError, ResponseTooLargeError
from engine.logs import redact
from engine.outputs import OutputFile
from engine.settings import BucketSettings

log = logging.getLogger(__name__)

_MB = 1024 * 1024

# The response around the items (``{"images": [...], "errors": [...]}``) and what RunPod
# wraps it in (id, status, timings): small, but counted so the cap is never passed.
_ENVELOPE_BYTES = 512

# How many files are uploaded at once. Each upload is itself split into parts by boto3
# above 8 MB, so a few files in flight already fill a worker's uplink.
_MAX_PARALLEL_UPLOADS = 4
_PARTS_PER_UPLOAD = 4

# The largest files named when the response is too large: enough to see what to cut.
_LISTED_LARGEST = 5

# S3 keys are case-sensitive byte strings up to 1,024 bytes; keeping to these characters
# means a key never needs escaping in a URL, a shell or a console.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_KEY_PART = 200


class Uploader(Protocol):
    """Stores one output file and says where a plain HTTP GET can fetch it."""

    def upload(self, key: str, path: Path, content_type: str) -> str:
        """Upload ``path`` under ``key``; return its download URL or raise ``ItemError``."""
        ...


class S3Uploader:
    """Uploads to an S3-compatible bucket; URLs are presigned unless a public URL is set."""

    def __init__(self, bucket: BucketSettings, client: Any | None = None) -> None:
        self._bucket = bucket
        # botocore's messages can quote the access key id (e.g. InvalidAccessKeyId).
        self._secrets = tuple(s for s in (bucket.access_key_id, bucket.secret_access_key) if s)
        self._client = client if client is not None else _s3_client(bucket)
        self._transfer = TransferConfig(max_concurrency=_PARTS_PER_UPLOAD)

    def upload(self, key: str, path: Path, content_type: str) -> str:
        """Upload one file with its Content-Type; its URL, or ``ItemError`` saying why not."""
        try:
            self._client.upload_file(
                str(path),
                self._bucket.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )
            url = self.url_for(key)
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise ItemError(key, self._describe(exc, path)) from exc
        log.debug("uploaded %s to bucket %s", key, self._bucket.bucket)
        return url

    def url_for(self, key: str) -> str:
        """The URL a plain HTTP GET downloads ``key`` from: public, or presigned."""
        if self._bucket.public_url:
            return f"{self._bucket.public_url}/{quote(key)}"
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket.bucket, "Key": key},
            ExpiresIn=self._bucket.url_expiry_s,
        )
        return url

    def _describe(self, exc: Exception, path: Path) -> str:
        """A one-line reason without secrets or the worker's local paths."""
        # boto3 wraps the service's answer in S3UploadFailedError, whose text starts
        # with the local path of the file; the ClientError underneath says it plainly.
        cause = exc if isinstance(exc, ClientError) else exc.__context__
        where = f"bucket {self._bucket.bucket!r} at {self._bucket.endpoint_url}"
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            code = error.get("Code") or "Error"
            message = error.get("Message") or "no message"
            reason = f"S3 refused it ({code}: {message}); {where}"
        else:
            reason = f"{type(exc).__name__}: {exc}; {where}".replace(str(path), path.name)
        return redact(reason, self._secrets)


def _s3_client(bucket: BucketSettings) -> Any:
    """A boto3 S3 client with the bucket's own credentials, never the host's."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": _addressing_style(bucket.endpoint_url)},
        # Standard mode retries throttling and 5xx answers; the timeouts keep a dead
        # endpoint from holding a finished job until RunPod's own limit.
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=bucket.region,
        config=config,
    )


def _addressing_style(endpoint_url: str) -> str:
    """Path-style for IP and localhost endpoints: ``<bucket>.127.0.0.1`` cannot resolve."""
    host = urlsplit(endpoint_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return "path"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "auto"
    return "path"


def object_key(job_id: str, file: OutputFile) -> str:
    """``<job_id>/<subfolder>/<filename>`` in characters that need no escaping anywhere."""
    folders = [_safe_part(part) for part in (job_id, *re.split(r"[\\/]+", file.subfolder))]
    name = _safe_part(file.filename) or "output"
    return "/".join([*(part for part in folders if part), name])


def _safe_part(part: str) -> str:
    cleaned = _UNSAFE_KEY_CHARS.sub("_", part)[:_MAX_KEY_PART]
    return "" if cleaned.strip(".") == "" else cleaned


def deliver(
    files: Sequence[OutputFile],
    *,
    job_id: str,
    uploader: Uploader | None,
    budget_bytes: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The response items for ``files`` and a line per file that could not be delivered.

    Without an uploader, raises ``ResponseTooLargeError`` before encoding anything if
    the base64 response would pass ``budget_bytes``.
    """
    if uploader is None:
        items, errors = _as_base64(files, budget_bytes)
    else:
        items, errors = _to_bucket(files, job_id, uploader)
    for line in errors:
        log.warning("output not delivered: %s", line)
    return items, errors


def _item(
    file: OutputFile, kind: Literal["base64", "s3_url"], data: str, size: int
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "filename": file.filename,
        "type": kind,
        "data": data,
        "mime_type": file.mime_type,
        "node_id": file.node_id,
        "size_bytes": size,
    }
    if file.video is not None:
        item["video"] = dataclasses.asdict(file.video)
    return item


def _data_uri_prefix(file: OutputFile) -> str:
    return f"data:{file.mime_type};base64,"


def _encoded_size(file: OutputFile, size: int) -> int:
    """Bytes this file adds to the JSON response as a base64 item."""
    base64_len = 4 * ((size + 2) // 3)
    skeleton = json.dumps(_item(file, "base64", "", size))
    return len(skeleton) + len(_data_uri_prefix(file)) + base64_len + len(", ")


def _as_base64(
    files: Sequence[OutputFile], budget_bytes: int
) -> tuple[list[dict[str, Any]], list[str]]:
    errors: list[str] = []
    sized: list[tuple[OutputFile, int, int]] = []
    for file in files:
        try:
            size = file.path.stat().st_size
        except OSError as exc:
            errors.append(f"{file.filename}: cannot be read: {exc.strerror or exc}")
            continue
        sized.append((file, size, _encoded_size(file, size)))
    total = _ENVELOPE_BYTES + sum(encoded for _, _, encoded in sized)
    if total > budget_bytes:
        raise _too_large(sized, total, budget_bytes)
    items: list[dict[str, Any]] = []
    for file, _, _ in sized:
        try:
            raw = file.path.read_bytes()
        except OSError as exc:
            errors.append(f"{file.filename}: cannot be read: {exc.strerror or exc}")
            continue
        data = _data_uri_prefix(file) + base64.b64encode(raw).decode("ascii")
        items.append(_item(file, "base64", data, len(raw)))
    log.info("returning %d output(s) as base64, %.1f MB", len(items), total / _MB)
    return items, errors


def _too_large(
    sized: Sequence[tuple[OutputFile, int, int]], total: int, budget_bytes: int
) -> ResponseTooLargeError:
    largest = sorted(sized, key=lambda entry: entry[2], reverse=True)
    details = [
        f"{file.filename}: {encoded / _MB:.1f} MB as base64 ({size / _MB:.1f} MB file)"
        for file, size, encoded in largest[:_LISTED_LARGEST]
    ]
    if len(largest) > _LISTED_LARGEST:
        details.append(f"... and {len(largest) - _LISTED_LARGEST} more file(s)")
    return ResponseTooLargeError(
        f"The outputs make a {total / _MB:.1f} MB base64 response, over the "
        f"{budget_bytes / _MB:.1f} MB this worker returns (RunPod refuses larger results): "
        "configure S3 delivery (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, "
        "BUCKET_SECRET_ACCESS_KEY) or make fewer or smaller outputs",
        details,
        extra={"response_bytes": total, "budget_bytes": budget_bytes},
    )


def _to_bucket(
    files: Sequence[OutputFile], job_id: str, uploader: Uploader
) -> tuple[list[dict[str, Any]], list[str]]:
    if not files:
        return [], []
    keys = _unique_keys([object_key(job_id, file) for file in files])

    def upload(file: OutputFile, key: str) -> dict[str, Any]:
        size = file.path.stat().st_size
        url = uploader.upload(key, file.path, file.mime_type)
        return _item(file, "s3_url", url, size)

    items: list[dict[str, Any]] = []
    errors: list[str] = []
    workers = min(_MAX_PARALLEL_UPLOADS, len(files))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
        futures = [pool.submit(upload, file, key) for file, key in zip(files, keys, strict=True)]
        for file, future in zip(files, futures, strict=True):
            try:
                items.append(future.result())
            except ItemError as exc:
                errors.append(f"{file.filename}: upload failed: {exc.reason}")
            except OSError as exc:
                errors.append(f"{file.filename}: cannot be read: {exc.strerror or exc}")
    log.info("uploaded %d of %d output(s)", len(items), len(files))
    return items, errors


def _unique_keys(keys: list[str]) -> list[str]:
    """Keys made distinct: two names can map to the same safe key (``a b.png``, ``a_b.png``)."""
    seen: set[str] = set()
    unique: list[str] = []
    for key in keys:
        candidate, n = key, 1
        while candidate in seen:
            n += 1
            stem, dot, ext = key.rpartition(".")
            candidate = f"{stem}-{n}.{ext}" if dot and "/" not in ext else f"{key}-{n}"
        seen.add(candidate)
        unique.append(candidate)
    return unique
