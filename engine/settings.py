"""The worker's configuration: every environment variable, read once, typed.

Nothing else in the project reads ``os.environ``; ``handler.py`` calls
``Settings.from_env(os.environ)`` once and passes the result down. Each parse
error names the variable and the value it expected.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from engine.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
# The runpod SDK's own names (runpod/serverless/modules/rp_logger.py).
_SDK_LOG_LEVELS = frozenset({"NOTSET", "TRACE", "DEBUG", "INFO", "WARN", "ERROR"})


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _log_level(name: str, raw: str, allowed: frozenset[str] = _LOG_LEVELS) -> str:
    level = raw.strip().upper()
    if level not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(sorted(allowed))}, got {raw!r}")
    return level


_NO_SOCKET = (
    "they configure the WebSocket of workers that drive a ComfyUI server; this worker runs "
    "ComfyUI in-process, with no socket"
)
OTHER_WORKERS_VARIABLES: dict[tuple[str, ...], str] = {
    ("WEBSOCKET_RECONNECT_ATTEMPTS", "WEBSOCKET_RECONNECT_DELAY_S", "WEBSOCKET_TRACE"): (
        _NO_SOCKET
    ),
    ("SERVE_API_LOCALLY",): (
        "this worker serves the runpod SDK's local API when started with "
        "`python handler.py --rp_serve_api --rp_api_host 0.0.0.0 --rp_api_port 8000`"
    ),
    ("NETWORK_VOLUME_DEBUG",): (
        "COMFY_LOG_LEVEL=DEBUG logs every model folder searched, per kind, and a missing "
        "model's error names the folders it was looked for in"
    ),
    ("COMFY_API_AVAILABLE_INTERVAL_MS", "COMFY_API_AVAILABLE_MAX_RETRIES"): (
        "there is no ComfyUI server to wait for: ComfyUI boots in-process before the "
        "worker takes its first job"
    ),
    ("PUBLIC_KEY",): (
        "worker-comfyui starts an SSH server for it; this image runs none. The worker's log "
        "(the endpoint's Logs, COMFY_LOG_LEVEL=DEBUG for every step) names each job's "
        "problem; to look inside the image, run it on a GPU pod or locally"
    ),
}
"""runpod-workers/worker-comfyui's variables that mean nothing here, each group with what
this worker does instead. Accepted with any value, so deployments made for it start
unchanged, and never parsed: a value there fails no job; one boot line per group says so."""


def _sdk_log_level(raw: str | None) -> str:
    return _log_level("RUNPOD_LOG_LEVEL", raw or "INFO", _SDK_LOG_LEVELS)


def sdk_log_level(env: Mapping[str, str]) -> str:
    """``RUNPOD_LOG_LEVEL`` as the runpod SDK names levels; ``INFO`` when unset or unusable.

    ``handler.py`` gives the SDK this level before importing it, before anything else can
    fail: the SDK reads the variable at import, logs at DEBUG without it (a local test
    job whole, its keys included) and raises on a name it does not know. A bad value is
    still named, by :meth:`Settings.from_env`, in the error every job then gets.
    """
    try:
        return _sdk_log_level((env.get("RUNPOD_LOG_LEVEL") or "").strip() or None)
    except ConfigError:
        return "INFO"


SECRET_VARIABLES = (
    "COMFY_ORG_API_KEY",
    "BUCKET_ACCESS_KEY_ID",
    "BUCKET_SECRET_ACCESS_KEY",
    "HF_TOKEN",
    "CIVITAI_TOKEN",
)
"""The variables whose values never reach a log line (:meth:`Settings.secrets`)."""


def secrets_in_env(env: Mapping[str, str]) -> list[str]:
    """The secret variables' values, read without parsing anything else: registered for
    redaction before the settings are built, so that even a worker whose settings are
    unusable never logs one."""
    return [value.strip() for name in SECRET_VARIABLES if (value := env.get(name, "")).strip()]


IGNORED_VARIABLES = tuple(name for group in OTHER_WORKERS_VARIABLES for name in group)


def _split_args(name: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"{name} could not be split into flags ({exc}): got {raw!r}") from None


def _parse_number(kind: Callable[[str], T], name: str, raw: str, *, minimum: float) -> T:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:  # type: ignore[operator]
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class BucketSettings:
    """Where outputs go when S3 delivery is configured."""

    endpoint_url: str
    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    region: str
    url_expiry_s: int
    public_url: str | None
    """When set, items get ``<public_url>/<key>`` instead of a presigned URL."""
    upload_timeout_s: float = 120.0
    """``UPLOAD_TIMEOUT_S``: one job's whole delivery, every retry included. 120 s moves a
    1 GB video over a 100 Mbit/s uplink (about 85 s) and still frees the worker in two
    minutes when the endpoint is dead or stuck (before this bound, one stuck endpoint
    held it 245 s: a 60 s read timeout, tried 3 times, plus connects)."""
    upload_stall_s: float = 30.0
    """``UPLOAD_STALL_S``: an upload request that moves no byte (sent or answered) for
    this long has stalled: an endpoint that accepts connections and never answers. It
    fails at once, without a retry, instead of holding the job for ``UPLOAD_TIMEOUT_S``;
    an upload that keeps moving runs on to that limit. 30 s: S3 answers a stored part in
    well under a second, and answers a long CompleteMultipartUpload with its headers
    first."""


def _split_bucket_url(url: str, bucket_override: str | None) -> tuple[str, str]:
    """Split ``BUCKET_ENDPOINT_URL`` into (S3 endpoint, bucket name).

    Accepts path style (``https://s3.example.com/my-bucket``) and virtual-hosted
    style (``https://my-bucket.s3.us-east-1.amazonaws.com``), as RunPod's own
    upload helper does; ``BUCKET_NAME`` overrides the guess.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"BUCKET_ENDPOINT_URL must be an http(s) URL, got {url!r}")
    path = parts.path.strip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    if bucket_override:
        return (origin if path else url.rstrip("/")), bucket_override
    if path:
        return origin, path.split("/", 1)[0]
    host = parts.hostname or ""
    labels = host.split(".")
    if len(labels) > 2 and labels[1].startswith("s3"):
        return f"{parts.scheme}://{'.'.join(labels[1:])}" + (
            f":{parts.port}" if parts.port else ""
        ), labels[0]
    raise ConfigError(
        "BUCKET_ENDPOINT_URL must name the bucket (https://host/bucket or "
        f"https://bucket.s3.region.amazonaws.com), or set BUCKET_NAME; got {url!r}"
    )


# S3 hosts that name their region: AWS (s3.<region>., s3-<region>., s3.dualstack.<region>.),
# Backblaze B2 and Wasabi. A request signed for another region is refused there, and a
# presigned URL signed for one does not open.
_REGION_IN_HOST = re.compile(
    r"s3[.-](?:dualstack\.)?([a-z]{2}(?:-[a-z]+)+-[0-9]+)\."
    r"(?:amazonaws\.com(?:\.cn)?|backblazeb2\.com|wasabisys\.com)"
)


def _region_of(endpoint_url: str) -> str:
    """The region an S3 endpoint's host names (``s3.eu-west-1.amazonaws.com``), as
    RunPod's ``rp_upload`` (worker-comfyui's uploader) reads it; else ``us-east-1``."""
    match = _REGION_IN_HOST.fullmatch(urlsplit(endpoint_url).hostname or "")
    return match.group(1) if match else "us-east-1"


@dataclass(frozen=True)
class Settings:
    """All of the worker's settings; build with :meth:`from_env`."""

    comfy_org_api_key: str | None = field(default=None, repr=False)
    bucket: BucketSettings | None = None
    comfy_log_level: str = "DEBUG"
    comfyui_path: Path | None = None
    work_dir: Path = Path("/tmp/comfy-worker")
    extra_model_paths: Path | None = None
    # Inputs: the guide asks for < 10 MB per image; 50 MB leaves room for PNG masks.
    input_max_image_bytes: int = 50 * 1024 * 1024
    input_download_timeout_s: float = 30.0
    input_max_redirects: int = 5
    input_max_images: int = 64
    input_max_pixels: int = 8192 * 8192
    # Outputs the worker itself decodes (convert_output, frames_to_video): a 4x upscale
    # of a 4096x4096 image is 16384x16384, 1 GiB as RGBA once decoded.
    output_max_pixels: int = 16384 * 16384
    input_allow_private_urls: bool = False
    allow_path_nodes: bool = False
    """``ALLOW_PATH_NODES``: run pack nodes that open raw paths or URLs (engine/path_nodes.py),
    for an endpoint whose callers may see each other's files and the worker's network."""
    input_max_video_pixels: int = 1 << 30
    """``INPUT_MAX_VIDEO_PIXELS``: an input video's frames times their pixels, all together
    (the loaders decode every frame, 12 bytes a pixel: 2^30 is 12 GiB, 517 frames of
    1080p, 2,688 of 832x480)."""
    input_max_audio_samples: int = 1 << 29
    """``INPUT_MAX_AUDIO_SAMPLES``: an input file's audio samples, all channels together
    (LoadAudio decodes them whole, 4 bytes a sample: 2^29 is 2 GiB, 93 minutes of 48 kHz
    stereo)."""
    input_max_frames: int = 200_000
    """``INPUT_MAX_FRAMES``: the most packets (video frames, audio blocks) an input video or
    audio file may hold; the check reads each one, so this bounds its time: 200,000
    frames is 55 minutes at 60 fps, read in a few seconds (docs/reference.md)."""
    download_stall_s: float = 30.0
    """``DOWNLOAD_STALL_S``: a download (input file or model file by URL) that receives no
    byte for this long fails. Under ``JOB_STOP_GRACE_S``, so that a server that answers
    nothing never keeps a job past its grace."""
    download_min_kb_per_s: float = 32.0
    """``DOWNLOAD_MIN_KB_PER_S``: a download slower than this over a whole
    ``DOWNLOAD_RATE_WINDOW_S`` fails (0: no minimum). 32 KB/s takes a 10 MB image in 5
    minutes: anything slower is a server dripping bytes, not a slow link."""
    download_rate_window_s: float = 30.0
    """``DOWNLOAD_RATE_WINDOW_S``: the window the minimum rate is measured over."""
    # RunPod refuses /runsync results over 20 MB (/run inputs over 10 MB); users see a
    # bare "Failed to return job results" at 19.5 MB, so refuse 10% below the cap.
    response_limit_bytes: int = 20 * 1024 * 1024
    response_margin: float = 0.10
    # A bound for every job, so that nothing, not even a stuck thread, holds the worker
    # for ever: an hour covers a long Wan 2.2 video on one GPU. JOB_TIMEOUT_S=0: none.
    job_timeout_s: float | None = 3600.0
    # After the limit, how long a job may take to unwind once ComfyUI is interrupted (a
    # node that never checks the flag, a VAE decode, runs to its end) before the worker
    # gives up on it and asks RunPod for a fresh worker.
    job_stop_grace_s: float = 60.0
    # Jobs held at once: one runs in ComfyUI while the other's inputs download and its
    # outputs are encoded and delivered (engine/pipeline.py). 1: one job at a time.
    max_concurrent_jobs: int = 2
    warmup_workflow: Path | None = None
    runtime_factory: str = "engine.runtime.comfy:ComfyRuntime"
    cache_type: str | None = None
    """``COMFY_CACHE_TYPE``: classic, lru or none; ``None`` when unset (classic, unless
    ``COMFY_ARGS`` names one of ComfyUI's cache flags)."""
    comfy_args: tuple[str, ...] = ()
    """``COMFY_ARGS``, split as a shell would: ComfyUI's own flags, parsed at boot by the
    pinned ComfyUI's parser (engine/runtime/comfy_args.py)."""
    workflow_max_string_bytes: int = 1024 * 1024
    """``WORKFLOW_MAX_STRING_BYTES``: the longest text value a workflow may hold. ComfyUI
    copies the prompt into every output's metadata: a 50 MB string became a 66 MB PNG."""
    workflow_max_nodes: int = 10_000
    """``WORKFLOW_MAX_NODES``: the most nodes a workflow may have, a UI-format one counted
    with its subgraphs expanded (counted before any is). The largest official template
    (comfyui-workflow-templates 0.1.95) counts 74 nodes so; a 3 KB request of subgraphs
    nested 7 deep, 8 instances each, stands for 2,097,152."""
    png_encoder: str = "fast"
    """``PNG_ENCODER``: how SaveImage and PreviewImage write PNGs. ``fast``: the Up filter
    and ISA-L's deflate (engine/png_writer.py), same pixels and metadata as ComfyUI's
    files, 15x less CPU, files a few percent larger; ``pillow``: ComfyUI's own bytes."""
    output_base64: str = "data-uri"
    """``OUTPUT_BASE64``: the form of a base64 item's ``data``. ``data-uri``: the contract's
    ``data:<mime>;base64,<payload>``; ``bare``: the payload alone, as worker-comfyui 5.x
    returns it, so its callers' ``b64decode(item["data"])`` keeps working."""
    output_metadata: bool = True
    """``OUTPUT_METADATA``: false leaves the workflow out of output files' metadata
    (ComfyUI's ``--disable-metadata``)."""
    lazy_packs: bool = True
    """``LAZY_PACKS``: custom node packs whose import patches nothing load when a job
    first names one of their node types (engine/runtime/lazy_nodes.py); false loads
    every pack at boot, as ComfyUI does."""
    comfy_patches_off: frozenset[str] = frozenset()
    """``COMFY_PATCHES_OFF``: names of the worker's patches to ComfyUI not to apply
    (``engine.runtime.patches``; boot refuses a name it does not know)."""
    ignored_variables: tuple[str, ...] = ()
    """Variables of worker-comfyui that are set here and have no effect
    (:data:`OTHER_WORKERS_VARIABLES`); the worker says what instead, once at boot."""
    refresh_worker: bool = False
    """``REFRESH_WORKER`` (worker-comfyui's): every answer asks RunPod for a fresh worker."""
    sdk_log_level: str = "INFO"
    """The runpod SDK's own log level. Its DEBUG default prints every handler result
    whole: up to 20 MB of base64, and the S3 URLs, per job."""
    on_runpod: bool = False
    """Running under RunPod's job queue (not the SDK's local API server): send progress."""
    # Model files by URL (engine.model_urls). The cache counts only files it downloaded;
    # 100 GB holds a Flux dev set (about 34 GB) beside a Wan 2.2 14B fp16 pair (57 GB).
    model_cache_max_bytes: int = 100 * 1024**3
    # The largest single file: Wan 2.2 14B fp16 is 28.6 GB, the largest in ComfyUI's templates.
    model_max_file_bytes: int = 50 * 1024**3
    model_prefetch_max_bytes: int = 16 * 1024**3
    """``MODEL_PREFETCH_MAX_GB``: the most of a waiting job's model files read ahead into
    the page cache while another job runs (engine.model_prefetch); 0: none. 16 GB holds
    an SDXL checkpoint (6.5 GB) with its LoRAs and VAE, or a Flux fp8 set."""
    hf_token: str | None = field(default=None, repr=False)
    """``HF_TOKEN``: sent to huggingface.co and hf.co over https, nowhere else."""
    civitai_token: str | None = field(default=None, repr=False)
    """``CIVITAI_TOKEN``: sent to civitai.com over https, nowhere else."""

    @property
    def pillow_max_pixels(self) -> int:
        """Pillow's process-wide guard (``Image.MAX_IMAGE_PIXELS``): the larger limit.

        It guards every decode in the process, inputs and outputs alike; each of the
        worker's own checks compares with its own limit (``INPUT_MAX_PIXELS`` for what a
        request sends, ``OUTPUT_MAX_PIXELS`` for what a workflow made), so neither limit
        refuses what the other allows.
        """
        return max(self.input_max_pixels, self.output_max_pixels)

    @property
    def response_budget_bytes(self) -> int:
        """The largest response the worker will return: the cap less its margin."""
        return int(self.response_limit_bytes * (1.0 - self.response_margin))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from an environment mapping (``os.environ`` by default).

        Every unusable value is named at once: one :class:`ConfigError` with a detail
        line per variable, so a deployment is fixed in one round.
        """
        env = os.environ if env is None else env
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value is not None and value.strip() != "" else None

        def checked(parse: Callable[[], T], fallback: T) -> T:
            try:
                return parse()
            except ConfigError as exc:
                problems.append(exc.message)
                return fallback

        def number(kind: Callable[[str], T], name: str, default: T, minimum: float) -> T:
            raw = get(name)
            if raw is None:
                return default
            return checked(lambda: _parse_number(kind, name, raw, minimum=minimum), default)

        def boolean(name: str, default: bool) -> bool:
            raw = get(name)
            return default if raw is None else checked(lambda: _parse_bool(name, raw), default)

        def path(name: str) -> Path | None:
            raw = get(name)
            return Path(raw).expanduser() if raw else None

        log_level = checked(
            lambda: _log_level("COMFY_LOG_LEVEL", get("COMFY_LOG_LEVEL") or "DEBUG"), "DEBUG"
        )
        png_encoder = (get("PNG_ENCODER") or cls.png_encoder).lower()
        if png_encoder not in {"fast", "pillow"}:
            problems.append(f"PNG_ENCODER must be fast or pillow, got {png_encoder!r}")
            png_encoder = cls.png_encoder
        output_base64 = (get("OUTPUT_BASE64") or cls.output_base64).lower()
        if output_base64 not in {"data-uri", "bare"}:
            problems.append(f"OUTPUT_BASE64 must be data-uri or bare, got {output_base64!r}")
            output_base64 = cls.output_base64
        cache_type = (get("COMFY_CACHE_TYPE") or "").lower() or None
        if cache_type not in {None, "classic", "lru", "none"}:
            problems.append(f"COMFY_CACHE_TYPE must be classic, lru or none, got {cache_type!r}")
            cache_type = None
        no_args: tuple[str, ...] = ()
        comfy_args = checked(lambda: _split_args("COMFY_ARGS", get("COMFY_ARGS") or ""), no_args)

        job_timeout = number(float, "JOB_TIMEOUT_S", cls.job_timeout_s or 0.0, 0)
        # Read even without a bucket, so a bad value is caught before S3 is switched on.
        upload_timeout = number(float, "UPLOAD_TIMEOUT_S", BucketSettings.upload_timeout_s, 0.1)
        upload_stall = number(float, "UPLOAD_STALL_S", BucketSettings.upload_stall_s, 0.1)
        bucket = checked(lambda: _bucket_from_env(get, upload_timeout, upload_stall), None)
        mb = 1024 * 1024
        gb = 1024 * mb
        settings = cls(
            comfy_org_api_key=get("COMFY_ORG_API_KEY"),
            bucket=bucket,
            comfy_log_level=log_level,
            comfyui_path=path("COMFYUI_PATH"),
            work_dir=path("WORKER_DIR") or cls.work_dir,
            extra_model_paths=path("EXTRA_MODEL_PATHS"),
            input_max_image_bytes=int(number(float, "INPUT_MAX_IMAGE_MB", 50.0, 0.001) * mb),
            input_download_timeout_s=number(float, "INPUT_DOWNLOAD_TIMEOUT_S", 30.0, 0.1),
            input_max_redirects=number(int, "INPUT_MAX_REDIRECTS", 5, 0),
            input_max_images=number(int, "INPUT_MAX_IMAGES", 64, 1),
            input_max_pixels=number(int, "INPUT_MAX_PIXELS", 8192 * 8192, 1),
            output_max_pixels=number(int, "OUTPUT_MAX_PIXELS", cls.output_max_pixels, 1),
            input_allow_private_urls=boolean("INPUT_ALLOW_PRIVATE_URLS", False),
            allow_path_nodes=boolean("ALLOW_PATH_NODES", False),
            input_max_frames=number(int, "INPUT_MAX_FRAMES", cls.input_max_frames, 1),
            input_max_audio_samples=number(
                int, "INPUT_MAX_AUDIO_SAMPLES", cls.input_max_audio_samples, 1
            ),
            input_max_video_pixels=number(
                int, "INPUT_MAX_VIDEO_PIXELS", cls.input_max_video_pixels, 1
            ),
            download_stall_s=number(float, "DOWNLOAD_STALL_S", cls.download_stall_s, 0.1),
            download_min_kb_per_s=number(
                float, "DOWNLOAD_MIN_KB_PER_S", cls.download_min_kb_per_s, 0
            ),
            download_rate_window_s=number(
                float, "DOWNLOAD_RATE_WINDOW_S", cls.download_rate_window_s, 0.1
            ),
            response_limit_bytes=int(number(float, "RESPONSE_LIMIT_MB", 20.0, 0.001) * mb),
            job_timeout_s=job_timeout or None,
            job_stop_grace_s=number(float, "JOB_STOP_GRACE_S", cls.job_stop_grace_s, 0),
            max_concurrent_jobs=number(int, "MAX_CONCURRENT_JOBS", cls.max_concurrent_jobs, 1),
            warmup_workflow=path("WARMUP_WORKFLOW"),
            runtime_factory=get("WORKER_RUNTIME") or cls.runtime_factory,
            cache_type=cache_type,
            comfy_args=comfy_args,
            workflow_max_string_bytes=number(
                int, "WORKFLOW_MAX_STRING_BYTES", cls.workflow_max_string_bytes, 1
            ),
            workflow_max_nodes=number(int, "WORKFLOW_MAX_NODES", cls.workflow_max_nodes, 1),
            png_encoder=png_encoder,
            output_base64=output_base64,
            output_metadata=boolean("OUTPUT_METADATA", True),
            lazy_packs=boolean("LAZY_PACKS", True),
            comfy_patches_off=frozenset(
                n.strip().lower() for n in (get("COMFY_PATCHES_OFF") or "").split(",") if n.strip()
            ),
            ignored_variables=tuple(n for n in IGNORED_VARIABLES if env.get(n) is not None),
            refresh_worker=boolean("REFRESH_WORKER", False),
            sdk_log_level=checked(lambda: _sdk_log_level(get("RUNPOD_LOG_LEVEL")), "INFO"),
            # RunPod sets this on its workers; progress goes to it as an HTTP POST.
            on_runpod=get("RUNPOD_WEBHOOK_POST_OUTPUT") is not None,
            model_cache_max_bytes=int(number(float, "MODEL_CACHE_MAX_GB", 100.0, 0.001) * gb),
            model_max_file_bytes=int(number(float, "MODEL_MAX_FILE_GB", 50.0, 0.001) * gb),
            model_prefetch_max_bytes=int(number(float, "MODEL_PREFETCH_MAX_GB", 16.0, 0) * gb),
            hf_token=get("HF_TOKEN"),
            civitai_token=get("CIVITAI_TOKEN"),
        )
        if len(problems) == 1:
            raise ConfigError(problems[0], problems)
        if problems:
            raise ConfigError(
                f"{len(problems)} environment variables have unusable values", problems
            )
        return settings

    def boot_warnings(self) -> list[str]:
        """Lines to log once at boot: settings that are accepted but do nothing here, each
        with what this worker does instead."""
        lines = []
        for group, instead in OTHER_WORKERS_VARIABLES.items():
            named = [n for n in group if n in self.ignored_variables]
            if named:
                verb = "is set but has" if len(named) == 1 else "are set but have"
                lines.append(f"{', '.join(named)} {verb} no effect here: {instead}")
        return lines

    def secrets(self) -> list[str]:
        """Values that must never appear in a log line."""
        return [*self.response_secrets(), *([self.bucket.access_key_id] if self.bucket else [])]

    def response_secrets(self) -> list[str]:
        """Values that must never appear in a response.

        The S3 access key id is not among them: it is an identifier, and every
        presigned URL carries it (``X-Amz-Credential``); the secret key never is.
        """
        values = [
            self.comfy_org_api_key,
            self.bucket.secret_access_key if self.bucket else None,
            self.hf_token,
            self.civitai_token,
        ]
        return [v for v in values if v]


def _bucket_from_env(
    get: Callable[[str], str | None], upload_timeout_s: float, upload_stall_s: float
) -> BucketSettings | None:
    endpoint = get("BUCKET_ENDPOINT_URL")
    if endpoint is None:
        return None
    key_id, secret = get("BUCKET_ACCESS_KEY_ID"), get("BUCKET_SECRET_ACCESS_KEY")
    missing = [
        n
        for n, v in (("BUCKET_ACCESS_KEY_ID", key_id), ("BUCKET_SECRET_ACCESS_KEY", secret))
        if not v
    ]
    if missing:
        raise ConfigError(
            f"BUCKET_ENDPOINT_URL is set but {' and '.join(missing)} is not: set both keys, "
            "or unset BUCKET_ENDPOINT_URL to return outputs as base64"
        )
    endpoint_url, bucket = _split_bucket_url(endpoint, get("BUCKET_NAME"))
    expiry_raw = get("BUCKET_URL_EXPIRY_S")
    # SigV4 presigned URLs live at most 7 days.
    expiry = (
        3600
        if expiry_raw is None
        else _parse_number(int, "BUCKET_URL_EXPIRY_S", expiry_raw, minimum=1)
    )
    if expiry > 604800:
        raise ConfigError(f"BUCKET_URL_EXPIRY_S must be at most 604800 (7 days), got {expiry}")
    return BucketSettings(
        endpoint_url=endpoint_url,
        bucket=bucket,
        access_key_id=key_id or "",
        secret_access_key=secret or "",
        region=get("BUCKET_REGION") or _region_of(endpoint_url),
        url_expiry_s=expiry,
        public_url=(get("BUCKET_PUBLIC_URL") or "").rstrip("/") or None,
        upload_timeout_s=upload_timeout_s,
        upload_stall_s=upload_stall_s,
    )
