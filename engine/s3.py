"""The S3 uploader: one output file into an S3-compatible bucket, retried within a deadline.

:class:`S3Uploader` implements :class:`engine.delivery.BoundedUploader`: each upload is
retried with backoff on failures that may pass (refused or dropped connections,
timeouts, HTTP 5xx, throttling), never past the deadline ``deliver`` gives it, and a
failure becomes an ``ItemError`` whose one line names the cause, the bucket and what to
check, without secrets or local paths.

That deadline's cancel (the job's cancel, or ``deliver`` at its limit) cuts the upload at
once, wherever it is: each attempt leases a client of its own whose sockets are all in
one watch (:mod:`engine.s3_sockets`), and the cancel shuts them, from the connect to
S3's answer. A cut client is closed, never used again, so nothing more is sent for a
stopped upload; the others go back to a few idle ones, their connections kept alive.
A multipart upload (above 8 MB) cut part-way is aborted afterwards, off the job's path,
by :mod:`engine.s3_multipart`, which knows its UploadId from the leased client's events.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)

from engine.connections import SocketWatch
from engine.deadline import Deadline
from engine.delivery import MAX_PARALLEL_UPLOADS
from engine.errors import ItemError
from engine.logs import redact
from engine.s3_multipart import MultipartCleaner, MultipartLedger
from engine.s3_sockets import watch_client
from engine.settings import BucketSettings

log = logging.getLogger(__name__)

# boto3 splits an upload above 8 MB into parts, this many at once per file.
_PARTS_PER_UPLOAD = 4

# Attempts per file, within the deadline. Waits double from 0.5 s (0.5, 1, 2, 4 s, with
# jitter): a restarting endpoint or a burst of 503 SlowDown passes in a few seconds; a
# refusal (403, a missing bucket) is never retried.
_MAX_ATTEMPTS = 5
_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 8.0
# Per request: a connect takes milliseconds when the endpoint is up. The read timeout is
# the stall limit (UPLOAD_STALL_S): botocore applies it to every socket operation, each
# send of a block of the body and the wait for the answer, so an upload that keeps
# moving is never cut by it, and an endpoint that accepts and then answers nothing is
# found stalled after it. Near the deadline both shrink to fit in what is left; never
# below 0.1 s (botocore refuses 0).
_CONNECT_TIMEOUT_S = 10
_MIN_TIMEOUT_S = 0.1
# No new attempt with less than this left after its pause: it could hardly upload
# anything, and the failure seen so far tells the user more than a timeout would.
_MIN_ATTEMPT_S = 0.5
# Idle clients kept for the next uploads (their connections stay alive): as many as two
# deliveries upload at once (MAX_CONCURRENT_JOBS=2, the default); more are closed.
_IDLE_CLIENTS = 2 * MAX_PARALLEL_UPLOADS
# Each request of the abort after a cut: connect within 2 s, S3's answer within the rest
# (an abort or a listing answers in milliseconds when S3 is up).
_ABORT_REQUEST_S = 8.0


@dataclass(frozen=True)
class _Lease:
    """A client one attempt uses alone, and the watch that holds all its sockets."""

    client: Any
    watch: SocketWatch | None
    reusable: bool
    """False for a client made for the end of a deadline (shorter timeouts) or given in."""
    ledger: MultipartLedger | None = None
    """The multipart uploads the client started and has not ended (None: given in)."""

    def cut(self) -> None:
        """Shut every socket of the client: what it is doing fails at once."""
        if self.watch is not None:
            self.watch.stop()

    @property
    def was_cut(self) -> bool:
        return self.watch is not None and self.watch.stopped


@dataclass(frozen=True)
class _Failure:
    """Why one attempt failed, in words, and whether another attempt may succeed."""

    cause: str
    hint: str
    retryable: bool


class S3Uploader:
    """Uploads to an S3-compatible bucket; URLs are presigned unless a public URL is set.

    Each upload is retried with backoff on failures that may pass (refused or dropped
    connections, timeouts, HTTP 5xx, throttling), never past its deadline; botocore's own
    retries are off so that one attempt is one request, whose connect and read timeouts
    are cut to the time left.
    """

    def __init__(self, bucket: BucketSettings, client: Any | None = None) -> None:
        self._bucket = bucket
        self.timeout_s = bucket.upload_timeout_s
        self._stall_s = bucket.upload_stall_s
        self.target = f"bucket {bucket.bucket!r} at {_origin(bucket.endpoint_url)}"
        # botocore's messages can quote the access key id (e.g. InvalidAccessKeyId).
        self._secrets = tuple(s for s in (bucket.access_key_id, bucket.secret_access_key) if s)
        # boto3 sessions are not thread-safe; clients made from one share its loaded
        # service model (about 10 ms a client instead of 500 ms).
        self._session = boto3.session.Session()
        self._session_lock = threading.Lock()
        self._fixed_client = client
        # Signs URLs only (no request): never leased, never cut.
        self._client = client if client is not None else self._new_client(None)
        self._idle: list[_Lease] = []
        self._idle_lock = threading.Lock()
        self._transfer = TransferConfig(max_concurrency=_PARTS_PER_UPLOAD)
        # The deadlines of deliveries that met a stalled endpoint: a delivery's files share
        # one, so its files still queued fail at once instead of stalling one wave after
        # another (16 outputs, 4 at a time, would otherwise stall 4 times over).
        self._stalled: set[float] = set()
        self._stalled_lock = threading.Lock()
        self.cleaner = MultipartCleaner(
            bucket.bucket, lambda: self._new_client(_ABORT_REQUEST_S), self._secrets
        )
        """Aborts the multipart uploads cut part-way; ``cleaner.wait`` says when it has."""

    def upload(
        self, key: str, path: Path, content_type: str, *, deadline: Deadline | None = None
    ) -> str:
        """Upload one file with its Content-Type; its URL, or ``ItemError`` saying why not.

        Given up by ``deadline`` (``UPLOAD_TIMEOUT_S`` from now without one); its cancel
        cuts the request in flight and starts no other.
        """
        if deadline is None:
            deadline = Deadline.start(self.timeout_s)
        # One float per delivery, shared by its files: the key of the stalled set.
        end = deadline.started + (deadline.limit_s or self.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            remaining = end - time.monotonic()
            if deadline.cancelled:
                raise ItemError(key, f"the upload was stopped before it was sent; {self.target}")
            if remaining <= 0:  # queued behind other files until the deadline passed
                raise ItemError(key, f"no time was left to upload it; {self.target}")
            with self._stalled_lock:
                stalled = end in self._stalled
            if stalled:
                raise ItemError(
                    key,
                    f"not tried: S3 stalled on another file of this job (UPLOAD_STALL_S="
                    f"{self._stall_s:g}); {self.target}: check that the S3 service answers",
                )
            try:
                self._attempt(remaining, deadline, str(path), key, content_type)
                break
            except (BotoCoreError, ClientError, Boto3Error) as exc:
                if deadline.cancelled:  # cut: what the sockets said is not the cause
                    raise ItemError(
                        key, f"the upload was stopped while it was sent; {self.target}"
                    ) from exc
                failure = self._classify(exc, path)
                if _is_read_timeout(exc) and time.monotonic() < end - _MIN_TIMEOUT_S:
                    # The stall limit ran out, not the deadline: another attempt would
                    # stall as long again, so the job hears now, not at UPLOAD_TIMEOUT_S.
                    failure = _Failure(
                        f"S3 did not answer for {self._stall_s:g} s (UPLOAD_STALL_S): it "
                        "accepted the connection, then nothing moved",
                        "check that the S3 service answers; raise UPLOAD_STALL_S only if it "
                        "is known to be that slow",
                        retryable=False,
                    )
                    self._mark_stalled(end)
                pause = _backoff_s(attempt)
                if (
                    not failure.retryable
                    or attempt >= _MAX_ATTEMPTS
                    or time.monotonic() + pause + _MIN_ATTEMPT_S > end
                ):
                    raise ItemError(key, self._reason(failure, attempt)) from exc
                log.info(
                    "upload of %s failed (%s); attempt %d in %.1f s",
                    key,
                    redact(failure.cause, self._secrets),
                    attempt + 1,
                    pause,
                )
                _pause(deadline, pause)
        log.debug("uploaded %s to bucket %s", key, self._bucket.bucket)
        return self.url_for(key)

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

    def _attempt(
        self, remaining: float, deadline: Deadline, path: str, key: str, content_type: str
    ) -> None:
        """One attempt on a leased client, cut by ``deadline``'s cancel."""
        lease = self._lease(remaining)
        if lease.ledger is not None:
            lease.ledger.clear()
        try:
            with deadline.on_cancel(lease.cut):
                lease.client.upload_file(
                    path,
                    self._bucket.bucket,
                    key,
                    ExtraArgs={"ContentType": content_type},
                    Config=self._transfer,
                )
        finally:
            # upload_file has returned: s3transfer's threads are done with the client,
            # and what it started is in the ledger for good.
            if lease.was_cut and lease.ledger is not None:
                unfinished = lease.ledger.unfinished()
                if unfinished:
                    self.cleaner.abort(key, unfinished)
            self._give_back(lease)

    def _lease(self, remaining: float) -> _Lease:
        """A client for one attempt alone, whose connect + read timeouts fit in
        ``remaining`` seconds.

        With time to spare an idle one (its pooled connections are reused) or a new one;
        near the deadline a fresh one, so a stuck request ends when the deadline does.
        """
        if self._fixed_client is not None:
            return _Lease(self._fixed_client, None, reusable=False)
        if remaining >= self._connect_s() + self._stall_s:
            with self._idle_lock:
                if self._idle:
                    return self._idle.pop()
            client = self._new_client(None)
            return _Lease(client, watch_client(client), True, MultipartLedger(client))
        client = self._new_client(max(remaining, _MIN_TIMEOUT_S))
        return _Lease(client, watch_client(client), False, MultipartLedger(client))

    def _give_back(self, lease: _Lease) -> None:
        """Keep the client for another attempt, or close it: one that was cut (its
        upload was stopped: nothing more goes out through it) or made for one attempt."""
        if lease.client is self._fixed_client:
            return
        if lease.reusable and not lease.was_cut:
            with self._idle_lock:
                if len(self._idle) < _IDLE_CLIENTS:
                    self._idle.append(lease)
                    return
        lease.client.close()

    def _new_client(self, within_s: float | None) -> Any:
        """A client with the bucket's own credentials, never the host's."""
        connect, read = self._connect_s(), self._stall_s
        if within_s is not None:
            # A connect is quick or the host is dead; the read waits for S3 to store the
            # file: it gets most of what is left, and the two together fit in it.
            connect = min(connect, within_s / 4)
            read = min(read, within_s - connect)
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": _addressing_style(self._bucket.endpoint_url)},
            # One attempt is one request: the retries are ours, inside the deadline.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect,
            read_timeout=read,
            # One upload at a time per client (leased), in parts (urllib3 warns and drops
            # connections beyond the pool).
            max_pool_connections=_PARTS_PER_UPLOAD,
        )
        with self._session_lock:
            return self._session.client(
                "s3",
                endpoint_url=self._bucket.endpoint_url,
                aws_access_key_id=self._bucket.access_key_id,
                aws_secret_access_key=self._bucket.secret_access_key,
                region_name=self._bucket.region,
                config=config,
            )

    def _mark_stalled(self, deadline: float) -> None:
        now = time.monotonic()
        with self._stalled_lock:
            self._stalled = {d for d in self._stalled if d > now}  # past deliveries go
            self._stalled.add(deadline)

    def _connect_s(self) -> float:
        return min(float(_CONNECT_TIMEOUT_S), self._stall_s)

    def _reason(self, failure: _Failure, attempts: int) -> str:
        """One line without secrets, local paths or object keys; ends with what to do."""
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return redact(f"{failure.cause}{tries}; {self.target}: {failure.hint}", self._secrets)

    def _classify(self, exc: Exception, path: Path) -> _Failure:
        # boto3 wraps the service's answer in S3UploadFailedError, whose text starts
        # with the local path of the file; the ClientError underneath says it plainly.
        cause = exc if isinstance(exc, ClientError) else exc.__context__
        if isinstance(cause, ClientError):
            return _service_failure(cause)
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return _Failure(
                _connect_cause(exc),
                "check BUCKET_ENDPOINT_URL and that the S3 service is up and reachable",
                retryable=True,
            )
        if isinstance(exc, ReadTimeoutError):
            return _Failure(
                "S3 did not answer in time (it accepted the connection, then nothing came back)",
                f"check the S3 service, or raise UPLOAD_TIMEOUT_S (now {self.timeout_s:g} s)",
                retryable=True,
            )
        if isinstance(exc, HTTPClientError) and not isinstance(exc, SSLError):
            return _Failure(
                f"the connection failed ({type(exc).__name__})",
                "check BUCKET_ENDPOINT_URL and that the S3 service is up",
                retryable=True,
            )
        return _Failure(
            f"{type(exc).__name__}: {exc}".replace(str(path), path.name),
            "check the bucket settings (BUCKET_*)",
            retryable=False,
        )


