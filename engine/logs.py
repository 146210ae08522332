"""Logging for the worker: the job id on every line, secrets never.

Configured once by ``handler.py`` (:func:`configure`). Every record passes a
filter that adds the current job id and replaces any known secret with ``***`` —
including a ``comfy_org_api_key`` that arrived in a request, which is added for
the length of its job with :func:`job_context` — and shows every URL without its user
info, query or fragment (:func:`redact_urls`).

Jobs overlap (``MAX_CONCURRENT_JOBS``), so the job of a line is told per thread: the
thread that handles a job and the lane that runs its phases are bound to it
(:func:`job_context`, :func:`bind_job`); a thread bound to no job (ComfyUI's engine
thread, the fetcher's and uploader's helpers) logs under the job whose run holds the
engine (:func:`engine_job`), else under the only job in flight, else ``-``. Every
job in flight's keys are redacted from every line, whichever job wrote it: a line of
one job never shows another's key either.

Two more filters keep the boot log readable at ``COMFY_LOG_LEVEL=DEBUG`` (the
contract's default) without hiding anything a user needs: ComfyUI's one line per
extra model search path (69 with this repo's ``extra_model_paths.yaml``) becomes one
summary line, ComfyUI's DEBUG pairs "recursive file list on directory X" + "found N
files" become one line each, and torio's search for FFmpeg libraries (a traceback
per version it tries, logged when torchaudio is imported) becomes one-liners and a
single INFO line.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

_secrets: set[str] = set()
# Every job in flight: its id and the secrets its request carried, by a token of its own.
_active: dict[object, tuple[str, tuple[str, ...]]] = {}
_active_lock = threading.Lock()
_bound = threading.local()  # .job_id: the job this thread works for
_engine: list[str | None] = [None]  # the job whose run holds ComfyUI's engine


def _job_id() -> str:
    """The job of the current thread's line (see the module's docstring)."""
    bound: str | None = getattr(_bound, "job_id", None)
    if bound:
        return bound
    if _engine[0]:
        return _engine[0]
    active = list(_active.values())
    return active[0][0] if len(active) == 1 else "-"


def _job_secrets() -> tuple[str, ...]:
    """The secrets of every job in flight."""
    return tuple(secret for _, secrets in list(_active.values()) for secret in secrets)


# Shorter strings would redact ordinary words; real keys are far longer.
_MIN_SECRET_LEN = 6

# Libraries whose DEBUG output is request-by-request wire detail (and, for botocore,
# signed headers): COMFY_LOG_LEVEL=DEBUG (the contract's default) is meant for the
# worker and ComfyUI, not for these.
# matplotlib (imported by custom node packs) logs its config and font cache at import.
_CHATTY_LIBRARIES = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "httpx",
    "httpcore",
    "PIL",
    "matplotlib",
)

_FORMAT = "%(asctime)s %(levelname)s [%(job_id)s] %(name)s: %(message)s"

# ComfyUI's utils/extra_config.py: logging.info("Adding extra search path {} {}".format(...)).
_SEARCH_PATH_PREFIX = "Adding extra search path "
# torio/_extension/utils.py logs each FFmpeg version it tries (6, 5, 4, then unversioned).
_TORIO_LOGGER = "torio._extension.utils"
_TORIO_GAVE_UP = "Failed to load FFmpeg extension."
# ComfyUI's folder_paths.py at DEBUG, one pair per model folder it lists.
_FILE_LIST_PREFIX = "recursive file list on directory "
_FOUND_FILES = re.compile(r"found \d+ files")


# A request's Comfy.org key where a whole request is printed: a dict's repr or JSON, also
# JSON inside a string (an ``input`` sent as a JSON string), so quotes may be escaped.
_KEY_FIELD = re.compile(
    r"""(?P<q>\\*['"])(?P<name>comfy_org_api_key|api_key_comfy_org)(?P=q)(?P<sep>\s*:\s*)"""
    r"""(?P<vq>\\*['"])(?P<value>.*?)(?P=vq)"""
)
# User info, query and fragment of a URL: where presigned links and tokens travel. A URL
# in free text ends at a space, a quote or a backslash (how messages and reprs end one).
_URL_SECRETS = re.compile(
    r"""(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/'"\\@?#]*@)?"""
    r"""(?P<rest>[^\s?#'"\\]*)(?P<tail>[?#][^\s'"\\]*)?"""
)


def redact_urls(text: str) -> str:
    """``text`` with every URL's user info dropped and its query and fragment as ``?***``.

    The one place that does this for free text: log lines (every record, ComfyUI's
    included), the runpod SDK's own lines, and a failed job's answer
    (:func:`redact_urls_obj`), where a workflow value or an input may echo a presigned
    link or a ``?token=``. A URL without them stays as written.
    """
    if "://" not in text:
        return text

    def shown(match: re.Match[str]) -> str:
        if match["user"] is None and match["tail"] is None:
            return match[0]
        return f"{match['scheme']}{match['rest']}" + ("?***" if match["tail"] else "")

    return _URL_SECRETS.sub(shown, text)


def redact_urls_obj(value: Any) -> Any:
    """A JSON-like value with :func:`redact_urls` applied to every string: for an error's
    answer (message, details, ComfyUI's node errors), never for outputs, whose S3 links
    must keep their signatures."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {k: redact_urls_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_urls_obj(v) for v in value]
    return value


def redact(text: str, extra: Iterable[str] = (), *, registered: bool = True) -> str:
    """``text`` with ``extra`` (and, if ``registered``, every registered secret) as ``***``;
    so is the value of a Comfy.org key field of a printed request, wherever it appears."""
    known = (*_secrets, *_job_secrets()) if registered else ()
    for secret in (*known, *extra):
        if len(secret) >= _MIN_SECRET_LEN and secret in text:
            text = text.replace(secret, "***")
    if "api_key" in text:  # a plain search first: most lines, and 20 MB results, skip the regex
        # The key's value goes wherever it appears in the line, not only in its field.
        for key in {m["value"] for m in _KEY_FIELD.finditer(text)}:
            if len(key) >= _MIN_SECRET_LEN:
                text = text.replace(key, "***")
    return text


def redact_sdk_line(message: str) -> str:
    """A line of the runpod SDK's own logger, made safe to print.

    The SDK prints whole jobs and results (``Retrieved local job: {...}`` at DEBUG in
    test_input.json mode, ``Handler output`` and ``Job result`` lines) before the worker
    knows the job: so besides every known secret, a request's key fields and the query
    strings and user info of URLs (presigned links, tokens) are cut out.
    """
    return redact_urls(redact(message))


def guard_sdk_logger(logger: Any) -> None:
    """Make the runpod SDK's logger (its ``RunPodLogger`` singleton) print every line
    through :func:`redact_sdk_line`.

    Its ``debug``/``info``/``warn``/``error`` all call ``self.log(message, level, job_id)``
    (runpod 1.12, ``serverless/modules/rp_logger.py``) and then ``print``, bypassing
    :mod:`logging` and its filters; the instance's ``log`` is wrapped once. Where that
    method is gone, the SDK prints as it would, and the worker says so once.
    """
    original = getattr(logger, "log", None)
    if original is None or getattr(original, "_comfy_worker_guard", False):
        if original is None:
            logging.getLogger(__name__).warning(
                "the runpod SDK's logger has no log() method: its lines are not redacted"
            )
        return

    def log(message: Any, *args: Any, **kwargs: Any) -> Any:
        level = args[0] if args else kwargs.get("message_level", "INFO")
        if _dropped_by(logger, level):
            # Not printed at this level. The SDK's DEBUG lines carry whole results (a
            # batch of 1024x1024 PNGs is 12 MB of base64: 14 ms of redaction per job,
            # on the SDK's event loop, for a line nobody sees).
            return None
        return original(redact_sdk_line(str(message)), *args, **kwargs)

    log._comfy_worker_guard = True  # type: ignore[attr-defined]
    logger.log = log


def _dropped_by(logger: Any, level: Any) -> bool:
    """Whether ``RunPodLogger.log`` drops a line of ``level`` unprinted, by its own check
    (runpod 1.12: ``LOG_LEVELS`` order, ``NOTSET`` prints nothing, ``TIP`` always prints).
    False whenever that cannot be told for sure: the line then goes through, redacted."""
    levels = getattr(sys.modules.get(type(logger).__module__), "LOG_LEVELS", None)
    current = getattr(logger, "level", None)
    if not isinstance(levels, list) or current not in levels or level not in levels:
        return False
    return bool(current == "NOTSET" or levels.index(current) > levels.index(level))


def redact_obj(value: Any, secrets: Iterable[str]) -> Any:
    """A JSON-like value with exactly ``secrets`` redacted in every string.

    Only the values given: a response must keep an S3 access key *id*, which every
    presigned URL carries by design, while the log hides it with the other keys. With
    no secret long enough to redact (most jobs), ``value`` itself, unwalked; else a copy.
    """
    usable = tuple(s for s in secrets if len(s) >= _MIN_SECRET_LEN)
    return _redacted(value, usable) if usable else value


def _redacted(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets, registered=False)
    if isinstance(value, dict):
        return {k: _redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, secrets) for v in value]
    return value


class _JobFilter(logging.Filter):
    """Stamps the job id and scrubs secrets and URLs' credentials from the final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _job_id()
        message = record.getMessage()
        # A URL in any line (ComfyUI echoing a workflow value, a node its download) loses
        # its query and user info; known secrets go wherever they are.
        cleaned = redact_urls(message)
        secrets = bool(_secrets or _active or "api_key" in message)
        if secrets:
            cleaned = redact(cleaned)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = redact_urls(logging.Formatter().formatException(record.exc_info))
            record.exc_text = redact(text) if secrets else text
        return True


class _SearchPathSummary(logging.Filter):
    """ComfyUI's "Adding extra search path <kind> <path>" lines, held and told as one.

    The summary goes out just before the next other line (ComfyUI always logs more at
    boot); every path is still listed at DEBUG by engine.runtime.comfy_folders.
    """

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self._handler = handler
        self._held: list[tuple[str, str]] = []
        self._first: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_SEARCH_PATH_PREFIX):
            kind, _, path = message.removeprefix(_SEARCH_PATH_PREFIX).partition(" ")
            self._held.append((kind, path))
            self._first = self._first or record
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Emit the summary of the paths held so far, if any."""
        if not self._held or self._first is None:
            return
        held, first = self._held, self._first
        self._held, self._first = [], None
        roots = sorted({str(PurePosixPath(path).parent) for _, path in held})
        summary = logging.makeLogRecord(
            {
                **first.__dict__,
                "msg": "%d extra model search paths added (%d folder types) under %s",
                "args": (len(held), len({kind for kind, _ in held}), ", ".join(roots)),
            }
        )
        self._handler.handle(summary)


class _FileListFilter(logging.Filter):
    """ComfyUI's DEBUG pair "recursive file list on directory X" + "found N files", as one line."""

    def __init__(self) -> None:
        super().__init__()
        self._directory: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_FILE_LIST_PREFIX):
            self._directory = message.removeprefix(_FILE_LIST_PREFIX)
            return False
        if self._directory is not None and _FOUND_FILES.fullmatch(message):
            record.msg, record.args = f"{message} in {self._directory}", None
            self._directory = None
        return True


