"""Command-line client: run a workflow on a RunPod endpoint or a local worker, save the outputs.

    comfy-worker-client workflow_api.json --image photo.png --endpoint abc123xyz
    python -m engine.client workflow_api.json --url http://127.0.0.1:8000 --sync

It sends ``{"input": {"workflow": ..., "images": [...]}}`` with ``POST /run`` and polls
``/status/<id>`` (``--sync``: ``POST /runsync``), then writes every item of
``output.images`` into a folder: base64 data URIs decoded, S3 URLs downloaded.

Only httpx and the standard library: the client runs on a laptop that has none of
the worker's dependencies (torch, ComfyUI, boto3, pydantic).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import mimetypes
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

import httpx

RUNPOD_API = "https://api.runpod.ai/v2"

# RunPod refuses a /run request over 10 MB and a /runsync one over 20 MB; checking
# here fails in a second instead of after uploading the whole body.
_REQUEST_LIMIT_BYTES = {"/run": 10 * 1024 * 1024, "/runsync": 20 * 1024 * 1024}

# Anything else (IN_QUEUE, IN_PROGRESS, a status RunPod adds later) is waited on.
_TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

# A video job polls for many minutes; a few dropped connections or a 5xx from RunPod's
# gateway in that time must not abandon it. Consecutive failures, each a poll apart.
_MAX_POLL_RETRIES = 5
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

_CONNECT_TIMEOUT_S = 10.0
# A presigned S3 GET starts streaming at once; a minute without a byte is a dead link.
_DOWNLOAD_READ_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1024 * 1024
_MAX_UNIQUE_NAMES = 10_000
_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Control characters (ESC above all) in a server's text must not drive the terminal.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MB = 1024 * 1024
_CLEAR_LINE = "\r\x1b[K"  # carriage return + ANSI "erase to end of line"
_MAX_PROGRESS_CHARS = 120


class ExitCode(IntEnum):
    """The process's exit status; listed in ``--help``."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    INCOMPLETE = 3
    API = 4
    WAIT_TIMEOUT = 5
    INTERRUPTED = 130


# The errors, each mapped to an exit code by ``main``:
#
#     ClientError            one message + exit_code
#     ├── UsageError         2: arguments, workflow or image file
#     ├── ApiError           4: unreachable, key rejected, unknown endpoint, odd answer
#     │   └── NoAnswerError  ... no answer before --timeout (also a TimeoutError)
#     ├── JobFailedError     1: FAILED, CANCELLED, TIMED_OUT
#     ├── SaveError          3: the output folder cannot be created
#     ├── WaitTimeoutError   5: --timeout passed (also a TimeoutError)
#     └── UserInterrupt      130: Ctrl-C while waiting


class ClientError(Exception):
    """A failure the CLI reports as one message and an exit code."""

    exit_code = ExitCode.API

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        """Worth another try while polling (a dropped connection, a 5xx, a 429)."""


class UsageError(ClientError):
    """The command line, the workflow file or an image file is unusable."""

    exit_code = ExitCode.USAGE


class ApiError(ClientError):
    """The endpoint could not be reached, refused the request or answered nonsense."""


class NoAnswerError(ApiError, TimeoutError):
    """A request got no answer before the client's ``--timeout``."""


class _MethodNotAllowed(ApiError):
    """GET /status answered 405: the SDK's local server, which wants POST."""


class JobFailedError(ClientError):
    """The job ended FAILED, CANCELLED or TIMED_OUT on the worker's side."""

    exit_code = ExitCode.JOB_FAILED


class WaitTimeoutError(ClientError, TimeoutError):
    """``--timeout`` passed while the job was still queued or running."""

    exit_code = ExitCode.WAIT_TIMEOUT


class SaveError(ClientError):
    """The job completed but its outputs cannot be written at all (the folder)."""

    exit_code = ExitCode.INCOMPLETE


class UserInterrupt(ClientError):
    """Ctrl-C while waiting; the job itself goes on."""

    exit_code = ExitCode.INTERRUPTED


@dataclass(frozen=True)
class ImageSpec:
    """One ``--image``: the name the workflow's LoadImage uses, and a file path or URL."""

    name: str
    source: str


