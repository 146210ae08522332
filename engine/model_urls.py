"""Model files a workflow names by URL or by absolute path, made into names ComfyUI lists.

A loader's model-file input (one whose options are the files of a model folder:
``ckpt_name``, ``lora_name``, ``model_name`` of ``UpscaleModelLoader``...) may hold:

- an ``http(s)://`` URL, optionally ending ``#sha256=<64 hex digits>``: the file is
  downloaded once into that folder's cache (:mod:`engine.model_cache`), checked against
  the hash when one is given, and the input is rewritten to the name ComfyUI lists
  (``url-cache/<key>-<name>``). Later jobs reuse it. The same URL in two nodes or two
  jobs is downloaded once.
- an absolute path under one of the folder's paths, or under a folder of the same
  name elsewhere (``/runpod-volume/models/loras/x.safetensors``,
  ``C:\\ComfyUI\\models\\loras\\x.safetensors``): rewritten to the relative name
  (``x.safetensors``); one outside any such folder is refused, naming what to send.

Every problem that can be seen before downloading is reported at once; a failed
download fails the job before the next one starts. Failures raise
:class:`~engine.errors.ModelFileError`, one detail per input, naming the node, the
input and the URL without its query string.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.deadline import Deadline
from engine.errors import ItemError, ModelFileError
from engine.model_cache import CACHE_DIR_NAME, CacheEntry, ModelCache, url_key, url_lock
from engine.model_download import Download, Downloader, HttpDownloader
from engine.runtime import ModelFolder, ProgressEvent, Runtime, Workflow
from engine.settings import Settings
from engine.urls import is_url, redact_url

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressEvent], None]

_SHA256 = re.compile(r"^sha256[=:]([0-9a-fA-F]{64})$")
_DRIVE = re.compile(r"^[A-Za-z]:/")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MB = 1024 * 1024
# Without a Content-Length, progress is said every this many bytes.
_PROGRESS_STEP_BYTES = 64 * _MB
# Formats told by their first bytes, for a URL and server that name no file.
_GGUF_MAGIC = b"GGUF"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


def split_hash(value: str) -> tuple[str, str | None]:
    """``(url without fragment, expected sha256 or None)``; raises ItemError on a bad hash."""
    url, hash_mark, fragment = value.strip().partition("#")
    if not hash_mark or not fragment.lower().startswith("sha256"):
        return url, None
    match = _SHA256.match(fragment)
    if match is None:
        raise ItemError(
            "",
            "the URL ends with a #sha256 that is not 64 hex digits; write #sha256=<64 hex digits> "
            "(sha256sum prints it)",
        )
    return url, match.group(1).lower()


def is_absolute_path(value: str) -> bool:
    """``/x``, ``//host/x``, ``C:\\x`` or ``C:/x``."""
    posix = value.replace("\\", "/")
    return posix.startswith("/") or bool(_DRIVE.match(posix))


def relative_name(value: str, folder: ModelFolder) -> str:
    """The name ComfyUI lists for an absolute path under ``folder``; raises ItemError if none.

    Under one of the folder's own paths, the rest of the path. Elsewhere (another machine's
    install, a volume mounted at another place), the rest after the last segment named like
    the folder or one of its paths (``loras``, ``unet`` for ``diffusion_models``).
    """
    posix = value.replace("\\", "/")
    path = PurePosixPath(posix)
    for base in folder.paths:
        if path.is_relative_to(PurePosixPath(base.as_posix())):
            rest = path.relative_to(PurePosixPath(base.as_posix())).as_posix()
            if rest and rest != ".":
                return rest
    known = {folder.name, *(base.name for base in folder.paths)}
    parts = [p for p in posix.split("/") if p]
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in known:
            return "/".join(parts[index + 1 :])
    where = ", ".join(str(p) for p in folder.paths) or "none registered"
    raise ItemError(
        "",
        f"an absolute path outside this worker's {folder.name} folders ({where}); send the "
        f"name relative to the {folder.name} folder, e.g. {parts[-1] if parts else 'x'!r}, "
        "or an http(s) URL of the file",
    )


@dataclass(frozen=True)
class _Wanted:
    """One model file a workflow names by URL."""

    url: str
    sha256: str | None
    folder: ModelFolder
    node_id: str
    class_type: str
    input_name: str

    @property
    def label(self) -> str:
        return f"node {self.node_id} ({self.class_type}) {self.input_name}"

    @property
    def shown(self) -> str:
        return redact_url(self.url)