class _TorioFfmpegFilter(logging.Filter):
    """torio's FFmpeg probing: no tracebacks, and its giving up said once, at INFO.

    torchaudio (imported by ComfyUI) loads torio, which tries FFmpeg 6, 5 and 4 shared
    libraries and logs a full traceback for each one missing. The image has none of
    them, and needs none: ComfyUI's own audio and video nodes read and write with PyAV.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{message} ({_one_line(record.exc_info[1])})", None
            record.exc_info, record.exc_text = None, None
        if message == _TORIO_GAVE_UP:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = (
                "torio (torchaudio's FFmpeg binding) found no FFmpeg 4-6 libraries; "
                "ComfyUI's own audio and video nodes do not use it (they use PyAV)",
                None,
            )
        # The logger is set to DEBUG so that torio's DEBUG records are made at all; each
        # then shows only where the worker's level admits it (the attempts at DEBUG, the
        # summary at INFO and below).
        return logging.getLogger().isEnabledFor(record.levelno)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
    # The summary runs first: the record it makes then passes the job filter like any other.
    handler.addFilter(_SearchPathSummary(handler))
    handler.addFilter(_FileListFilter())
    handler.addFilter(_JobFilter())
    handler._comfy_worker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))
    torio = logging.getLogger(_TORIO_LOGGER)
    if not any(isinstance(f, _TorioFfmpegFilter) for f in torio.filters):
        torio.addFilter(_TorioFfmpegFilter())
    torio.setLevel(logging.DEBUG)


@contextlib.contextmanager
def job_context(job_id: str, secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Log this thread's lines under ``job_id``, and redact the job's own secrets from
    every line, until the block ends."""
    with job_secrets(job_id, secrets), bind_job(job_id):
        yield


@contextlib.contextmanager
def job_secrets(job_id: str, secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Redact the job's own secrets from every line, any thread's, until the block ends
    (an event loop's job binds its thread only where it does not await: :func:`bind_job`)."""
    token = object()
    with _active_lock:
        _active[token] = (job_id, tuple(s for s in secrets if s))
    try:
        yield
    finally:
        with _active_lock:
            del _active[token]


def current_job_id() -> str:
    """The job this thread's lines are logged under now (``-`` for none): for work that
    a job hands to a thread of its own, whose lines stay that job's (:func:`bind_job`)."""
    return _job_id()


@contextlib.contextmanager
def bind_job(job_id: str) -> Iterator[None]:
    """Log this thread's lines under ``job_id`` until the block ends (a job's lane)."""
    previous = getattr(_bound, "job_id", None)
    _bound.job_id = job_id
    try:
        yield
    finally:
        _bound.job_id = previous


@contextlib.contextmanager
def engine_job(job_id: str) -> Iterator[None]:
    """Lines of threads bound to no job (ComfyUI's) go under ``job_id`` while its run
    holds the engine: one run at a time, so the one running is theirs."""
    previous = _engine[0]
    _engine[0] = job_id
    try:
        yield
    finally:
        _engine[0] = previous
