"""Multipart uploads a cut left unfinished: which ones a client started, and their abort
off the job's path.

boto3 sends a file above 8 MB as a multipart upload: CreateMultipartUpload, then its
parts, then CompleteMultipartUpload. When a cancel or the job's limit cuts it part-way
(:mod:`engine.s3_sockets`), the parts already stored stay in the bucket, billed, as an
unfinished upload; s3transfer's own cleanup (AbortMultipartUpload) runs on the cut
client and cannot get out. :class:`MultipartLedger` hooks one client's botocore events
and knows the UploadId of each upload it started and has not completed or aborted;
:class:`MultipartCleaner` aborts those on a thread of its own with a fresh client, short
timeouts and a bound on the whole, and says in one log line what it aborted or why it
could not (many keys are not allowed ``s3:AbortMultipartUpload``).

Where the cut came between CreateMultipartUpload leaving and its answer, the UploadId
was never seen: only then the bucket's uploads are listed, and only those of exactly
that key, initiated (by S3's clock) no earlier than the second the request left
(by the worker's), are aborted. A server clock behind the worker's can hide such an
upload; it then stays, as the log line says.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine import logs
from engine.s3_sockets import watch_client

log = logging.getLogger(__name__)

# The whole cleanup of one cut upload (a listing at most, and an abort): it runs after
# the job has answered, so it may take a moment, but never lingers on a dead endpoint.
ABORT_BOUND_S = 15.0
# How long after the cut the cleanup starts. A cancel's answer goes out within
# milliseconds of the cut (0.007-0.016 s, scripts/bench_s3_cut.py --cases multipart on
# two shared cores), a job's limit answers once its cut uploads end (a moment more);
# started at once, the cleanup's own CPU (a fresh botocore client and a signed request,
# about 15 ms of pure Python under the GIL) slowed that answer by about 5 ms (median).
START_AFTER_S = 1.0
# The outcomes kept for anyone asking (tests, benchmarks); the count is kept whole.
_KEPT_OUTCOMES = 16

_LIFECYCLE = (
    "its parts stay in the bucket until a lifecycle rule aborts incomplete multipart uploads"
)


@dataclass(frozen=True)
class Unfinished:
    """A multipart upload started and neither completed nor aborted, as far as the
    client saw."""

    key: str
    upload_id: str | None
    """None: CreateMultipartUpload was sent and its answer never read (cut)."""
    sent_at: float
    """When CreateMultipartUpload left, by the worker's wall clock (``time.time()``)."""


@dataclass(frozen=True)
class Outcome:
    """What one cleanup did: the uploads aborted, and why the rest could not be."""

    key: str
    aborted: tuple[str, ...]
    """The UploadIds aborted."""
    failure: str | None
    """Why not every unfinished upload could be aborted (None: all were, or none was
    found to abort)."""
    gone: tuple[str, ...] = ()
    """The UploadIds S3 no longer had (NoSuchUpload): completed or aborted already."""