class ModelUrls:
    """Resolves model URLs and absolute paths in workflows against a runtime's folders.

    One per worker; safe across threads. Files of the latest job stay pinned (never
    evicted) until the next job starts resolving: the worker runs one job at a time.
    """

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        downloader: Downloader | None = None,
        cache: ModelCache | None = None,
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._downloader = downloader
        self._cache = cache or ModelCache(settings.model_cache_max_bytes)
        self._state = threading.Lock()
        self._calls = itertools.count()
        self._active: dict[int, set[Path]] = {}
        self._last_job: set[Path] = set()
        # The job running on this thread (pinning()): what it resolves stays in use until
        # it ends, past resolve(), while other jobs in flight download.
        self._job = threading.local()

    @contextlib.contextmanager
    def pinning(self) -> Iterator[None]:
        """Model files resolved on this thread inside the block stay in use (never
        evicted) until the block ends: a job's files, through its run, while other jobs
        in flight download theirs (MAX_CONCURRENT_JOBS)."""
        with self._state:
            call = next(self._calls)
            self._active[call] = set()
        self._job.call = call
        try:
            yield
        finally:
            self._job.call = None
            with self._state:
                self._active.pop(call, None)

    def close(self) -> None:
        """Close the HTTP downloader if this object made one."""
        if isinstance(self._downloader, HttpDownloader):
            self._downloader.close()

    def resolve(
        self,
        workflow: Workflow,
        deadline: Deadline,
        progress: ProgressCallback | None = None,
    ) -> Workflow:
        """``workflow`` with model URLs and absolute model paths replaced by listed names.

        Returns the same object when nothing needed a change; never changes its input.
        """
        rewrites, wanted = self._scan(workflow)
        if not rewrites and not wanted:
            return workflow
        job_call: int | None = getattr(self._job, "call", None)
        with self._state:
            if not self._active:
                self._last_job = set()
            if job_call is not None:  # the job's own pins, kept until it ends
                call = job_call
            else:
                call = next(self._calls)
                self._active[call] = set()
        try:
            if wanted:
                self._cache.set_folders(self._runtime.model_folders())
            for item in wanted:
                deadline.check(f"downloading {item.shown}")
                try:
                    name = self._ensure(item, deadline, progress, call)
                except ItemError as exc:
                    reason = f"{item.shown}: {exc.reason}"
                    raise ModelFileError([ItemError(item.label, reason)]) from exc
                rewrites[(item.node_id, item.input_name)] = name
        finally:
            if job_call is None:
                with self._state:
                    self._last_job |= self._active.pop(call)
        result = dict(workflow)
        for (node_id, input_name), name in rewrites.items():
            node = result[node_id]
            result[node_id] = {**node, "inputs": {**node["inputs"], input_name: name}}
        return result

    # -- finding what to do -----------------------------------------------------------

    def _scan(self, workflow: Workflow) -> tuple[dict[tuple[str, str], str], list[_Wanted]]:
        """The path rewrites and the URLs to fetch; raises with every problem at once."""
        rewrites: dict[tuple[str, str], str] = {}
        wanted: list[_Wanted] = []
        failures: list[ItemError] = []
        for node_id, node in workflow.items():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            class_type = str(node.get("class_type", ""))
            candidates = {
                name: value
                for name, value in inputs.items()
                if isinstance(value, str) and (is_url(value) or is_absolute_path(value))
            }
            if not candidates:
                continue
            listed = self._runtime.file_inputs(class_type)
            for input_name, value in candidates.items():
                label = f"node {node_id} ({class_type}) {input_name}"
                if input_name not in listed:
                    continue  # not a file picker: a node's own URL or path input
                folder = self._runtime.model_folder_of(class_type, input_name)
                if folder is None:
                    # Not a model file (LoadImage's image, a pack's own list): left to
                    # validation, which names a value the input does not list.
                    continue
                try:
                    if is_url(value):
                        url, sha256 = split_hash(value)
                        wanted.append(_Wanted(url, sha256, folder, node_id, class_type, input_name))
                    else:
                        rewrites[(node_id, input_name)] = relative_name(value, folder)
                except ItemError as exc:
                    failures.append(ItemError(label, f"{redact_url(value)}: {exc.reason}"))
        if failures:
            raise ModelFileError(failures)
        return rewrites, wanted

    # -- fetching ----------------------------------------------------------------------

    def _in_use(self) -> set[Path]:
        with self._state:
            return set(self._last_job).union(*self._active.values())

    def _pin(self, call: int, path: Path) -> None:
        with self._state:
            self._active[call].add(path.resolve())

    def _ensure(
        self, item: _Wanted, deadline: Deadline, progress: ProgressCallback | None, call: int
    ) -> str:
        """The listed name of ``item``'s file, downloading it unless the cache has it."""
        key = url_key(item.url)
        with url_lock(key, deadline.remaining()) as acquired:
            if not acquired:
                raise deadline.exceeded(f"while waiting for another download of {item.shown}")
            entry = self._cache.lookup(item.folder, key)
            if entry is not None and item.sha256 not in (None, entry.sha256):
                log.info(
                    "cached %s does not match the hash asked for; downloading it again",
                    entry.path.name,
                )
                entry = None
            if entry is None:
                entry = self._download(item, key, deadline, progress, call)
            else:
                log.info("model %s: cached as %s", item.shown, entry.path)
                self._cache.touch(entry)
                self._pin(call, entry.path)
        return f"{CACHE_DIR_NAME}/{entry.path.name}"

    def _download(
        self,
        item: _Wanted,
        key: str,
        deadline: Deadline,
        progress: ProgressCallback | None,
        call: int,
    ) -> CacheEntry:
        directory = self._cache.cache_dir(item.folder)
        settings = self._settings
        if settings.model_max_file_bytes <= settings.model_cache_max_bytes:
            max_bytes, limit_name = settings.model_max_file_bytes, "MODEL_MAX_FILE_GB"
        else:
            max_bytes, limit_name = settings.model_cache_max_bytes, "MODEL_CACHE_MAX_GB"
        log.info("model %s: downloading into %s", item.shown, directory)
        with self._cache.part(directory, key) as temp:

            def make_room(size: int | None) -> None:
                self._cache.make_room(size or 0, directory, self._in_use(), part=temp)

            download = self._http().download(
                item.url,
                temp,
                max_bytes=max_bytes,
                limit_name=limit_name,
                deadline=deadline,
                check_size=make_room,
                on_progress=_Reporter(item, progress),
            )
            name = _file_name(item, download)
            if item.sha256 is not None and download.sha256 != item.sha256:
                raise ItemError(
                    "",
                    f"hash mismatch for {name}: expected sha256 {item.sha256}, got "
                    f"{download.sha256}; the URL serves another file than the hash names "
                    "(or the hash is wrong)",
                )
            if download.size == 0:  # whatever the downloader: an empty file is no model
                raise ItemError("", "the server sent an empty file (0 bytes), which is no model")
            entry = self._cache.add(temp, directory, key, name, download.sha256, item.shown)
        self._pin(call, entry.path)
        self._runtime.forget_model_files(item.folder.name)
        return entry

    def sweep(self) -> None:
        """Remove the partial downloads killed workers left in every model folder's cache.

        Once at boot, after the runtime (which knows the model folders) has started.
        """
        self._cache.set_folders(self._runtime.model_folders())
        try:
            removed = self._cache.sweep()
        except OSError as exc:  # an unreadable volume: the worker still serves jobs
            log.warning("model cache: could not look for partial downloads (%s)", exc)
            return
        if removed:
            log.info("model cache: removed %d partial download(s) left by a killed worker", removed)

    def _http(self) -> Downloader:
        if self._downloader is None:
            self._downloader = HttpDownloader(self._settings)
        return self._downloader