@dataclass(frozen=True)
class ClientConfig:
    """Everything one run of the CLI needs; built by :func:`parse_args`."""

    workflow: Path
    base_url: str
    endpoint_id: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "RUNPOD_API_KEY"
    images: tuple[ImageSpec, ...] = ()
    sync: bool = False
    out_dir: Path | None = None
    timeout_s: float | None = 3600.0
    poll_interval_s: float = 1.0
    frames_to_video: dict[str, Any] | None = None
    comfy_org_api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SavedFile:
    """An output written to disk."""

    path: Path
    mime_type: str
    size: int
    video: Mapping[str, Any] | None = None


def _clean(text: object) -> str:
    """Text from the server, safe to print: no control characters but tab and newline."""
    return _CONTROL_CHARS.sub("", str(text))


def _say(text: str, *, err: bool = False, end: str = "\n") -> None:
    """The CLI's only way to write: results to stdout, progress and problems to stderr."""
    print(text, end=end, file=sys.stderr if err else sys.stdout, flush=True)


# -- the command line ------------------------------------------------------------------

_EPILOG = """\
exit codes:
  0    the job completed and every output was saved
  1    the job failed, was cancelled or timed out on RunPod (its error is printed)
  2    bad arguments, an unreadable or non-API-format workflow or image, or a
       request over RunPod's size limit (10 MB /run, 20 MB /runsync)
  3    the job completed, but an output could not be saved or the worker
       reported errors[] (each is printed; the other outputs are saved)
  4    the endpoint could not be reached, rejected the API key, does not exist,
       or gave an answer the client does not understand
  5    --timeout passed first; the job was not cancelled (its id is printed)
  130  interrupted (Ctrl-C); the job was not cancelled

Outputs are never overwritten: a name already taken gets -1, -2, ... before its suffix.
The API key is read from the environment only and is never printed.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-worker-client",
        description="Run a ComfyUI workflow (API format) on the worker and save its outputs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workflow", type=Path, help="workflow JSON from Workflow -> Export (API)")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="[NAME=]PATH_OR_URL",
        help="an input image: a local file (sent as a data URI) or an http(s) URL (passed "
        "through); NAME is what the workflow's LoadImage names, the file's basename by default",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", metavar="ID", help=f"a RunPod endpoint: {RUNPOD_API}/<ID>")
    target.add_argument(
        "--url",
        help="a worker's API server, e.g. http://127.0.0.1:8000 (handler.py --rp_serve_api)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key (default RUNPOD_API_KEY; "
        "with --url, no key is sent unless this is given)",
    )
    parser.add_argument(
        "--sync", action="store_true", help="use /runsync (falls back to polling if it times out)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for the outputs (default ./outputs/<job id>)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="give up waiting after S seconds, 0 for never (default 3600)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between polls (default 1)",
    )
    parser.add_argument(
        "--frames-to-video",
        metavar="FPS[:mp4|webm]",
        help="join each node's still images into one video at FPS (default format mp4)",
    )
    parser.add_argument(
        "--keep-frames", action="store_true", help="with --frames-to-video, also return the stills"
    )
    parser.add_argument(
        "--comfy-org-api-key-env",
        metavar="NAME",
        help="send the value of environment variable NAME as comfy_org_api_key (API nodes)",
    )
    return parser


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ClientConfig:
    """Parse the command line (argparse exits 2 on its own errors); reads secrets from ``env``."""
    env = os.environ if env is None else env
    args = _build_parser().parse_args(argv)
    if args.timeout < 0 or args.poll_interval <= 0:
        raise UsageError("--timeout must be >= 0 and --poll-interval > 0")
    if args.keep_frames and not args.frames_to_video:
        raise UsageError("--keep-frames needs --frames-to-video")
    key_env = args.api_key_env or "RUNPOD_API_KEY"
    api_key = env.get(key_env) or None
    if args.endpoint is not None:
        if not _ENDPOINT_ID.match(args.endpoint):
            raise UsageError(
                f"--endpoint {args.endpoint!r} is not an endpoint id (letters, digits, - and _)"
            )
        base_url = f"{RUNPOD_API}/{args.endpoint}"
        if api_key is None:
            raise UsageError(
                f"set {key_env} to your RunPod API key (or name another variable with --api-key-env)"
            )
    else:
        base_url = args.url.rstrip("/")
        if urlsplit(base_url).scheme not in {"http", "https"}:
            raise UsageError(f"--url must be an http(s) URL, got {args.url!r}")
        if args.api_key_env is None:
            api_key = None  # a local worker needs none; never send a key it did not ask for
        elif api_key is None:
            raise UsageError(f"--api-key-env names {key_env}, which is not set")
    comfy_key = None
    if args.comfy_org_api_key_env:
        comfy_key = env.get(args.comfy_org_api_key_env) or None
        if comfy_key is None:
            raise UsageError(
                f"--comfy-org-api-key-env names {args.comfy_org_api_key_env}, which is not set"
            )
    frames = None
    if args.frames_to_video:
        frames = {**parse_frames_to_video(args.frames_to_video), "keep_frames": args.keep_frames}
    return ClientConfig(
        workflow=args.workflow,
        base_url=base_url,
        endpoint_id=args.endpoint,
        api_key=api_key,
        api_key_env=key_env,
        images=tuple(parse_image_arg(text) for text in args.image),
        sync=args.sync,
        out_dir=args.out,
        timeout_s=args.timeout or None,
        poll_interval_s=args.poll_interval,
        frames_to_video=frames,
        comfy_org_api_key=comfy_key,
    )


def parse_frames_to_video(text: str) -> dict[str, Any]:
    """``"12"`` or ``"12:webm"`` -> the request's ``frames_to_video`` fps and format."""
    fps_text, _, fmt = text.partition(":")
    fmt = fmt or "mp4"
    try:
        fps = float(fps_text)
    except ValueError:
        raise UsageError(
            f"--frames-to-video {text!r}: FPS must be a number, e.g. 12 or 12:webm"
        ) from None
    # The worker's own bounds (engine.request.FramesToVideo).
    if not 0 < fps <= 240 or fmt not in {"mp4", "webm"}:
        raise UsageError(f"--frames-to-video {text!r}: FPS must be in (0, 240], format mp4 or webm")
    return {"fps": fps, "format": fmt}


