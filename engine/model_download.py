"""Downloading one model file to disk, behind the same guard as input images.

Model files are gigabytes: the body is streamed to a temporary file in the folder it
ends up in (never held in memory), hashed on the way (SHA-256), and cut at a size
limit (refused up front when ``Content-Length`` says so). Redirects, address checks and
DNS pinning are :class:`engine.fetch.GuardedHttp`'s.

Tokens: ``HF_TOKEN`` goes as ``Authorization: Bearer`` to ``huggingface.co`` and
``hf.co``, ``CIVITAI_TOKEN`` to ``civitai.com`` (and ``www.``), over https only, and
to no other host, redirect targets included. Both sites answer a download with a
redirect to a presigned CDN URL that needs no token; the token stays with the site
it was made for (as ``requests``, which ``huggingface_hub`` uses, drops it on a
redirect to another host). Tokens are never logged: only the URL without its query
is ever shown.

Time: the job's :class:`~engine.deadline.Deadline` bounds the whole download and is
checked between chunks; a server that sends nothing for ``idle_timeout_s`` fails the
download, whatever time the job has left.
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

from engine.deadline import Deadline
from engine.errors import ItemError
from engine.fetch import GuardedHttp, Resolver, redact_url, resolve_host, status_reason
from engine.settings import Settings

log = logging.getLogger(__name__)

HF_HOSTS = frozenset({"huggingface.co", "hf.co"})
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com"})
_CHUNK_BYTES = 1024 * 1024
# A CDN that stalls this long mid-file is not coming back; the job's own limit may be
# an hour. 60 s rides out a slow TLS handshake or a brief network blip.
IDLE_TIMEOUT_S = 60.0
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
"""Called with the declared size (or None) before the body is read; raises to refuse."""


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
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._http = GuardedHttp(
            allow_private=settings.input_allow_private_urls,
            max_redirects=settings.input_max_redirects,
            client=client,
            resolver=resolver,
        )
        self._headers_for = token_headers(settings)
        self._idle_timeout_s = idle_timeout_s

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
        try:
            with self._http.get(
                url, until, headers_for=self._headers_for, idle_timeout_s=self._idle_timeout_s
            ) as response:
                result = self._save(
                    response, temp, shown, max_bytes, limit_name, deadline, check_size, on_progress
                )
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, httpx.TimeoutException):
                if deadline.expired():
                    raise deadline.exceeded(f"while downloading {shown}") from exc
                raise ItemError(
                    "",
                    f"the server sent nothing for {self._idle_timeout_s:g} s; retry, or host "
                    "the file elsewhere",
                ) from exc
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
        shown: str,
        max_bytes: int,
        limit_name: str,
        deadline: Deadline,
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
        check_size(total)
        digest = hashlib.sha256()
        head = b""
        size = 0
        on_progress(0, total)
        try:
            with temp.open("xb") as out:
                for chunk in response.iter_bytes(_CHUNK_BYTES):
                    deadline.check(f"downloading {shown}")
                    size += len(chunk)
                    if size > max_bytes:
                        raise ItemError(
                            "", f"the file is over the {limit}; the download was stopped"
                        )
                    if len(head) < _HEAD_BYTES:
                        head += chunk[: _HEAD_BYTES - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
                    on_progress(size, total)
        except OSError as exc:
            raise ItemError(
                "", f"could not be written to {temp.parent} ({exc.strerror or exc})"
            ) from exc
        if total is not None and size != total:
            raise ItemError("", f"the server sent {size} bytes of the {total} it announced; retry")
        return Download(
            temp=temp,
            size=size,
            sha256=digest.hexdigest(),
            head=head,
            suggested_name=_disposition_name(response.headers.get("content-disposition")),
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