class MultipartLedger:
    """The multipart uploads one client started and has not ended, from its own events.

    Thread-safe: s3transfer calls the client from its worker threads."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Unfinished] = {}  # by id() of the call's context
        self._open: dict[str, Unfinished] = {}  # by UploadId
        events = client.meta.events
        events.register("before-parameter-build.s3.CreateMultipartUpload", self._creating)
        events.register("after-call.s3.CreateMultipartUpload", self._created)
        for operation in ("CompleteMultipartUpload", "AbortMultipartUpload"):
            events.register(f"before-parameter-build.s3.{operation}", self._ending)
            events.register(f"after-call.s3.{operation}", self._ended)

    def clear(self) -> None:
        """Forget everything: a new attempt starts (what an earlier one left is
        s3transfer's to abort, or was handed to a cleaner already)."""
        with self._lock:
            self._pending.clear()
            self._open.clear()

    def unfinished(self) -> tuple[Unfinished, ...]:
        """The uploads started and not ended: known ones, then those whose
        CreateMultipartUpload never answered."""
        with self._lock:
            return (*self._open.values(), *self._pending.values())

    # -- botocore's events (keyword arguments as botocore passes them) ------------------

    def _creating(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        upload = Unfinished(str(params.get("Key", "")), None, time.time())
        context["worker_multipart"] = upload
        with self._lock:
            self._pending[id(context)] = upload

    def _created(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        upload = context.get("worker_multipart")
        if not isinstance(upload, Unfinished):
            return
        upload_id = parsed.get("UploadId") if http_response.status_code < 300 else None
        with self._lock:
            self._pending.pop(id(context), None)  # answered: S3 made it, or did not
            if isinstance(upload_id, str) and upload_id:
                self._open[upload_id] = Unfinished(upload.key, upload_id, upload.sent_at)

    def _ending(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["worker_multipart_id"] = params.get("UploadId")

    def _ended(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        upload_id = context.get("worker_multipart_id")
        code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        # Done, or S3 no longer has it (completed or aborted already).
        if http_response.status_code < 300 or code == "NoSuchUpload":
            with self._lock:
                self._open.pop(str(upload_id), None)


class MultipartCleaner:
    """Aborts unfinished multipart uploads of one bucket, each cleanup on a thread of its
    own (never the job's), ``start_after_s`` after it is asked for (once the job has
    answered) and bounded by ``bound_s``; logs one line per cleanup."""

    def __init__(
        self,
        bucket: str,
        new_client: Callable[[], Any],
        secrets: Sequence[str] = (),
        bound_s: float | None = None,
        start_after_s: float | None = None,
    ) -> None:
        self._bucket = bucket
        self._new_client = new_client
        self._secrets = tuple(secrets)
        self._bound_s = ABORT_BOUND_S if bound_s is None else bound_s
        self._start_after_s = START_AFTER_S if start_after_s is None else start_after_s
        self._done = threading.Condition()
        self._finished = 0
        self._outcomes: deque[Outcome] = deque(maxlen=_KEPT_OUTCOMES)

    def abort(self, key: str, unfinished: Sequence[Unfinished]) -> None:
        """Start aborting ``unfinished`` (the uploads a cut left of ``key``); returns at
        once."""
        job = logs.current_job_id()  # the line is the cut job's, not the next one's
        threading.Thread(
            target=self._clean, args=(job, key, tuple(unfinished)), name="s3-abort", daemon=True
        ).start()

    @property
    def finished(self) -> int:
        """Cleanups ended so far, whatever their outcome."""
        with self._done:
            return self._finished

    def outcomes(self) -> list[Outcome]:
        """The last cleanups' outcomes, oldest first."""
        with self._done:
            return list(self._outcomes)

    def wait(self, count: int, timeout_s: float) -> bool:
        """Whether ``count`` cleanups have ended within ``timeout_s`` (a bound)."""
        with self._done:
            return self._done.wait_for(lambda: self._finished >= count, timeout_s)

    def _clean(self, job: str, key: str, unfinished: tuple[Unfinished, ...]) -> None:
        time.sleep(self._start_after_s)  # the job's answer first (START_AFTER_S)
        with logs.bind_job(job):
            try:
                outcome = self._abort_all(key, unfinished)
            # Best effort, after the job's answer: whatever failed is said in the one
            # line, never raised on a thread nobody joins.
            except Exception as exc:
                outcome = Outcome(key, (), f"{type(exc).__name__}: {exc}")
            self._report(outcome)
            with self._done:
                self._finished += 1
                self._outcomes.append(outcome)
                self._done.notify_all()

    def _abort_all(self, key: str, unfinished: tuple[Unfinished, ...]) -> Outcome:
        client = self._new_client()
        watch = watch_client(client)
        # The bound: its stop fails whatever request is going at once.
        timer = threading.Timer(self._bound_s, watch.stop) if watch is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        aborted: list[str] = []
        gone: list[str] = []
        try:
            ids = [u.upload_id for u in unfinished if u.upload_id]
            unanswered = [u for u in unfinished if u.upload_id is None]
            if unanswered:
                since = min(u.sent_at for u in unanswered)
                ids += [i for i in self._listed(client, key, since) if i not in ids]
            for upload_id in ids:
                try:
                    client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
                    aborted.append(upload_id)
                except ClientError as exc:
                    # The cut came as its completion went out, and S3 completed it; or
                    # it was aborted already: nothing is left to abort.
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
                    gone.append(upload_id)
        except (BotoCoreError, ClientError) as exc:
            return Outcome(key, tuple(aborted), self._why(exc, watch), tuple(gone))
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(Exception):
                client.close()
        return Outcome(key, tuple(aborted), None, tuple(gone))

    def _listed(self, client: Any, key: str, since: float) -> list[str]:
        """UploadIds of exactly ``key``, initiated no earlier than the second ``since``:
        never another key's (the prefix matches longer keys too), nor an older one."""
        listed = client.list_multipart_uploads(Bucket=self._bucket, Prefix=key)
        floor = math.floor(since)
        return [
            str(upload["UploadId"])
            for upload in listed.get("Uploads", [])
            if upload.get("Key") == key
            and upload.get("Initiated") is not None
            and upload["Initiated"].timestamp() >= floor
        ]

    def _why(self, exc: BaseException, watch: Any) -> str:
        if watch is not None and watch.stopped:
            return f"S3 did not answer within {self._bound_s:g} s"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.get("Code") or "Error"
            text = f"S3 refused it (HTTP {status} {code}: {error.get('Message') or 'no message'})"
            if status == 403 or code == "AccessDenied":
                text += "; the key is not allowed s3:AbortMultipartUpload"
            return text
        return f"{type(exc).__name__}: {exc}"

    def _report(self, outcome: Outcome) -> None:
        """One line, without secrets: what was aborted, or why not."""
        if outcome.failure is not None:
            done = f" ({len(outcome.aborted)} aborted)" if outcome.aborted else ""
            line = (
                f"could not abort the unfinished multipart upload of {outcome.key} that a cut "
                f"left{done}: {outcome.failure}; {_LIFECYCLE}"
            )
            log.warning("%s", logs.redact(line, self._secrets))
        elif outcome.aborted:
            log.info(
                "aborted the unfinished multipart upload of %s that a cut left (%d upload, "
                "its parts deleted)",
                outcome.key,
                len(outcome.aborted),
            )
        elif outcome.gone:
            log.info(
                "the multipart upload of %s that a cut left had ended already (S3 no longer "
                "has it: completed or aborted)",
                outcome.key,
            )
        else:
            log.info(
                "no unfinished multipart upload of %s to abort: the cut came before S3 "
                "answered its start, and none started since was listed",
                outcome.key,
            )