def _is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def parse_image_arg(text: str) -> ImageSpec:
    """``NAME=PATH_OR_URL`` or ``PATH_OR_URL`` (named after its basename)."""
    # A URL's query or a file's own name may hold '=': those are taken whole.
    if _is_url(text) or Path(text).is_file() or "=" not in text:
        name, source = "", text
    else:
        name, _, source = text.partition("=")
    if not source:
        raise UsageError(f"--image {text!r}: nothing after '='; use NAME=PATH or NAME=URL")
    if not name:
        path = unquote(urlsplit(source).path) if _is_url(source) else source
        name = PurePosixPath(path.replace("\\", "/")).name
    if not name:
        raise UsageError(f"--image {text!r}: cannot tell the image's name; use NAME={source}")
    return ImageSpec(name=name, source=source)


# -- the request -----------------------------------------------------------------------


def load_workflow(path: Path) -> dict[str, Any]:
    """Read an API-format workflow, refusing the UI format with what to do instead."""
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read workflow {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"workflow {path} is not valid JSON: {exc}") from None
    if not isinstance(workflow, dict) or not workflow:
        raise UsageError(f"workflow {path} must be a non-empty JSON object of nodes")
    if "nodes" in workflow and "links" in workflow:
        raise UsageError(
            f"workflow {path} is in ComfyUI's UI format (it has 'nodes' and 'links'); "
            "export with Workflow -> Export (API) and pass that file"
        )
    bad = [
        key
        for key, node in workflow.items()
        if not isinstance(node, dict) or "class_type" not in node
    ]
    if bad:
        raise UsageError(
            f"workflow {path}: {', '.join(map(repr, bad[:5]))} is not a node with a class_type; "
            "export with Workflow -> Export (API)"
        )
    return workflow


def encode_image(spec: ImageSpec) -> dict[str, str]:
    """The request's ``{"name", "image"}``: a URL as is, a local file as a data URI."""
    if _is_url(spec.source):
        return {"name": spec.name, "image": spec.source}
    path = Path(spec.source).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"--image {spec.name}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    # The worker identifies the format from the bytes; the type only labels the URI.
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"name": spec.name, "image": f"data:{mime};base64,{base64.b64encode(raw).decode()}"}


def build_request(config: ClientConfig) -> dict[str, Any]:
    """The body to POST: ``{"input": {...}}``."""
    job_input: dict[str, Any] = {"workflow": load_workflow(config.workflow)}
    if config.images:
        job_input["images"] = [encode_image(spec) for spec in config.images]
    if config.frames_to_video:
        job_input["frames_to_video"] = config.frames_to_video
    if config.comfy_org_api_key:
        job_input["comfy_org_api_key"] = config.comfy_org_api_key
    return {"input": job_input}


# -- the API ---------------------------------------------------------------------------