class _Reporter:
    """Turns byte counts into progress lines: each whole percent, or every 64 MB."""

    def __init__(self, item: _Wanted, progress: ProgressCallback | None) -> None:
        self._item, self._progress = item, progress
        self._name = _url_basename(item.url) or item.shown
        self._last: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._progress is None:
            return
        if total:
            step = done * 100 // total
            text = f"downloading {self._name}: {step}%"
        else:
            step = done // _PROGRESS_STEP_BYTES
            text = f"downloading {self._name}: {done / _MB:.0f} MB"
        if step == self._last:
            return
        self._last = step
        item = self._item
        self._progress(ProgressEvent(node_id=item.node_id, class_type=item.class_type, text=text))


def _url_basename(url: str) -> str | None:
    """The last path segment of ``url``, percent-decoded, if it is a usable file name."""
    path = urllib.parse.urlsplit(url).path
    return _clean(urllib.parse.unquote(path.rsplit("/", 1)[-1]))


def _clean(name: str | None) -> str | None:
    """``name`` as one safe path segment (no separators, controls or leading dots)."""
    if not name:
        return None
    name = _CONTROL.sub("", name.replace("\\", "/").rsplit("/", 1)[-1]).strip().lstrip(".")
    return name or None


def _sniffed_suffix(head: bytes) -> str | None:
    """The suffix a file's first bytes say it needs: ComfyUI loads by the suffix."""
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return ".safetensors"  # an 8-byte header length, then the JSON header
    if head.startswith(_GGUF_MAGIC):
        return ".gguf"
    if head.startswith(_ZIP_MAGIC):
        return ".pt"
    return None


def _file_name(item: _Wanted, download: Download) -> str:
    """The file's name in the cache: from the URL, the server, or the file's own format."""
    allowed = item.folder.extensions
    candidates = [n for n in (_url_basename(item.url), _clean(download.suggested_name)) if n]
    for candidate in candidates:
        if not allowed or PurePosixPath(candidate).suffix.lower() in allowed:
            return candidate
    suffix = _sniffed_suffix(download.head)
    stem = PurePosixPath(candidates[0]).stem if candidates else "model"
    if suffix is not None and (not allowed or suffix in allowed):
        return f"{stem}{suffix}"
    kinds = ", ".join(sorted(allowed))
    named = f"named {candidates[0]!r}" if candidates else "not named"
    raise ItemError(
        "",
        f"the file is {named}, and the {item.folder.name} folder lists only {kinds} files; "
        "link a URL that ends with the file's name",
    )
