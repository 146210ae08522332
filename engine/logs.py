"""Logging for the worker: the job id on every line, secrets never.

Configured once by ``handler.py`` (:func:`configure`). Every record passes a
filter that adds the current job id and replaces any known secret with ``***`` —
including a ``comfy_org_api_key`` that arrived in a request, which is added for
the length of its job with :func:`job_context`.

The current job is process-wide state, not a context variable: a worker runs
one job at a time, and ComfyUI, the image fetcher and the S3 uploader log from
threads of their own that must carry the job id (and redact its key) too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

_secrets: set[str] = set()
_current: dict[str, Any] = {"job_id": "-", "secrets": ()}

# Shorter strings would redact ordinary words; real keys are far longer.
_MIN_SECRET_LEN = 6

# Libraries whose DEBUG output is request-by-request wire detail (and, for botocore,
# signed headers): COMFY_LOG_LEVEL=DEBUG (the contract's default) is meant for the
# worker and ComfyUI, not for these.
_CHATTY_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "PIL")

_FORMAT = "%(asctime)s %(levelname)s [%(job_id)s] %(name)s: %(message)s"


def redact(text: str, extra: Iterable[str] = (), *, registered: bool = True) -> str:
    """``text`` with ``extra`` (and, if ``registered``, every registered secret) as ``***``."""
    known = (*_secrets, *_current["secrets"]) if registered else ()
    for secret in (*known, *extra):
        if len(secret) >= _MIN_SECRET_LEN and secret in text:
            text = text.replace(secret, "***")
    return text


def redact_obj(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON-like value with exactly ``secrets`` redacted in every string.

    Only the values given: a response must keep an S3 access key *id*, which every
    presigned URL carries by design, while the log hides it with the other keys.
    """
    secrets = tuple(s for s in secrets if s)
    if isinstance(value, str):
        return redact(value, secrets, registered=False)
    if isinstance(value, dict):
        return {k: redact_obj(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v, secrets) for v in value]
    return value


class _JobFilter(logging.Filter):
    """Stamps the job id and scrubs secrets from the final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _current["job_id"]
        if _secrets or _current["secrets"]:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def add_secrets(values: Iterable[str | None]) -> None:
    """Register values that must never be logged for the life of the process."""
    _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_LEN)


def configure(level: str = "INFO", secrets: Iterable[str | None] = ()) -> None:
    """Send all logging to stderr with job ids, once per process."""
    add_secrets(secrets)
    root = logging.getLogger()
    if any(getattr(h, "_comfy_worker", False) for h in root.handlers):
        return
    # The runpod SDK calls logging.basicConfig() at import (serverless/utils/rp_upload.py):
    # its root handler would print every line twice, and without our filter, unredacted.
    for existing in list(root.handlers):
        root.removeHandler(existing)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_JobFilter())
    handler._comfy_worker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))


@contextlib.contextmanager
def job_context(job_id: str, secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Log under ``job_id`` and redact the job's own secrets until the block ends."""
    previous = dict(_current)
    _current.update(job_id=job_id, secrets=tuple(s for s in secrets if s))
    try:
        yield
    finally:
        _current.update(previous)