def _shown_url(url: str) -> str:
    """A URL fit for a message: no query (presigned URLs carry their signature there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


class RunPodApi:
    """RunPod's job API, or the runpod SDK's local imitation of it, over one HTTP client."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None) -> None:
        self._config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.Client(
            base_url=config.base_url,
            headers=headers,
            transport=transport,
            timeout=_CONNECT_TIMEOUT_S,
        )
        # RunPod answers GET /status; the SDK's local server only POST (405 to GET).
        self._status_method = "GET"

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def submit(self, body: bytes, *, sync: bool, wait_s: float | None) -> dict[str, Any]:
        """POST /run (the job's id at once) or /runsync (its result, if it fits RunPod's wait)."""
        path = "/runsync" if sync else "/run"
        limit = _REQUEST_LIMIT_BYTES[path]
        if self._config.endpoint_id and len(body) > limit:
            raise UsageError(
                f"the request is {len(body) / _MB:.1f} MB, over the {limit // _MB} MB RunPod "
                f"accepts on {path}: pass large images as http(s) URLs instead of files"
            )
        # Never retried: a second POST would start a second job.
        return self._call("POST", path, content=body, wait_s=wait_s)

    def status(self, job_id: str, *, wait_s: float | None) -> dict[str, Any]:
        """The job's status; blocks until it ends on the SDK's local server."""
        path = f"/status/{quote(job_id, safe='')}"
        try:
            return self._call(self._status_method, path, wait_s=wait_s)
        except _MethodNotAllowed:
            self._status_method = "POST"
            return self._call("POST", path, wait_s=wait_s)

    def _call(
        self, method: str, path: str, *, content: bytes | None = None, wait_s: float | None
    ) -> dict[str, Any]:
        """One request; every failure becomes a ``ClientError`` here and nowhere else."""
        url = f"{self._config.base_url}{path}"
        timeout = httpx.Timeout(_CONNECT_TIMEOUT_S, read=wait_s)
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(
                method, path, content=content, headers=headers, timeout=timeout
            )
        except httpx.ReadTimeout:
            raise NoAnswerError(f"{method} {url} gave no answer within --timeout") from None
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach {url}: {exc or type(exc).__name__}", transient=True
            ) from None
        self._raise_for_status(method, path, response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise ApiError(
                f"{method} {url} did not answer a RunPod job status: {response.text[:200]!r}"
            )
        return body

    def _raise_for_status(self, method: str, path: str, response: httpx.Response) -> None:
        code = response.status_code
        if code < 400:
            return
        config, url = self._config, f"{self._config.base_url}{path}"
        if code == 405 and path.startswith("/status/") and method == "GET":
            raise _MethodNotAllowed(url)
        if code in {401, 403}:
            if config.api_key is None:
                raise ApiError(
                    f"{url} answered {code}: it wants an API key; name its variable with --api-key-env"
                )
            where = "RunPod" if config.endpoint_id else config.base_url
            raise ApiError(f"{where} rejected the API key: check {config.api_key_env}")
        if code == 404 and path.startswith("/status/"):
            raise ApiError(
                f"job {path.removeprefix('/status/')} not found: RunPod keeps a result 30 minutes "
                "after /run finishes (1 minute after /runsync)"
            )
        if code == 404:
            if config.endpoint_id:
                raise ApiError(
                    f"unknown endpoint {config.endpoint_id}: check its id in the RunPod console"
                )
            raise ApiError(
                f"{url} not found: is {config.base_url} a worker started with --rp_serve_api?"
            )
        if code == 413:
            raise ApiError(f"{url} refused the request as too large: pass large images as URLs")
        detail = _clean(response.text.strip()[:300]) or response.reason_phrase
        raise ApiError(
            f"{method} {url} answered {code}: {detail}", transient=code in _RETRYABLE_STATUS
        )


# -- waiting -------------------------------------------------------------------------


class Progress:
    """The job's state on stderr: one rewritten line on a terminal, a line per change otherwise."""

    def __init__(self, tty: bool | None = None) -> None:
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._last = ""
        self._open = False

    def show(self, body: Mapping[str, Any], elapsed_s: float) -> None:
        """Display one status answer."""
        status = str(body.get("status"))
        parts = [f"job {body.get('id', '?')}", status]
        delay = body.get("delayTime")
        if isinstance(delay, int | float):
            parts.append(f"queued {delay / 1000:.1f} s")
        output = body.get("output")
        # While a job runs, RunPod's status carries the worker's last progress_update.
        if status == "IN_PROGRESS" and isinstance(output, str) and output.strip():
            parts.append(_clean(output.strip().splitlines()[0][:_MAX_PROGRESS_CHARS]))
        line = "  ".join(parts)
        if self._tty:
            width = shutil.get_terminal_size().columns - 1
            _say(_CLEAR_LINE + f"{line}  {elapsed_s:.0f} s"[:width], err=True, end="")
            self._open = True
        elif line != self._last:  # a log file gets changes, not one line per poll
            _say(f"{line}  ({elapsed_s:.0f} s)", err=True)
        self._last = line

    def close(self) -> None:
        """Erase the rewritten line, so what follows starts on a clean one."""
        if self._open:
            _say(_CLEAR_LINE, err=True, end="")
            self._open = False


def followup_hint(config: ClientConfig, job_id: str) -> str:
    """How to check on (and cancel) a job the client stopped waiting for; names, never the key."""
    job = quote(job_id, safe="")
    auth = f' -H "Authorization: Bearer ${config.api_key_env}"' if config.api_key else ""
    if not config.endpoint_id:  # the SDK's local server: POST /status, and no /cancel
        return f"check it: curl -X POST{auth} {config.base_url}/status/{job}"
    return (
        f"check it: curl{auth} {config.base_url}/status/{job}\n"
        f"cancel it: curl -X POST{auth} {config.base_url}/cancel/{job}"
    )


def wait_for_job(
    api: RunPodApi,
    first: dict[str, Any],
    config: ClientConfig,
    progress: Progress,
    *,
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the job ends; its final status. ``first`` is /run's (or /runsync's) answer."""
    job_id = first.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(f"{config.base_url} accepted the job but gave no job id: {first!r:.200}")
    started, body, failures, polls = clock(), first, 0, 0
    try:
        while body["status"] not in _TERMINAL:
            progress.show(body, clock() - started)
            remaining = None if deadline is None else deadline - clock()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(
                    f"gave up waiting after --timeout {config.timeout_s:g} s; job {job_id} is still "
                    f"{body['status']} and was not cancelled\n{followup_hint(config, job_id)}"
                )
            # The first poll goes at once: the SDK's local server answers it only when the
            # job ends, and RunPod may already have finished a short one.
            if polls:
                sleep(
                    config.poll_interval_s
                    if remaining is None
                    else min(config.poll_interval_s, remaining)
                )
            polls += 1
            wait_s = None if deadline is None else max(deadline - clock(), 0.001)
            try:
                body = api.status(job_id, wait_s=wait_s)
                failures = 0
            except NoAnswerError:
                continue  # the deadline passed during a blocking poll: reported above
            except ApiError as exc:
                failures += 1
                if not exc.transient or failures > _MAX_POLL_RETRIES:
                    raise
                progress.close()
                _say(f"warning: {exc.message}; retrying ({failures}/{_MAX_POLL_RETRIES})", err=True)
    finally:
        progress.close()
    return body


def describe_failure(body: Mapping[str, Any]) -> str:
    """A FAILED, CANCELLED or TIMED_OUT job in words, with the details the worker gave."""
    job_id, status = body.get("id", "?"), body.get("status")
    if status == "CANCELLED":
        return f"job {job_id} was cancelled"
    if status == "TIMED_OUT":
        return (
            f"RunPod stopped job {job_id} (TIMED_OUT): it ran past the endpoint's execution "
            "timeout (or waited in the queue too long); raise it in the endpoint's settings"
        )
    error = body.get("error")
    text = _clean(error) if isinstance(error, str) and error else "no error message"
    # An exception the handler did not catch reaches RunPod as the SDK's JSON dump.
    with contextlib.suppress(ValueError, TypeError):
        dump = json.loads(text)
        if isinstance(dump, dict) and "error_message" in dump:
            kind = re.sub(r"^<class '(?:.*\.)?(\w+)'>$", r"\1", str(dump.get("error_type", "")))
            text = (
                f"the worker raised {kind}: {dump['error_message']} "
                "(a bug in the worker: the traceback is in its logs)"
            )
    output = body.get("output")
    code = output.get("code") if isinstance(output, Mapping) else None
    return f"job {job_id} FAILED: {text}" + (f" [{code}]" if isinstance(code, str) else "")


# -- saving outputs ------------------------------------------------------------------


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
    if not _is_url(url):
        raise _ItemFailure("its URL is not http(s)")
    shown = _shown_url(url)
    try:
        with downloads.stream("GET", url) as response:
            if response.status_code != 200:
                hint = (
                    " (presigned URLs expire after BUCKET_URL_EXPIRY_S)"
                    if response.status_code == 403
                    else ""
                )
                raise _ItemFailure(f"download from {shown} answered {response.status_code}{hint}")
            return _write(folder, name, lambda: response.iter_bytes(_CHUNK_BYTES), expected)
    except httpx.HTTPError as exc:
        raise _ItemFailure(f"download from {shown} failed: {exc or type(exc).__name__}") from None


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
    body: Mapping[str, Any], config: ClientConfig, downloads: httpx.Client
) -> ExitCode:
    """Save a COMPLETED job's outputs, a line per file; report what the worker could not deliver."""
    output = body.get("output")
    if not isinstance(output, Mapping) or not isinstance(output.get("images"), list):
        raise ApiError(
            f"job {body.get('id')} completed, but its output has no images[]: {output!r:.200}"
        )
    folder = config.out_dir or Path("outputs") / safe_filename(body.get("id"), 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(
            f"job {body.get('id')} completed, but {folder} cannot be created: "
            f"{exc.strerror or exc}; choose another folder with --out"
        ) from None
    saved, problems = 0, []
    for index, item in enumerate(output["images"]):
        try:
            _say(_describe(save_item(item, index, folder, downloads)))
            saved += 1
        except (_ItemFailure, OSError) as exc:
            problems.append(f"could not save {exc}")
    problems += [f"the worker reported: {_clean(line)}" for line in output.get("errors") or []]
    for line in problems:
        _say(f"warning: {line}", err=True)
    _say(f"job {body.get('id')} COMPLETED{_timings(body)}: {saved} file(s) in {folder}", err=True)
    return ExitCode.INCOMPLETE if problems else ExitCode.OK


def _timings(body: Mapping[str, Any]) -> str:
    """RunPod's delayTime (queue + cold start) and executionTime (the handler), in ms."""
    shown = [
        f"{label} {body[key] / 1000:.1f} s"
        for label, key in (("queued", "delayTime"), ("ran", "executionTime"))
        if isinstance(body.get(key), int | float)
    ]
    return f" ({', '.join(shown)})" if shown else ""


# -- entry points --------------------------------------------------------------------


def execute(
    config: ClientConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ExitCode:
    """Submit, wait, save; raises ``ClientError`` for anything that stops the run."""
    body = json.dumps(build_request(config)).encode()
    deadline = None if config.timeout_s is None else clock() + config.timeout_s
    progress = progress or Progress()
    api = RunPodApi(config, transport)
    # Output URLs point at S3, not RunPod: a separate client, so the API key never goes there.
    downloads = httpx.Client(
        transport=transport,
        follow_redirects=True,
        timeout=httpx.Timeout(_CONNECT_TIMEOUT_S, read=_DOWNLOAD_READ_TIMEOUT_S),
    )
    with contextlib.closing(api), downloads:
        if config.sync:  # no job id or progress until /runsync answers
            _say(f"waiting for {config.base_url}/runsync ...", err=True)
        try:
            wait_s = None if deadline is None else deadline - clock()
            first = api.submit(body, sync=config.sync, wait_s=wait_s)
        except NoAnswerError as exc:
            if not config.sync:
                raise
            raise WaitTimeoutError(
                f"/runsync gave no answer within --timeout {config.timeout_s:g} s; the job may "
                "still run, but with no id to check it by: use /run (drop --sync) for long jobs"
            ) from exc
        try:
            final = wait_for_job(
                api, first, config, progress, deadline=deadline, clock=clock, sleep=sleep
            )
        except KeyboardInterrupt:
            raise UserInterrupt(
                f"interrupted; job {first.get('id')} was not cancelled and keeps running\n"
                + followup_hint(config, str(first.get("id")))
            ) from None
        if final["status"] != "COMPLETED":
            raise JobFailedError(describe_failure(final))
        return save_outputs(final, config, downloads)


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """The console script ``comfy-worker-client``; returns the exit code."""
    try:
        config = parse_args(argv, env)
        return int(execute(config, transport=transport))
    except ClientError as exc:
        _say(f"error: {exc.message}", err=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:  # before a job id existed, or while saving outputs
        _say("\ninterrupted", err=True)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
