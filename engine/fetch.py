"""Downloading input images over HTTP(S) into memory, through the guard that keeps the
worker from becoming an SSRF proxy (:class:`engine.guarded_http.GuardedHttp`).

The body is streamed and cut at ``INPUT_MAX_IMAGE_MB`` (refused up front when
Content-Length says so), under one deadline of ``INPUT_DOWNLOAD_TIMEOUT_S`` for all hops
together (or the job's, when sooner), a stall limit and a minimum rate, checked at every
read (:mod:`engine.transfer`).

Failures raise :class:`~engine.errors.ItemError` named by the URL without its query
string: presigned URLs carry their credentials there, so it never reaches a
message or a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import TracebackType

import httpx

from engine.addresses import AddressPolicy, Resolver, refusal_reason, resolve_host
from engine.deadline import Deadline
from engine.errors import ItemError
from engine.guarded_http import DeadlinePassed, GuardedHttp
from engine.settings import Settings
from engine.transfer import LIMIT_SLACK_S, ReadLimits, bounded_chunks
from engine.urls import redact_url

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
# Hints for the status codes users actually hit with image links.
_STATUS_HINTS = {
    401: "the URL must be public or presigned",
    403: "the URL must be public, or the presigned link has expired",
    404: "check the URL",
    410: "check the URL",
    429: "the host is rate-limiting; retry later or host the image elsewhere",
}


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


def status_reason(response: httpx.Response, hints: Mapping[int, str] = _STATUS_HINTS) -> str:
    """``HTTP 404 Not Found; check the URL``: a non-success status, with a hint."""
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    hint = hints.get(status)
    return f"{reason}; {hint}" if hint else reason


class HttpFetcher:
    """Downloads one image per :meth:`fetch`; safe to share between threads."""

    # Inner steps raise ItemError with an empty name; fetch() names it by the URL.

    def __init__(
        self,
        settings: Settings,
        client: httpx.Client | None = None,
        *,
        resolver: Resolver = resolve_host,
        address_policy: AddressPolicy = refusal_reason,
    ) -> None:
        self._timeout_s = settings.input_download_timeout_s
        self._max_bytes = settings.input_max_image_bytes
        self._limits = ReadLimits.from_settings(settings)
        self._http = GuardedHttp(
            allow_private=settings.input_allow_private_urls,
            max_redirects=settings.input_max_redirects,
            client=client,
            resolver=resolver,
            address_policy=address_policy,
        )

    def close(self) -> None:
        """Close the HTTP client if this fetcher created it."""
        self._http.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fetch(self, url: str) -> bytes:
        """The body at ``url``; raises :class:`ItemError` named by the redacted URL."""
        return self.fetch_within(url, None)

    def fetch_within(self, url: str, deadline: Deadline | None) -> bytes:
        """As :meth:`fetch`, also bounded by the job's ``deadline``: its passing or its
        cancel raises the job's own error (:meth:`Deadline.exceeded`) within a read."""
        shown = redact_url(url)
        started = time.monotonic()
        until = started + self._timeout_s
        remaining = deadline.remaining() if deadline is not None else None
        if remaining is not None:
            until = min(until, started + remaining)
        try:
            with self._http.get(
                url,
                until,
                headers_for=_accept_images,
                idle_timeout_s=self._limits.stall_s,
                job=deadline,
            ) as response:
                body = self._read_body(response, until, deadline)
        except httpx.HTTPError as exc:
            if deadline is not None and deadline.expired():
                raise deadline.exceeded("while downloading inputs") from exc
            if isinstance(exc, httpx.TimeoutException):
                stalled = (
                    not isinstance(exc, DeadlinePassed) and time.monotonic() < until - LIMIT_SLACK_S
                )
                reason = self._limits.stall_reason() if stalled else self._timeout_reason()
                raise ItemError(shown, reason) from exc
            if isinstance(exc, httpx.InvalidURL):
                raise ItemError(shown, f"not a valid URL ({exc})") from exc
            if isinstance(exc, httpx.ConnectError):
                raise ItemError(shown, f"could not connect ({exc})") from exc
            # Protocol and read errors; their text names no URL.
            raise ItemError(shown, f"{type(exc).__name__}: {exc}") from exc
        except ItemError as exc:
            raise ItemError(shown, exc.reason) from exc
        elapsed_ms = (time.monotonic() - started) * 1e3
        logger.debug("fetched %s: %d bytes in %.0f ms", shown, len(body), elapsed_ms)
        return body

    def _timeout_reason(self) -> str:
        return (
            f"timed out after {self._timeout_s:g} s (INPUT_DOWNLOAD_TIMEOUT_S); "
            "the host is too slow or the file too large"
        )

    def _read_body(
        self, response: httpx.Response, until: float, deadline: Deadline | None
    ) -> bytes:
        if not 200 <= response.status_code < 300:
            raise ItemError("", status_reason(response))
        if response.headers.get("content-type", "").lower().startswith("text/html"):
            # Share pages (Google Drive, Dropbox) answer 200 with HTML, not the file.
            raise ItemError("", "the URL returned a web page (text/html); link the image file")
        limit = f"{_mb(self._max_bytes)} limit (INPUT_MAX_IMAGE_MB)"
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            # Refused before reading a byte of the body.
            raise ItemError("", f"the image is {_mb(int(declared))}, over the {limit}")
        body = bytearray()
        with bounded_chunks(
            response,
            limits=self._limits,
            until=until,
            deadline=deadline,
            where="while downloading inputs",
            timed_out=lambda: ItemError("", self._timeout_reason()),
        ) as chunks:
            for chunk in chunks:
                body += chunk
                if len(body) > self._max_bytes:
                    raise ItemError("", f"the image is over the {limit}; the download was stopped")
        return bytes(body)


def _accept_images(url: httpx.URL) -> Mapping[str, str]:
    del url
    return {"Accept": "image/*, */*;q=0.5"}