# S3 error codes that a later attempt may not get (besides every 5xx).
_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests"}
)


def _service_failure(error: ClientError) -> _Failure:
    """S3 answered: a refusal to fix (4xx) or a failure to wait out (5xx, throttling)."""
    body = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = body.get("Code") or "Error"
    message = body.get("Message") or "no message"
    http = f"HTTP {status} " if status else ""
    if (isinstance(status, int) and status >= 500) or status == 429 or code in _TRANSIENT_CODES:
        return _Failure(
            f"S3 failed ({http}{code}: {message})",
            "the S3 service is failing; try again later, or check its status",
            retryable=True,
        )
    if status == 403 or code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        hint = (
            "check BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY: the key must be allowed "
            "to PutObject in this bucket, and BUCKET_REGION must be the bucket's"
        )
    elif code == "NoSuchBucket":
        hint = "check the bucket name in BUCKET_ENDPOINT_URL (or BUCKET_NAME)"
    else:
        hint = "check the bucket settings (BUCKET_*)"
    return _Failure(f"S3 refused it ({http}{code}: {message})", hint, retryable=False)


def _connect_cause(exc: BotoCoreError) -> str:
    """'connection refused', 'host name not found'...: what the socket said, in words."""
    if isinstance(exc, ConnectTimeoutError):
        return "connecting to S3 timed out"
    # botocore keeps urllib3's error in ``kwargs["error"]``; the socket's is its cause.
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return "S3 refused the connection (nothing listens on that port)"
        if isinstance(error, socket.gaierror):
            return "the S3 host name could not be resolved"
        error = error.__cause__ or error.__context__ or getattr(error, "kwargs", {}).get("error")
    return "could not connect to S3"


def _is_read_timeout(exc: BaseException) -> bool:
    """Whether a request stalled (its read timeout passed), boto3's wrapper unwrapped."""
    return isinstance(exc, ReadTimeoutError) or isinstance(exc.__context__, ReadTimeoutError)


def _pause(deadline: Deadline, seconds: float) -> None:
    """Wait ``seconds`` before the next attempt, or less if ``deadline`` is cancelled."""
    wake = threading.Event()
    with deadline.on_cancel(wake.set):
        wake.wait(seconds)


def _backoff_s(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt``: doubling, with jitter so that
    parallel uploads do not retry in step."""
    base: float = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1))
    return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret


def _origin(endpoint_url: str) -> str:
    """``scheme://host[:port]`` of the endpoint: no user info, path or query in messages."""
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


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
