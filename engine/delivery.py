"""Output files -> the response's ``images[]``: base64 data URIs, or S3 URLs.

Base64 is the default and is bounded by RunPod's payload cap, checked before
anything is encoded. With a bucket configured, each file is uploaded (a few at a
time, each retried with backoff) and its item carries a URL a plain HTTP GET can
download. All uploads share one deadline, ``UPLOAD_TIMEOUT_S`` or what is left of the
job's time if less: a stuck endpoint never holds the worker past it. At that deadline,
or the moment the job is cancelled, the uploads still going are cut (a bounded uploader
stops its requests then, wherever they are) and none starts after: nothing is left
uploading for a job that has answered. A file that cannot be read or uploaded becomes
one line of ``errors[]``; the others are still returned. When not one file got through,
the job fails (``OutputDeliveryError``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from engine import logs
from engine.deadline import Deadline
from engine.errors import ItemError, OutputDeliveryError, ResponseTooLargeError
from engine.outputs import OutputFile

log = logging.getLogger(__name__)

_MB = 1024 * 1024

# The response around the items (``{"images": [...], "errors": [...]}``) and what RunPod
# wraps it in (id, status, timings): small, but counted so the cap is never passed.
_ENVELOPE_BYTES = 512

# After a cut, how long delivery waits for the uploads to end (a cut request fails at
# once; a DNS lookup cannot be cut and is left to end on its own).
_CUT_GRACE_S = 2.0

# How many files are uploaded at once. Each upload is itself split into parts by boto3
# above 8 MB (engine/s3.py), so a few files in flight already fill a worker's uplink.
MAX_PARALLEL_UPLOADS = 4

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


@runtime_checkable
class BoundedUploader(Uploader, Protocol):
    """An :class:`Uploader` with its own time limit, that retries and bounds every request
    by the deadline it is given, and stops the moment that deadline is cancelled.
    ``deliver`` stops waiting at that deadline whatever the uploader does, and cancels it
    there (and on the job's cancel): this kind stops working then too."""

    @property
    def timeout_s(self) -> float:
        """The most one job's delivery may take (``UPLOAD_TIMEOUT_S``)."""
        ...

    @property
    def target(self) -> str:
        """Where files go, for messages: ``bucket 'x' at https://host`` (no keys)."""
        ...

    def upload(
        self, key: str, path: Path, content_type: str, *, deadline: Deadline | None = None
    ) -> str:
        """As :meth:`Uploader.upload`, given up by ``deadline``: its limit, or its cancel."""
        ...


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
    timeout_s: float | None = None,
    data_uri: bool = True,
    job: Deadline | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The response items for ``files`` and a line per file that could not be delivered.

    A base64 item's ``data`` is a data URI, or with ``data_uri=False`` the payload alone
    (``OUTPUT_BASE64=bare``, worker-comfyui's form).

    Without an uploader, raises ``ResponseTooLargeError`` before encoding anything if
    the base64 response would pass ``budget_bytes``. With one, uploads end by the
    smaller of the uploader's own limit (``UPLOAD_TIMEOUT_S``) and ``timeout_s`` (what is
    left of the job's time); raises ``OutputDeliveryError`` when not one file was delivered.
    ``job``'s cancel cuts the uploads at once, and raises its cancel error.
    """
    if uploader is None:
        items, errors = _as_base64(files, budget_bytes, data_uri)
    else:
        items, errors = _to_bucket(files, job_id, uploader, timeout_s, job)
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


def _prefix(file: OutputFile, data_uri: bool) -> str:
    return f"data:{file.mime_type};base64," if data_uri else ""


def _encoded_size(file: OutputFile, size: int, data_uri: bool) -> int:
    """Bytes this file adds to the JSON response as a base64 item."""
    base64_len = 4 * ((size + 2) // 3)
    skeleton = json.dumps(_item(file, "base64", "", size))
    return len(skeleton) + len(_prefix(file, data_uri)) + base64_len + len(", ")


def _as_base64(
    files: Sequence[OutputFile], budget_bytes: int, data_uri: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    errors: list[str] = []
    sized: list[tuple[OutputFile, int, int]] = []
    for file in files:
        try:
            size = file.path.stat().st_size
        except OSError as exc:
            errors.append(f"{file.filename}: cannot be read: {exc.strerror or exc}")
            continue
        sized.append((file, size, _encoded_size(file, size, data_uri)))
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
        data = _prefix(file, data_uri) + base64.b64encode(raw).decode("ascii")
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


@dataclass(frozen=True)
class _Limit:
    """How long uploads may take, and which setting says so (for the timeout message)."""

    seconds: float
    setting: str
    hint: str


def _upload_limit(uploader: Uploader, timeout_s: float | None) -> _Limit | None:
    """The smaller of the uploader's own limit and the job's remaining time."""
    limits: list[_Limit] = []
    if isinstance(uploader, BoundedUploader):
        own = uploader.timeout_s
        limits.append(
            _Limit(
                own,
                f"UPLOAD_TIMEOUT_S={own:g}",
                "check that the S3 service answers, or raise UPLOAD_TIMEOUT_S",
            )
        )
    if timeout_s is not None:
        limits.append(
            _Limit(
                max(timeout_s, 0.0),
                "what was left of the job's JOB_TIMEOUT_S",
                "raise JOB_TIMEOUT_S, or make the workflow faster",
            )
        )
    return min(limits, key=lambda limit: limit.seconds, default=None)


def _to_bucket(
    files: Sequence[OutputFile],
    job_id: str,
    uploader: Uploader,
    timeout_s: float | None,
    job: Deadline | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    if not files:
        return [], []
    keys = _unique_keys([object_key(job_id, file) for file in files])
    limit = _upload_limit(uploader, timeout_s)
    # The uploads' own deadline: cancelled at its limit, or with the job.
    deadline = Deadline.start(None if limit is None else limit.seconds)

    def upload(file: OutputFile, key: str) -> dict[str, Any]:
        # The upload thread's lines are the job's (a retry, a cut upload's abort), not
        # those of whichever job holds the engine meanwhile.
        with logs.bind_job(job_id):
            size = file.path.stat().st_size
            if isinstance(uploader, BoundedUploader):
                url = uploader.upload(key, file.path, file.mime_type, deadline=deadline)
            else:
                url = uploader.upload(key, file.path, file.mime_type)
            return _item(file, "s3_url", url, size)

    # Not ``with``: leaving it would wait for every thread, and a stuck request is the
    # very thing this must not wait for. At the deadline or the job's cancel the uploads
    # are cut, and their threads get a moment to end; one that does not (an uploader
    # that cannot be cut) is left to end on its own timeouts.
    pool = ThreadPoolExecutor(
        max_workers=min(MAX_PARALLEL_UPLOADS, len(files)), thread_name_prefix="upload"
    )

    def cut() -> None:
        deadline.cancel()

    with job.on_cancel(cut) if job is not None else nullcontext():
        try:
            futures = [
                pool.submit(upload, file, key) for file, key in zip(files, keys, strict=True)
            ]
            in_time = _wait_all(futures, deadline)
        finally:
            deadline.cancel()  # whatever still runs is cut; nothing new starts
            pool.shutdown(wait=False, cancel_futures=True)
    if isinstance(uploader, BoundedUploader) and len(in_time) < len(futures):
        _wait_all(futures, Deadline.start(_CUT_GRACE_S))  # the cut ones end
    if job is not None and job.cancelled:
        raise job.exceeded("while delivering outputs")
    items: list[dict[str, Any]] = []
    failures: list[tuple[str, str, str]] = []  # (file name, what failed, why)
    target = uploader.target if isinstance(uploader, BoundedUploader) else "the bucket"
    for file, future in zip(files, futures, strict=True):
        if future not in in_time or future.cancelled():
            assert limit is not None  # without a limit every future is done
            why = (
                f"S3 did not answer in time: timed out after {limit.seconds:.3g} s "
                f"({limit.setting}); {target}: {limit.hint}"
            )
            failures.append((file.filename, "upload failed", why))
            continue
        try:
            items.append(future.result())
        except ItemError as exc:
            failures.append((file.filename, "upload failed", exc.reason))
        except OSError as exc:
            failures.append((file.filename, "cannot be read", f"{exc.strerror or exc}"))
    log.info("uploaded %d of %d output(s)", len(items), len(files))
    errors = [f"{name}: {what}: {why}" for name, what, why in failures]
    if not items:
        raise _nothing_delivered(failures, errors)
    return items, errors


def _wait_all(futures: list[Future[Any]], deadline: Deadline) -> set[Future[Any]]:
    """Wait until every future is done, ``deadline`` passes or it is cancelled; the
    futures done by then."""
    wake = threading.Event()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                wake.set()

    for future in futures:
        future.add_done_callback(one_done)
    with deadline.on_cancel(wake.set):
        wake.wait(deadline.remaining())
    return {future for future in futures if future.done()}


def _nothing_delivered(
    failures: list[tuple[str, str, str]], errors: list[str]
) -> OutputDeliveryError:
    """The job's error when no file got through: the first cause (which names the bucket,
    its endpoint and what to do), and a detail line per file."""
    name, what, why = failures[0]
    causes = {(w, y) for _, w, y in failures}
    others = f" (and {len(causes) - 1} other cause(s): see details)" if len(causes) > 1 else ""
    count = f"None of the {len(failures)} output(s)"
    if what == "upload failed":
        message = f"{count} could be uploaded: {why}{others}"
    else:
        message = f"{count} could be delivered: {name} {what}: {why}{others}"
    return OutputDeliveryError(message, errors, extra={"failed_outputs": len(failures)})


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
