"""Saving a job's outputs: base64 decoded, S3 URLs downloaded, into files that never clash."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from comfy_worker_client.api import CONNECT_TIMEOUT_S
from comfy_worker_client.errors import ApiError, ExitCode, SaveError
from comfy_worker_client.text import clean, is_url, say, shown_url

# A presigned S3 GET starts streaming at once; a minute without a byte is a dead link.
_DOWNLOAD_READ_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1024 * 1024
_MAX_UNIQUE_NAMES = 10_000
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MB = 1024 * 1024


@dataclass(frozen=True)
class SavedFile:
    """An output written to disk."""

    path: Path
    mime_type: str
    size: int
    video: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SaveReport:
    """What :func:`save_outputs` did: the folder, the files written, the problems."""

    folder: Path
    files: tuple[SavedFile, ...]
    problems: tuple[str, ...]

    @property
    def exit_code(self) -> ExitCode:
        """INCOMPLETE if an output could not be saved or the worker reported errors[]."""
        return ExitCode.INCOMPLETE if self.problems else ExitCode.OK


class _ItemFailure(Exception):
    """One output could not be saved; the others still are."""


def safe_filename(name: Any, index: int) -> str:
    """The last path segment of a name the server chose, never a way out of the folder."""
    text = _UNSAFE_NAME_CHARS.sub("", str(name or "")).replace("\\", "/")
    base = PurePosixPath(text).name
    return base if base not in {"", ".", ".."} else f"output-{index}"


def open_unique(folder: Path, name: str) -> tuple[Path, IO[bytes]]:
    """Create ``folder/name`` (or ``name-1``, ``name-2``, ...) without replacing any file."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for n in range(_MAX_UNIQUE_NAMES):
        path = folder / (name if n == 0 else f"{stem}-{n}{suffix}")
        try:
            # "x" creates or fails atomically: a file that appears meanwhile is never replaced.
            return path, path.open("xb")
        except FileExistsError:
            continue
    raise _ItemFailure(f"{_MAX_UNIQUE_NAMES} files of that name already exist in {folder}")


def _decode_data(data: Any) -> bytes:
    if not isinstance(data, str):
        raise _ItemFailure("its data is not a string")
    header, comma, payload = data.partition(",")
    if not comma:
        payload = header
    elif not header.lower().startswith("data:") or ";base64" not in header.lower():
        raise _ItemFailure("its data is not a base64 data URI")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise _ItemFailure(f"its base64 is invalid ({exc})") from None


def _write(
    folder: Path, name: str, chunks: Callable[[], Iterable[bytes]], expected: Any
) -> tuple[Path, int]:
    """Write what ``chunks()`` yields to a fresh file; remove it if anything goes wrong."""
    path, handle = open_unique(folder, name)
    size = 0
    try:
        with handle:
            for chunk in chunks():
                handle.write(chunk)
                size += len(chunk)
        if isinstance(expected, int) and size != expected:
            raise _ItemFailure(f"got {size} bytes, the worker reported {expected}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, size


def save_item(item: Any, index: int, folder: Path, downloads: httpx.Client) -> SavedFile:
    """Decode or download one ``output.images`` item into ``folder``."""
    if not isinstance(item, Mapping):
        raise _ItemFailure(f"output {index}: not an object")
    name = safe_filename(item.get("filename"), index)
    mime = item.get("mime_type") or mimetypes.guess_type(name)[0] or "application/octet-stream"
    kind, data, expected = item.get("type"), item.get("data"), item.get("size_bytes")
    try:
        if kind == "base64":
            raw = _decode_data(data)
            path, size = _write(folder, name, lambda: [raw], expected)
        elif kind == "s3_url":
            path, size = _download(folder, name, str(data), downloads, expected)
        else:
            raise _ItemFailure(f"unknown type {kind!r} (expected base64 or s3_url)")
    except _ItemFailure as exc:
        raise _ItemFailure(f"{name}: {exc}") from None
    video = item.get("video")
    return SavedFile(path, str(mime), size, video if isinstance(video, Mapping) else None)


def _download(
    folder: Path, name: str, url: str, downloads: httpx.Client, expected: Any
) -> tuple[Path, int]:
    if not is_url(url):
        raise _ItemFailure("its URL is not http(s)")
    shown = shown_url(url)
    try:
        with downloads.stream("GET", url) as response:
            if response.status_code != 200:
                hint = _forbidden_hint(url) if response.status_code == 403 else ""
                raise _ItemFailure(f"download from {shown} answered {response.status_code}{hint}")
            return _write(folder, name, lambda: response.iter_bytes(_CHUNK_BYTES), expected)
    except httpx.HTTPError as exc:
        raise _ItemFailure(f"download from {shown} failed: {exc or type(exc).__name__}") from None


def _forbidden_hint(url: str) -> str:
    """Why S3 refused a download: a presigned URL expired, or a public URL's bucket is private."""
    query = urlsplit(url).query.lower()
    if "x-amz-signature=" in query or "signature=" in query:
        return (
            " (a presigned URL expires after the worker's BUCKET_URL_EXPIRY_S; fetch the job again)"
        )
    return (
        " (a URL without a signature: the worker's BUCKET_PUBLIC_URL is set, but the bucket "
        "or the CDN in front of it does not allow public reads)"
    )


def human_size(size: int) -> str:
    """``512 B``, ``1.5 kB``, ``2.0 MB`` (powers of 1024)."""
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} kB" if size < _MB else f"{size / _MB:.1f} MB"


