"""The command line: ``--help``, argument parsing, and the ClientConfig one run needs."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from comfy_worker_client.errors import UsageError
from comfy_worker_client.text import is_url

RUNPOD_API = "https://api.runpod.ai/v2"

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ImageSpec:
    """One ``--image``: the name the workflow's LoadImage uses, and a file path or URL."""

    name: str
    source: str


# A local worker boots ComfyUI before it listens: 17-32 s measured for the README's
# example (issue 12), more with custom node packs. RunPod's API is up or it is not.
DEFAULT_WAIT_START_S = 180.0


@dataclass(frozen=True)
class ClientConfig:
    """Everything one run of the CLI needs; built by :func:`parse_args`."""

    workflow: Path | None
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
    job_id: str | None = None
    """``--job``: fetch this existing job's result instead of submitting one."""
    wait_start_s: float = 0.0
    """How long a refused connection counts as a worker still booting (``--wait-start``)."""
    cancel_on_interrupt: bool = False
    json_output: bool = False


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
  130  interrupted (Ctrl-C); the job was not cancelled unless --cancel-on-interrupt

The first argument is a workflow (API format, or the UI format the worker converts) or a
whole request file, {"input": {...}} (test_input.json is one); --image and the other
options add to the request's input.

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
    parser.add_argument(
        "workflow",
        type=Path,
        nargs="?",
        help='a workflow JSON (Workflow -> Export (API)) or a request file {"input": {...}}',
    )
    parser.add_argument(
        "--job",
        metavar="ID",
        help="fetch (wait for, save) the result of a job submitted earlier instead of a new one",
    )
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
        "--wait-start",
        type=float,
        metavar="S",
        help="with --url, retry a refused connection for up to S seconds while the worker "
        f"boots (default {DEFAULT_WAIT_START_S:g}; 0: fail at once)",
    )
    parser.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="on Ctrl-C, cancel the job (POST /cancel/<id>) instead of leaving it running",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (job id, status, saved files, errors) on stdout at the end",
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
    if (args.workflow is None) == (args.job is None):
        raise UsageError("give a workflow or request file, or --job ID to fetch a job's result")
    if args.job is not None and (args.image or args.frames_to_video or args.sync):
        raise UsageError(
            "--job fetches an existing job: --image, --frames-to-video, --sync do not apply"
        )
    if args.wait_start is not None and args.wait_start < 0:
        raise UsageError("--wait-start must be >= 0")
    if args.wait_start and args.endpoint is not None:
        raise UsageError("--wait-start is for a local worker (--url); RunPod queues jobs itself")
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
        job_id=args.job,
        wait_start_s=(
            0.0
            if args.endpoint is not None
            else DEFAULT_WAIT_START_S
            if args.wait_start is None
            else args.wait_start
        ),
        cancel_on_interrupt=args.cancel_on_interrupt,
        json_output=args.json,
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


def parse_image_arg(text: str) -> ImageSpec:
    """``NAME=PATH_OR_URL`` or ``PATH_OR_URL`` (named after its basename)."""
    # A URL's query or a file's own name may hold '=': those are taken whole.
    if is_url(text) or Path(text).is_file() or "=" not in text:
        name, source = "", text
    else:
        name, _, source = text.partition("=")
    if not source:
        raise UsageError(f"--image {text!r}: nothing after '='; use NAME=PATH or NAME=URL")
    if not name:
        path = unquote(urlsplit(source).path) if is_url(source) else source
        name = PurePosixPath(path.replace("\\", "/")).name
    if not name:
        raise UsageError(f"--image {text!r}: cannot tell the image's name; use NAME={source}")
    return ImageSpec(name=name, source=source)
