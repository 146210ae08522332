"""URLs as the worker shows them: whether a value is an http(s) URL, and its form without
credentials for messages and logs.

A presigned URL carries its credentials in the query string, so no message or log line
shows it whole: errors name a URL by :func:`redact_url`, and httpx's own request lines go
through a filter installed when this module is imported.
"""

from __future__ import annotations

import logging

import httpx

_MAX_URL_CHARS = 200  # a shown URL is for recognising the input, not for reproducing it


def is_url(value: str) -> bool:
    """Whether a value (a workflow's, an input image's) is an http(s) URL."""
    return value.lstrip()[:8].lower().startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """The URL without user info, query string or fragment, shortened for messages."""
    try:
        parsed = httpx.URL(url.strip())
        shown = str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        # Unparseable: cut at the first query/fragment marker and drop anything up to an '@'.
        shown = url.strip().split("?", 1)[0].split("#", 1)[0]
        scheme, sep, rest = shown.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            shown = f"{scheme}://{rest.split('@', 1)[1]}"
    if len(shown) > _MAX_URL_CHARS:
        shown = shown[: _MAX_URL_CHARS - 3] + "..."
    return shown


class _RedactUrls(logging.Filter):
    """Strips query strings from the URLs httpx logs at INFO ("HTTP Request: GET ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


# Installed on import, once: the worker logs at DEBUG by default (COMFY_LOG_LEVEL), and
# httpx's own request line would otherwise carry a presigned URL's signature.
logging.getLogger("httpx").addFilter(_RedactUrls())