def _describe(saved: SavedFile) -> str:
    """The line printed for a saved file: path, MIME type, size (and a video's numbers)."""
    line = f"{saved.path}\t{saved.mime_type}\t{human_size(saved.size)}"
    video = saved.video or {}
    numbers = [video.get(key) for key in ("width", "height", "frames", "fps")]
    if all(isinstance(n, int | float) for n in numbers):
        width, height, frames, fps = numbers
        line += f"\t{width}x{height} {frames} frames {fps:g} fps"
    return line


def save_outputs(
    body: Mapping[str, Any],
    out_dir: Path | None,
    downloads: httpx.Client,
    *,
    echo: bool = True,
) -> SaveReport:
    """Save a COMPLETED job's outputs; report what the worker could not deliver.

    ``body`` is the job's final status (``id``, ``output``); ``out_dir`` defaults to
    ``outputs/<job id>``. With ``echo``, a line per file on stdout (``--json`` prints its
    own); problems and the summary always go to stderr.
    """
    output = body.get("output")
    if not isinstance(output, Mapping) or not isinstance(output.get("images"), list):
        raise ApiError(
            f"job {body.get('id')} completed, but its output has no images[]: {output!r:.200}"
        )
    folder = out_dir or Path("outputs") / safe_filename(body.get("id"), 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(
            f"job {body.get('id')} completed, but {folder} cannot be created: "
            f"{exc.strerror or exc}; choose another folder with --out"
        ) from None
    saved: list[SavedFile] = []
    problems = []
    for index, item in enumerate(output["images"]):
        try:
            saved.append(save_item(item, index, folder, downloads))
        except (_ItemFailure, OSError) as exc:
            problems.append(f"could not save {exc}")
            continue
        if echo:
            say(_describe(saved[-1]))
    problems += [f"the worker reported: {clean(line)}" for line in output.get("errors") or []]
    for line in problems:
        say(f"warning: {line}", err=True)
    say(
        f"job {body.get('id')} COMPLETED{_timings(body)}: {len(saved)} file(s) in {folder}",
        err=True,
    )
    return SaveReport(folder, tuple(saved), tuple(problems))


def _timings(body: Mapping[str, Any]) -> str:
    """RunPod's delayTime (queue + cold start) and executionTime (the handler), in ms."""
    shown = [
        f"{label} {body[key] / 1000:.1f} s"
        for label, key in (("queued", "delayTime"), ("ran", "executionTime"))
        if isinstance(body.get(key), int | float)
    ]
    return f" ({', '.join(shown)})" if shown else ""


def download_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The HTTP client for output URLs; they point at S3, not RunPod, so it sends no API key."""
    return httpx.Client(
        transport=transport,
        follow_redirects=True,
        timeout=httpx.Timeout(CONNECT_TIMEOUT_S, read=_DOWNLOAD_READ_TIMEOUT_S),
    )
