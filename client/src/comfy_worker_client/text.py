"""Text crossing the terminal: the client's only writer, server text made safe, URLs shown."""

from __future__ import annotations

import re
import sys
from urllib.parse import urlsplit

# Control characters (ESC above all) in a server's text must not drive the terminal.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: object) -> str:
    """Text from the server, safe to print: no control characters but tab and newline."""
    return _CONTROL_CHARS.sub("", str(text))


def say(text: str, *, err: bool = False, end: str = "\n") -> None:
    """The CLI's only way to write: results to stdout, progress and problems to stderr."""
    print(text, end=end, file=sys.stderr if err else sys.stdout, flush=True)


def is_url(text: str) -> bool:
    """Whether ``text`` is an http(s) URL (any case), not a local path."""
    return text[:8].lower().startswith(("http://", "https://"))


def shown_url(url: str) -> str:
    """A URL fit for a message: no query (presigned URLs carry their signature there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
