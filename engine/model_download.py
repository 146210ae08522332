"""Downloading one model file to disk, behind the same guard as input images.

Model files are gigabytes: the body is streamed to a temporary file in the folder it
ends up in (never held in memory), hashed on the way (SHA-256), and cut at a size
limit (refused up front when ``Content-Length`` says so). Redirects, address checks and
DNS pinning are :class:`engine.guarded_http.GuardedHttp`'s.

Tokens: ``HF_TOKEN`` goes as ``Authorization: Bearer`` to ``huggingface.co`` and
``hf.co``, ``CIVITAI_TOKEN`` to ``civitai.com`` (and ``www.``), over https only, and
to no other host, redirect targets included. Both sites answer a download with a
redirect to a presigned CDN URL that needs no token; the token stays with the site
it was made for (as ``requests``, which ``huggingface_hub`` uses, drops it on a
redirect to another host). Tokens are never logged: only the URL without its query
is ever shown.

Time: the job's :class:`~engine.deadline.Deadline` bounds the whole download and is
checked at every read, its cancel included (:mod:`engine.transfer`); a server that
sends nothing for ``DOWNLOAD_STALL_S``, or less than ``DOWNLOAD_MIN_KB_PER_S`` over a
window, fails the download, whatever time the job has left.

Size: the empty body is never a model file, and one shorter than its
``Content-Length`` is refused. ``check_size`` reserves room in the cache before the
body (the declared size) and again each time the bytes that arrived pass what was
reserved, so a body without ``Content-Length`` is held to the cache's limit too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from engine.addresses import Resolver, resolve_host
from engine.deadline import Deadline
from engine.errors import ItemError, WorkerError
from engine.fetch import status_reason
from engine.guarded_http import DeadlinePassed, GuardedHttp
from engine.settings import Settings
from engine.transfer import ReadLimits, bounded_chunks
from engine.urls import redact_url

log = logging.getLogger(__name__)

HF_HOSTS = frozenset({"huggingface.co", "hf.co"})
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com"})
# Without a Content-Length, room in the cache is reserved this much at a time (and
# doubling): a few cache scans per file, never more than this past the limit unseen.
_RESERVE_STEP_BYTES = 64 * 1024 * 1024
_HEAD_BYTES = 16  # kept from the start of the body to tell a format without a suffix
_MB = 1024 * 1024
_STATUS_HINTS = {
    401: "the file needs credentials: set HF_TOKEN (Hugging Face) or CIVITAI_TOKEN (Civitai)",
    403: (
        "access denied: set HF_TOKEN or CIVITAI_TOKEN, and accept the model's licence on "
        "its page if it is gated"
    ),
    404: "check the URL",
    410: "check the URL",
    429: "the host is rate-limiting; retry later",
}
_DISPOSITION_NAME = re.compile(r"""filename\*?\s*=\s*(?:UTF-8''|"?)([^";]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Download:
    """A finished download in a temporary file beside where it will live."""

    temp: Path
    size: int
    sha256: str
    head: bytes
    """The first bytes of the file, to tell its format when no name says it."""
    suggested_name: str | None
    """The file name the server gave (``Content-Disposition``), if any."""


ProgressReport = Callable[[int, "int | None"], None]
"""``(bytes so far, total or None)``."""
SizeCheck = Callable[["int | None"], None]
"""Called with the declared size (or None) before the body is read, then with a larger
size each time the body outgrows what was reserved; raises to refuse."""


class Downloader(Protocol):
    """Downloads one URL into ``temp``; raises :class:`ItemError` with an empty name."""

    def download(
        self,
        url: str,
        temp: Path,
        *,
        max_bytes: int,
        limit_name: str,
        deadline: Deadline,
        check_size: SizeCheck,
        on_progress: ProgressReport,
    ) -> Download: ...


def token_headers(settings: Settings) -> Callable[[httpx.URL], Mapping[str, str]]:
    """The headers one hop gets: a site's token for that site's own host, over https."""

    def headers_for(url: httpx.URL) -> Mapping[str, str]:
        if url.scheme != "https":
            return {}
        host = url.host.lower().rstrip(".")
        token = None
        if host in HF_HOSTS:
            token = settings.hf_token
        elif host in CIVITAI_HOSTS:
            token = settings.civitai_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    return headers_for


