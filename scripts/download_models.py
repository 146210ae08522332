#!/usr/bin/env python3
"""Download the worker's models from ``comfyui/models.json``: parallel, resumable, verified.

    python3 scripts/download_models.py --list
    python3 scripts/download_models.py --set sdxl --set wan22
    python3 scripts/download_models.py --set pulid,reactor --allow-unverified
    python3 scripts/download_models.py --all --jobs 6
    python3 scripts/download_models.py --set wan22 --dry-run
    python3 scripts/download_models.py --set sdxl --dest /some/ComfyUI/models

Each file goes to ``<dest>/<folder>/<name>`` (``<dest>`` is a ComfyUI ``models`` folder).
Without ``--dest``, the network volume's ``models`` folder: ``/workspace/models`` on a pod
(where RunPod mounts the volume), ``/runpod-volume/models`` on a serverless worker. A
``--dest`` under ``/workspace`` or ``/runpod-volume`` is refused when that folder does not
exist: it would fill the container disk, which goes with the pod, not the volume.
Bytes land in ``<name>.part`` first; an interrupted download resumes from there with an
HTTP ``Range`` request (a server that answers 200 instead of 206 is followed from byte 0).
A finished ``.part`` becomes the real file only when its size and sha256 match the manifest,
so a wrong or truncated file never appears under the name ComfyUI loads. Files already in
place are verified (hashes cached in ``<dest>/.model-hashes.json`` by size and mtime, so a
second run does not re-read 40 GB) and skipped.

A Hugging Face token is read from ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) and sent as
``Authorization: Bearer ...`` only to Hugging Face hosts (``--token-host``): not to other
hosts, not to the CDN a download is redirected to (its URLs are pre-signed), and it is
never printed.

Entries whose ``sha256`` is ``null`` are refused unless ``--allow-unverified`` is given;
the summary then prints the hash measured so it can be recorded in the manifest.

Standard library only, on purpose: the script runs on a bare RunPod pod (``python3``
and nothing else) and in the image's model stage without the worker's venv.

Exit status: 0 all selected files present and verified; 1 a download or a verification
failed; 2 bad arguments or manifest; 3 nothing failed but unverified entries were refused.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import ipaddress
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "comfyui" / "models.json"
# Hugging Face serves files from huggingface.co; hf.co is its short alias. Subdomains
# count too. The token never goes anywhere else (the LFS CDN gets pre-signed URLs).
DEFAULT_TOKEN_HOSTS = ("huggingface.co", "hf.co")
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
HASH_CACHE_NAME = ".model-hashes.json"
CHUNK = 1024 * 1024
# A stalled socket is retried rather than waited on forever; HF's CDN answers in well
# under a second, so 60 s without a byte means the connection is gone.
SOCKET_TIMEOUT_S = 60.0
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
USER_AGENT = "comfy-inprocess-worker-model-downloader/1"


class ManifestError(ValueError):
    """The manifest is unreadable or an entry breaks its format."""


class DownloadError(Exception):
    """A file could not be fetched or verified; the message says what to do."""

    retryable: bool = False


class TransientError(DownloadError):
    """A network or server fault worth another attempt (resuming from the .part)."""

    retryable = True


class AuthError(DownloadError):
    """The server refused the request (401/403): a token or a licence is missing."""


class VerificationError(DownloadError):
    """The bytes do not match the manifest's size or sha256."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ModelEntry:
    """One file of the manifest (the format is shared with the tests and the docs)."""

    name: str
    url: str
    sha256: str | None
    size: int
    folder: str
    sets: tuple[str, ...]
    gated: bool = False

    def relative_path(self) -> Path:
        return Path(self.folder) / self.name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_entry(raw: object, index: int) -> ModelEntry:
    """Validate one manifest object; the error names the entry and the field."""
    if not isinstance(raw, dict):
        raise ManifestError(f"entry {index}: expected an object, got {type(raw).__name__}")
    label = f"entry {index} ({raw.get('name', '?')!s})"
    missing = [k for k in ("name", "url", "sha256", "size", "folder", "sets") if k not in raw]
    if missing:
        raise ManifestError(f"{label}: missing {', '.join(missing)}")
    name, url, sha, size = raw["name"], raw["url"], raw["sha256"], raw["size"]
    folder, sets, gated = raw["folder"], raw["sets"], raw.get("gated", False)
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ManifestError(f"{label}: name must be a plain file name, got {name!r}")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise ManifestError(f"{label}: url must be an absolute URL, got {url!r}")
    # Plain http is for the tests' loopback servers; anything else must be https so the
    # bytes (and a token) cannot be swapped or read on the way.
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        raise ManifestError(f"{label}: url must be https://, got {url!r}")
    if sha is not None and (not isinstance(sha, str) or not SHA256_RE.match(sha)):
        raise ManifestError(f"{label}: sha256 must be 64 lowercase hex digits or null, got {sha!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ManifestError(f"{label}: size must be a positive integer (bytes), got {size!r}")
    folder_path = Path(folder) if isinstance(folder, str) and folder else None
    if folder_path is None or folder_path.is_absolute() or ".." in folder_path.parts:
        raise ManifestError(
            f"{label}: folder must be a relative path inside models/, got {folder!r}"
        )
    if not isinstance(sets, list) or not sets or not all(isinstance(s, str) and s for s in sets):
        raise ManifestError(f"{label}: sets must be a non-empty list of names, got {sets!r}")
    if not isinstance(gated, bool):
        raise ManifestError(f"{label}: gated must be true or false, got {gated!r}")
    return ModelEntry(name, url, sha, size, folder_path.as_posix(), tuple(sets), gated)


def load_manifest(path: Path) -> list[ModelEntry]:
    """Read and validate a manifest; two entries may not claim one file differently."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    if not isinstance(raw, list):
        raise ManifestError(f"manifest {path} must be a JSON list of entries")
    entries = [parse_entry(item, i) for i, item in enumerate(raw)]
    seen: dict[Path, ModelEntry] = {}
    for entry in entries:
        other = seen.setdefault(entry.relative_path(), entry)
        if other is not entry:
            raise ManifestError(
                f"two entries write {entry.relative_path()}: merge their sets instead"
            )
    return entries


def select(entries: Sequence[ModelEntry], sets: Sequence[str], all_sets: bool) -> list[ModelEntry]:
    """The entries in any of ``sets``, in manifest order.

    Each value may be a comma list (``sdxl,wan22``, as the Dockerfile's MODEL_SETS passes
    it); ``all`` selects every entry and ``none`` nothing.
    """
    names = {n.strip() for value in sets for n in value.split(",") if n.strip()}
    if all_sets or "all" in names:
        return list(entries)
    if "none" in names:
        if len(names) > 1:
            raise ManifestError("'none' cannot be combined with other sets")
        return []
    known = {s for e in entries for s in e.sets}
    unknown = sorted(names - known)
    if unknown:
        raise ManifestError(
            f"unknown set(s) {', '.join(unknown)}; the manifest has {', '.join(sorted(known))}"
        )
    return [e for e in entries if names & set(e.sets)]


# --------------------------------------------------------------------------- hashing


def _hash_into(path: Path, digest: hashlib._Hash) -> None:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    _hash_into(path, digest)
    return digest.hexdigest()


class HashCache:
    """sha256 of files under ``dest`` keyed by relative path, valid while size and mtime hold.

    Advisory only: a stale or unreadable cache means a file is hashed again, never that a
    wrong file is accepted (size and mtime_ns must both still match).
    """

    def __init__(self, dest: Path) -> None:
        self._path = dest / HASH_CACHE_NAME
        self._lock = threading.Lock()
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            self._data: dict[str, dict[str, Any]] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self._data = {}

    def get(self, rel: Path, path: Path) -> str | None:
        stat = path.stat()
        with self._lock:
            item = self._data.get(rel.as_posix())
        if item and item.get("size") == stat.st_size and item.get("mtime_ns") == stat.st_mtime_ns:
            value = item.get("sha256")
            return value if isinstance(value, str) else None
        return None

    def put(self, rel: Path, path: Path, digest: str) -> None:
        stat = path.stat()
        with self._lock:
            self._data[rel.as_posix()] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": digest,
            }
            tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True), encoding="utf-8")
                tmp.replace(self._path)
            except OSError:
                tmp.unlink(missing_ok=True)  # a read-only dest just loses the cache


# --------------------------------------------------------------------------- HTTP


def host_matches(host: str | None, token_hosts: Iterable[str]) -> bool:
    """True for a token host itself or one of its subdomains (not ``evilhuggingface.co``)."""
    host = (host or "").lower().rstrip(".")
    return any(host == h or host.endswith("." + h) for h in token_hosts)


class _TokenRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Re-attach the token on a redirect only when the new host is a token host.

    The token is added with ``add_unredirected_header``, which urllib drops on every
    redirect; without this, a gated repo that moved (a same-host redirect) would 401.
    """

    def __init__(self, token: str | None, token_hosts: Sequence[str]) -> None:
        self._token = token
        self._token_hosts = token_hosts

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if (
            new is not None
            and self._token
            and host_matches(urlsplit(newurl).hostname, self._token_hosts)
        ):
            new.add_unredirected_header("Authorization", f"Bearer {self._token}")
        return new


@dataclass(frozen=True)
class HttpConfig:
    token: str | None = field(default=None, repr=False)
    token_hosts: tuple[str, ...] = DEFAULT_TOKEN_HOSTS
    timeout_s: float = SOCKET_TIMEOUT_S

    def opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(_TokenRedirectHandler(self.token, self.token_hosts))

    def request(self, url: str, offset: int) -> urllib.request.Request:
        # S310: parse_entry admits only https:// (and http:// to loopback), never file:.
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        if self.token and host_matches(urlsplit(url).hostname, self.token_hosts):
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return req


def _licence_page(url: str) -> str:
    """``https://huggingface.co/org/repo`` for a resolve URL (datasets keep their prefix)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    keep = 3 if segments[:1] == ["datasets"] else 2
    return f"{parts.scheme}://{parts.netloc}/{'/'.join(segments[:keep])}"


def _auth_message(entry: ModelEntry, code: int, config: HttpConfig) -> str:
    host = urlsplit(entry.url).hostname
    if not host_matches(host, config.token_hosts):
        return f"HTTP {code} from {host} for {entry.name}: the server refused the download"
    page = _licence_page(entry.url)
    if config.token is None:
        return (
            f"HTTP {code} for {entry.name}: this file is gated. Set HF_TOKEN (or "
            f"HUGGING_FACE_HUB_TOKEN) to a Hugging Face read token and accept the licence at {page}"
        )
    return (
        f"HTTP {code} for {entry.name}: Hugging Face refused the token in HF_TOKEN. Check that it "
        f"is a valid read token and that its account accepted the licence at {page}"
    )


# --------------------------------------------------------------------------- progress


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """One aggregate progress line on stderr: redrawn on a TTY, every 15 s in a build log."""

    def __init__(self, total_bytes: int, files: int, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total = total_bytes
        self.files = files
        self.done_files = 0
        self.done = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0
        self._interval = 0.25 if self.tty else 15.0

    def message(self, text: str) -> None:
        with self._lock:
            self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
            self.stream.flush()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._draw(now)

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1

    def close(self) -> None:
        with self._lock:
            if self.tty:
                self._draw(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{int(left / rate // 60)}m{int(left / rate % 60):02d}s" if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        line = (
            f"[{self.done_files}/{self.files} files] {human(self.done)} / {human(self.total)} "
            f"({pct:.1f}%)  {human(rate)}/s  ETA {eta}"
        )
        self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- download


class Status(Enum):
    PRESENT = "present"
    DOWNLOADED = "downloaded"
    REFUSED = "refused"
    FAILED = "failed"
    WOULD_DOWNLOAD = "would download"


@dataclass(frozen=True)
class Outcome:
    entry: ModelEntry
    status: Status
    detail: str = ""
    measured_sha256: str | None = None


def _fsync_close(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _fetch_once(
    entry: ModelEntry, part: Path, config: HttpConfig, progress: Progress
) -> tuple[str, bool]:
    """One HTTP attempt into ``part``; returns (sha256 of the whole file, resumed?).

    Raises TransientError when the attempt should be repeated (the .part keeps what
    arrived), AuthError / DownloadError when it should not.
    """
    offset = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    if offset:
        # Hash the kept prefix, then the stream: no second pass over a 14 GB file at the end.
        _hash_into(part, digest)
    if offset == entry.size:
        return digest.hexdigest(), True  # a complete .part from an earlier run: verify it

    try:
        response = config.opener().open(config.request(entry.url, offset), timeout=config.timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (401, 403):
            raise AuthError(_auth_message(entry, exc.code, config)) from None
        if exc.code == 416 and offset:
            part.unlink(missing_ok=True)  # our prefix is not satisfiable: start over
            progress.advance(-offset)
            raise TransientError(
                f"HTTP 416 resuming {entry.name}; restarting from byte 0"
            ) from None
        if exc.code == 429 or exc.code >= 500:
            raise TransientError(f"HTTP {exc.code} for {entry.name}") from None
        raise DownloadError(f"HTTP {exc.code} for {entry.name} ({entry.url})") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise TransientError(f"cannot reach {urlsplit(entry.url).hostname}: {exc}") from exc

    with response:
        resumed = False
        if offset and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                progress.advance(-offset)
                raise TransientError(
                    f"server resumed {entry.name} at {start}, not {offset}; restarting"
                )
            resumed = True
        elif response.status != 200 and response.status != 206:
            raise DownloadError(f"unexpected HTTP {response.status} for {entry.name}")
        if offset and not resumed:
            # The server ignored Range and sent the whole file (200): start over with it.
            progress.advance(-offset)
            offset = 0
            digest = hashlib.sha256()
        written = offset
        handle = part.open("r+b" if resumed else "wb")
        try:
            handle.seek(offset)
            handle.truncate()
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.IncompleteRead, OSError) as exc:
                    raise TransientError(
                        f"connection lost after {human(written)} of {entry.name}: {exc}"
                    ) from exc
                if not block:
                    break
                written += len(block)
                if written > entry.size:
                    raise VerificationError(
                        f"{entry.name}: server sent more than the manifest's {entry.size} bytes"
                    )
                handle.write(block)
                digest.update(block)
                progress.advance(len(block))
        finally:
            _fsync_close(handle)
    if written < entry.size:
        raise TransientError(f"{entry.name}: stream ended at {written} of {entry.size} bytes")
    return digest.hexdigest(), resumed


def _check_inside(dest: Path, entry: ModelEntry) -> Path:
    """The entry's path under ``dest``, checked lexically (parse_entry already refuses
    ``..`` and absolute folders; a folder the user symlinked elsewhere is their choice)."""
    path = Path(os.path.normpath(dest / entry.relative_path()))
    if not path.is_relative_to(os.path.normpath(dest)):
        raise ManifestError(f"{entry.name}: {entry.relative_path()} leaves {dest}")
    return path


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


@dataclass
class Downloader:
    """Fetches and verifies entries into ``dest``; one instance is shared by the workers."""

    dest: Path
    config: HttpConfig
    progress: Progress
    attempts: int = 5
    retry_wait_s: float = 2.0
    allow_unverified: bool = False
    cache: HashCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = HashCache(self.dest)

    def target(self, entry: ModelEntry) -> Path:
        return _check_inside(self.dest, entry)

    def present(self, entry: ModelEntry) -> str | None:
        """The verified sha256 when the file is already in place, else None."""
        path = self.target(entry)
        if not path.is_file() or path.stat().st_size != entry.size:
            return None
        rel = entry.relative_path()
        digest = self.cache.get(rel, path)
        if digest is None:
            self.progress.message(f"checking {rel} (sha256 of {human(entry.size)})")
            digest = sha256_of(path)
            self.cache.put(rel, path, digest)
        return digest if entry.sha256 in (None, digest) else None

    def run(self, entry: ModelEntry) -> Outcome:
        try:
            return self._run(entry)
        except DownloadError as exc:
            self.progress.message(f"FAILED {entry.relative_path()}: {exc}")
            return Outcome(entry, Status.FAILED, str(exc))
        finally:
            self.progress.file_done()

    def _run(self, entry: ModelEntry) -> Outcome:
        if entry.sha256 is None and not self.allow_unverified:
            return Outcome(
                entry, Status.REFUSED, "no sha256 in the manifest; pass --allow-unverified"
            )
        digest = self.present(entry)
        if digest is not None:
            self.progress.advance(entry.size)
            return Outcome(entry, Status.PRESENT, measured_sha256=digest)
        path = self.target(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        if part.exists() and part.stat().st_size > entry.size:
            part.unlink()  # longer than the file can be: not a prefix of it
        if part.exists():
            self.progress.advance(part.stat().st_size)
        self.progress.message(f"downloading {entry.relative_path()} ({human(entry.size)})")
        restarted_after_mismatch = False
        attempt = 0
        while True:
            attempt += 1
            try:
                digest, resumed = _fetch_once(entry, part, self.config, self.progress)
                if entry.sha256 is not None and digest != entry.sha256:
                    part.unlink(missing_ok=True)
                    self.progress.advance(-entry.size)
                    if resumed and not restarted_after_mismatch:
                        # The kept prefix may come from another version of the file (an old
                        # .part): one clean download from byte 0 settles it.
                        restarted_after_mismatch = True
                        self.progress.message(
                            f"{entry.name}: sha256 mismatch after resuming; downloading again"
                        )
                        continue
                    raise VerificationError(
                        f"{entry.name}: sha256 {digest} does not match the manifest's "
                        f"{entry.sha256}; the file was deleted. The upstream file changed "
                        "or the manifest is wrong"
                    )
                part.replace(path)  # atomic: same folder, so the name appears complete
                self.cache.put(entry.relative_path(), path, digest)
                self.progress.message(f"done {entry.relative_path()}")
                return Outcome(entry, Status.DOWNLOADED, measured_sha256=digest)
            except VerificationError:
                part.unlink(missing_ok=True)
                raise
            except DownloadError as exc:
                if not exc.retryable or attempt >= self.attempts:
                    if exc.retryable and part.exists():
                        raise DownloadError(
                            f"{exc} (gave up after {attempt} attempts; run again to resume)"
                        ) from exc
                    raise
                wait = self.retry_wait_s * 2 ** (attempt - 1)
                self.progress.message(f"retrying {entry.name} in {wait:.0f}s: {exc}")
                time.sleep(wait)


# --------------------------------------------------------------------------- CLI


def read_token(env: Mapping[str, str]) -> str | None:
    for name in TOKEN_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


VOLUME_ROOTS = (Path("/workspace"), Path("/runpod-volume"))
"""Where RunPod mounts a network volume: on pods, and on serverless workers."""


def volume_dest(dest: Path | None, roots: Sequence[Path] = VOLUME_ROOTS) -> Path:
    """``dest``, or the volume's ``models`` folder; never a volume path with no volume.

    On a pod the volume is at ``/workspace``; ``/runpod-volume`` is where serverless
    workers see it. Writing to either where it is not mounted would create the folder on
    the container disk, and the models would vanish with the pod.
    """
    if dest is None:
        for root in roots:
            if root.is_dir():
                print(f"--dest not given: writing to {root / 'models'} (the volume)")
                return root / "models"
        raise ManifestError(
            "--dest is required here: no network volume at "
            + " or ".join(str(r) for r in roots)
            + " (give a ComfyUI models folder)"
        )
    absolute = Path(os.path.normpath(dest if dest.is_absolute() else Path.cwd() / dest))
    for root in roots:
        if absolute.is_relative_to(root) and not root.is_dir():
            mounted = [str(r) for r in roots if r.is_dir()]
            where = f"; the volume here is at {mounted[0]}" if mounted else ""
            raise ManifestError(
                f"--dest {dest}: {root} does not exist on this machine{where} (on a pod "
                "the volume is at /workspace, on a serverless worker at /runpod-volume); "
                "writing there would fill the container disk"
            )
    return dest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download, resume and verify the models listed in comfyui/models.json.",
        epilog="Exit status: 0 ok, 1 a file failed, 2 usage or manifest error, "
        "3 unverified entries refused.",
    )
    parser.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, help="models.json to read"
    )
    parser.add_argument(
        "--dest",
        type=Path,
        help="a ComfyUI models folder (default: the network volume's, /workspace/models on "
        "a pod, /runpod-volume/models on a serverless worker)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NAME",
        help="a set to fetch; repeatable or comma-separated; 'all' or 'none' also work",
    )
    parser.add_argument("--all", action="store_true", help="every entry of the manifest")
    parser.add_argument(
        "--list", action="store_true", help="list the entries (of --set, or all) and exit"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be fetched; fetch nothing"
    )
    parser.add_argument("--jobs", type=int, default=4, help="parallel downloads (default 4)")
    parser.add_argument(
        "--attempts", type=int, default=5, help="tries per file before giving up (default 5)"
    )
    parser.add_argument(
        "--retry-wait",
        type=float,
        default=2.0,
        help="seconds before the first retry; doubles each time",
    )
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="also fetch entries whose sha256 is null (size is still checked)",
    )
    parser.add_argument(
        "--token-host",
        dest="token_hosts",
        action="append",
        metavar="HOST",
        help="host (and subdomains) that may receive HF_TOKEN; default huggingface.co, hf.co",
    )
    return parser


def _print_list(entries: Sequence[ModelEntry]) -> None:
    width = max((len(e.relative_path().as_posix()) for e in entries), default=10)
    for e in entries:
        flags = ("gated " if e.gated else "") + ("" if e.sha256 else "UNVERIFIED")
        path = e.relative_path().as_posix()
        print(f"{path:<{width}}  {human(e.size):>10}  {','.join(e.sets):<16} {flags}".rstrip())
    print(f"{len(entries)} files, {human(sum(e.size for e in entries))}")


def _summary(outcomes: Sequence[Outcome]) -> int:
    sys.stdout.flush()  # keep the per-file lines above the problems on stderr
    counts = {s: sum(1 for o in outcomes if o.status is s) for s in Status}
    for o in outcomes:
        if o.status in (Status.FAILED, Status.REFUSED):
            print(
                f"{o.status.value:>10}  {o.entry.relative_path().as_posix()}: {o.detail}",
                file=sys.stderr,
            )
        elif o.entry.sha256 is None and o.measured_sha256:
            print(
                f"unverified  {o.entry.relative_path().as_posix()}: measured sha256 "
                f"{o.measured_sha256} (record it in the manifest once you trust the source)"
            )
    sys.stderr.flush()
    print(
        f"summary: {counts[Status.DOWNLOADED]} downloaded, {counts[Status.PRESENT]} already "
        f"present, {counts[Status.WOULD_DOWNLOAD]} to download, {counts[Status.REFUSED]} refused, "
        f"{counts[Status.FAILED]} failed"
    )
    if counts[Status.FAILED]:
        return EXIT_FAILED
    return EXIT_REFUSED if counts[Status.REFUSED] else EXIT_OK


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if env is None else env
    try:
        entries = load_manifest(args.manifest)
        if args.list:
            _print_list(select(entries, args.sets, args.all or not args.sets))
            return EXIT_OK
        if not args.sets and not args.all:
            raise ManifestError("choose what to fetch: --set NAME (repeatable) or --all")
        try:
            args.dest = volume_dest(args.dest)
        except ManifestError as exc:
            if not args.dry_run:
                raise
            # A dry run writes nothing: say what a real run would refuse, then show the plan.
            print(f"note: {exc}; a real run would stop here")
            args.dest = args.dest or VOLUME_ROOTS[0] / "models"
        if args.jobs < 1 or args.attempts < 1:
            raise ManifestError("--jobs and --attempts must be at least 1")
        chosen = select(entries, args.sets, args.all)
        for entry in chosen:
            _check_inside(args.dest, entry)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if not chosen:
        print("nothing selected (--set none): no model downloaded")
        return EXIT_OK
    if not args.dry_run:
        args.dest.mkdir(parents=True, exist_ok=True)
    config = HttpConfig(read_token(env), tuple(args.token_hosts or DEFAULT_TOKEN_HOSTS))
    wanted = [e for e in chosen if e.sha256 is not None or args.allow_unverified]
    progress = Progress(sum(e.size for e in wanted), len(wanted))
    downloader = Downloader(
        args.dest, config, progress, args.attempts, args.retry_wait, args.allow_unverified
    )
    if args.dry_run:
        outcomes = [_dry_run(downloader, e) for e in chosen]
    else:
        with ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="download") as pool:
            outcomes = list(pool.map(downloader.run, chosen))
        progress.close()
    return _summary(outcomes)


def _dry_run(downloader: Downloader, entry: ModelEntry) -> Outcome:
    """Size only: hashing tens of GB is the real run's job."""
    if entry.sha256 is None and not downloader.allow_unverified:
        return Outcome(entry, Status.REFUSED, "no sha256 in the manifest; pass --allow-unverified")
    path = downloader.target(entry)
    if path.is_file() and path.stat().st_size == entry.size:
        print(f"present         {entry.relative_path().as_posix()} (size matches)")
        return Outcome(entry, Status.PRESENT)
    print(
        f"would download  {entry.relative_path().as_posix()} ({human(entry.size)}) from {entry.url}"
    )
    return Outcome(entry, Status.WOULD_DOWNLOAD)


if __name__ == "__main__":
    sys.exit(main())