class HttpDownloader:
    """Streams model files over HTTP(S) through the shared guard; safe across threads."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.Client | None = None,
        *,
        resolver: Resolver = resolve_host,
        limits: ReadLimits | None = None,
    ) -> None:
        self._http = GuardedHttp(
            allow_private=settings.input_allow_private_urls,
            max_redirects=settings.input_max_redirects,
            client=client,
            resolver=resolver,
        )
        self._headers_for = token_headers(settings)
        self._limits = limits or ReadLimits.from_settings(settings)

    def close(self) -> None:
        """Close the HTTP client if this downloader made it."""
        self._http.close()

    def download(
        self,
        url: str,
        temp: Path,
        *,
        max_bytes: int,
        limit_name: str,
        deadline: Deadline,
        check_size: SizeCheck,
        on_progress: ProgressReport,
    ) -> Download:
        """Stream ``url`` into ``temp``; on any failure ``temp`` is removed."""
        shown = redact_url(url)
        remaining = deadline.remaining()
        until = math.inf if remaining is None else time.monotonic() + remaining
        started = time.monotonic()
        where = f"while downloading {shown}"
        try:
            with self._http.get(
                url,
                until,
                headers_for=self._headers_for,
                idle_timeout_s=self._limits.stall_s,
                job=deadline,
            ) as response:
                result = self._save(
                    response,
                    temp,
                    until,
                    max_bytes,
                    limit_name,
                    deadline,
                    where,
                    check_size,
                    on_progress,
                )
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, httpx.HTTPError) and deadline.expired():
                raise deadline.exceeded(where) from exc
            if isinstance(exc, DeadlinePassed):
                raise deadline.exceeded(where) from exc
            if isinstance(exc, httpx.TimeoutException):
                raise ItemError("", self._limits.stall_reason()) from exc
            if isinstance(exc, httpx.InvalidURL):
                raise ItemError("", f"not a valid URL ({exc})") from exc
            if isinstance(exc, httpx.ConnectError):
                raise ItemError("", f"could not connect ({exc})") from exc
            if isinstance(exc, httpx.HTTPError):
                raise ItemError("", f"{type(exc).__name__}: {exc}") from exc
            raise
        seconds = time.monotonic() - started
        log.info(
            "downloaded %s: %.1f MB in %.1f s (%.1f MB/s)",
            shown,
            result.size / _MB,
            seconds,
            result.size / _MB / max(seconds, 1e-6),
        )
        return result

    def _save(
        self,
        response: httpx.Response,
        temp: Path,
        until: float,
        max_bytes: int,
        limit_name: str,
        deadline: Deadline,
        where: str,
        check_size: SizeCheck,
        on_progress: ProgressReport,
    ) -> Download:
        if not 200 <= response.status_code < 300:
            raise ItemError("", status_reason(response, _STATUS_HINTS))
        if response.headers.get("content-type", "").lower().startswith("text/html"):
            raise ItemError(
                "",
                "the URL returned a web page (text/html), not the file; link the file itself "
                "(on Hugging Face, a /resolve/ URL, not /blob/)",
            )
        declared = response.headers.get("content-length", "")
        total = int(declared) if declared.isdigit() else None
        limit = f"{max_bytes / _MB:.1f} MB limit ({limit_name})"
        if total is not None and total > max_bytes:
            raise ItemError("", f"the file is {total / _MB:.1f} MB, over the {limit}")
        if total == 0:
            raise ItemError("", _EMPTY)
        check_size(total)
        reserved = total if total is not None else 0
        digest = hashlib.sha256()
        head = b""
        size = 0
        on_progress(0, total)
        try:
            with (
                temp.open("r+b" if temp.exists() else "xb") as out,
                bounded_chunks(
                    response,
                    limits=self._limits,
                    until=until,
                    deadline=deadline,
                    where=where,
                    timed_out=lambda: ItemError("", "timed out"),  # until is the job's deadline
                ) as chunks,
            ):
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise ItemError(
                            "", f"the file is over the {limit}; the download was stopped"
                        )
                    if size > reserved:
                        # No Content-Length (or a server sending more than it said): the
                        # cache's limit holds for the bytes that really arrive.
                        reserved = min(max_bytes, max(size, 2 * reserved, _RESERVE_STEP_BYTES))
                        check_size(reserved)
                    if len(head) < _HEAD_BYTES:
                        head += chunk[: _HEAD_BYTES - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
                    on_progress(size, total)
        except WorkerError:
            raise  # the job's deadline or cancel (a JobTimeoutError is also an OSError)
        except OSError as exc:
            raise ItemError(
                "", f"could not be written to {temp.parent} ({exc.strerror or exc})"
            ) from exc
        if total is not None and size != total:
            raise ItemError("", f"the server sent {size} bytes of the {total} it announced; retry")
        if size == 0:
            raise ItemError("", _EMPTY)
        return Download(
            temp=temp,
            size=size,
            sha256=digest.hexdigest(),
            head=head,
            suggested_name=_disposition_name(response.headers.get("content-disposition")),
        )


_EMPTY = (
    "the server sent an empty file (0 bytes), which is no model; check the URL, or that "
    "the file is still there"
)


def _disposition_name(header: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header, percent-decoded."""
    if not header:
        return None
    match = _DISPOSITION_NAME.search(header)
    if match is None:
        return None
    with contextlib.suppress(UnicodeDecodeError):
        return urllib.parse.unquote(match.group(1).strip(), errors="strict") or None
    return None
