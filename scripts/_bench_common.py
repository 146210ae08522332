"""Shared by the benchmark scripts: the jobs, ComfyUI as a server, the peer's handler, stats.

Nothing here imports the worker, torch or ComfyUI: ``bench_cold_start.py`` times
those imports in a child process and must not pay for them in the parent.

Two ways to stand for runpod-workers/worker-comfyui:

**The real peer** (``--peer DIR``, a checkout of worker-comfyui the user fetched;
measured against d2a5572): its own ``handler.py``, unchanged, behind the runpod SDK's
local API server, beside ComfyUI's ``main.py`` started with its ``src/start.sh``'s
flags (:class:`PeerSide`). Our worker runs the same way: ``handler.py --rp_serve_api``.
One HTTP client sends both the same ``POST /runsync``.

**The emulation** (``--emulate``, how rounds 1-2 measured): our own code written to
behave as worker-comfyui does (read at its commit d2a5572, 2026-03-20; none of theirs
is copied), while the worker runs in the benchmark's own process: its ``start.sh`` starts ``main.py --disable-auto-launch
--disable-metadata --listen`` in the background and its ``handler.py`` beside it;
per job the handler polls ``GET /`` every 50 ms until the server answers, uploads
each input image with ``POST /upload/image``, opens a WebSocket
``/ws?clientId=``, ``POST /prompt``, reads messages until ``executing`` with
``node: null`` for that prompt, ``GET /history/<id>``, then ``GET /view`` and
base64 for each output image. HTTP goes through ``requests`` without a session (a
new connection per request), as theirs does; the WebSocket through the
``websockets`` package (theirs uses ``websocket-client``, which the image's
environment does not hold). It takes the same job input as the in-process worker
(a workflow and base64 images) and returns the same thing (each output as a base64
data URI), so both sides do the same work. It differs from the real handler: a
different WebSocket client, no runpod SDK in the job's path, and the worker timed
without HTTP; in round 3 the real handler took 24.5 ms for a 64x64 job where the
emulation took 46 ms, so emulation ratios overstate the worker's lead.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Workflow = dict[str, Any]
JobInput = dict[str, Any]

# ComfyUI's server answers its first request ~5 s after start on 2 CPU cores; a
# machine that is ten times slower still fits.
SERVER_START_TIMEOUT_S = 120.0
# How often the cold-start probe asks the booting server; a refused connection costs
# ~0.1 ms, so this adds no load worth counting and bounds the error at 10 ms.
POLL_INTERVAL_S = 0.01
# One job of the benchmarks takes at most a few seconds on a CPU.
JOB_TIMEOUT_S = 300.0


# -- setup ------------------------------------------------------------------------------


BUNDLED_CHECKOUT = Path(__file__).resolve().parents[1] / "comfyui" / "ComfyUI"
"""Where ``scripts/setup.sh --with-comfyui`` installs the pinned ComfyUI (the runtime's fallback)."""


SLEEP_NODE = '''
import time
import comfy.model_management


class BenchSleep:
    """Sleeps holding no lock, as a GPU kernel keeps the engine busy and the CPU free."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 0.5})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never served from the cache

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "bench"

    def run(self, image, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        return (image,)


NODE_CLASS_MAPPINGS = {"BenchSleep": BenchSleep}
'''
"""A custom node, ``BenchSleep``: it holds the engine for ``seconds``, sleeping with no lock
(as a GPU kernel keeps the engine busy and leaves the CPU free), interruptible, never
cached; written into a temporary ``custom_nodes`` folder by the benchmarks that need it."""


def sleep_node_paths(work: Path, **folders: Path) -> Path:
    """A ``custom_nodes`` folder under ``work`` holding ``BenchSleep`` (:data:`SLEEP_NODE`),
    and an ``extra_model_paths`` yaml naming it and ``folders`` (model folder name -> path,
    each made): the yaml's path, for ``EXTRA_MODEL_PATHS``."""
    nodes = work / "custom_nodes"
    (nodes / "bench_sleep").mkdir(parents=True)
    (nodes / "bench_sleep" / "__init__.py").write_text(SLEEP_NODE)
    lines = ["bench:", f"  custom_nodes: {nodes}"]
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        lines.append(f"  {name}: {folder}")
    yaml = work / "extra_model_paths.yaml"
    yaml.write_text("\n".join(lines) + "\n")
    return yaml


def comfyui_checkout(value: str | None) -> Path:
    """The checkout ``--comfyui`` or ``COMFYUI_PATH`` names, else setup.sh's; exits if none."""
    if not value:
        if (BUNDLED_CHECKOUT / "main.py").is_file():
            return BUNDLED_CHECKOUT
        sys.exit(
            "error: no ComfyUI checkout: set COMFYUI_PATH or pass --comfyui (the folder "
            "holding main.py and execution.py), or run scripts/setup.sh --with-comfyui to "
            "install the pinned one into comfyui/ComfyUI"
        )
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "execution.py").is_file():
        sys.exit(f"error: {path} is not a ComfyUI checkout (no main.py and execution.py there)")
    return path


def comfyui_version(checkout: Path) -> str:
    """ComfyUI's version from its ``comfyui_version.py``, read without importing it."""
    try:
        text = (checkout / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return match.group(1) if match else "unknown"


def cpu_model() -> str:
    """The CPU's model name, as the OS reports it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1-minute load average: how busy the machine was besides the benchmark."""
    with contextlib.suppress(OSError, AttributeError):
        return f"{os.getloadavg()[0]:.2f}"
    return "unknown"


def machine_lines(checkout: Path, torch_version: str, device: str, load_before: str) -> list[str]:
    """The machine a table was measured on, one fact per line."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text(encoding="utf-8").split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    return [
        f"CPU: {cpu_model()}, {cores} cores available{mem}",
        f"device: {device}",
        f"OS: {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"torch {torch_version}, ComfyUI {comfyui_version(checkout)}",
        f"1-minute load average: {load_before} before the benchmark, {load_average()} after",
    ]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, and maybe not a moment later: another
    process may bind it before the server this is for does. Only for ComfyUI's
    ``main.py``, which must be told its port (:class:`ComfyServer` says how that race is
    caught); a server that can bind port 0 and say which it got does that instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PORT_ATTEMPTS = 3
"""Starts of ComfyUI's server on a freshly picked port before giving up: a taken port is
a rare race with another process on the machine, twice in a row rarer still."""


class PortTaken(RuntimeError):
    """Another process bound the port picked for ComfyUI's server before it did: start
    again on another port (:data:`PORT_ATTEMPTS`)."""


def _start_bound(
    start: Callable[[], object], server: ComfyServer, stop: Callable[[], None], what: str
) -> None:
    """``start()`` until ``server`` holds its port, ``stop()`` between the tries (the
    ``start_bound`` of :class:`ComfyServer` and :class:`PeerSide`)."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        start()
        try:
            server.wait_bound()
            return
        except PortTaken as exc:
            stop()
            if attempt == PORT_ATTEMPTS:
                raise
            print(f"{exc}: starting {what} again on another port", file=sys.stderr)


class LogTail:
    """The lines a child process appends to its log file, read as they come.

    Each call reads only what is new since the last, so polling every 10 ms while a
    worker boots costs an ``open`` and a small ``read``, not its whole log again (the
    boot being timed shares 2 cores with this poll).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        """The complete lines written since the last call (none while the file is absent)."""
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines]


UVICORN_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+) ")
"""uvicorn's line once the runpod SDK's local API server listens (at log level info),
with the port it bound: the port the benchmark then talks to. tests/e2e/conftest.py
reads the same line for the e2e harness's workers; scripts/ does not import tests/ (it
runs from a checkout without them), and one regex is not worth a module both import."""


def listening_port(line: str) -> int | None:
    """The port in uvicorn's "running on" line (:data:`UVICORN_LISTENING`); else None."""
    found = UVICORN_LISTENING.search(line)
    return int(found[1]) if found else None


@contextlib.contextmanager
def temp_root(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed on exit, on Ctrl-C and on SIGTERM."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        del signum, frame
        raise SystemExit(143)  # unwinds through the finally blocks below

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield root
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(root, ignore_errors=True)


def run_child(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    prefix: str,
    timeout_s: float,
    what: str,
) -> tuple[dict[str, Any], float]:
    """Start a benchmark child; its last ``prefix`` line as JSON, and when it was spawned.

    The child's stderr goes to ``log_path`` (its tail is in the error when it fails); a
    child still running at ``timeout_s`` is killed with its process group.
    """
    with log_path.open("w", encoding="utf-8") as log:
        spawned_at = time.time()
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    if process.returncode != 0 or not lines:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{what} failed (exit {process.returncode}):\n{tail}")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix(prefix))
    return report, spawned_at


def report_footer(machine: Sequence[str]) -> list[str]:
    """The closing lines of a report: the machine it ran on and the command that made it."""
    return [
        "Machine:",
        "",
        *(f"- {line}" for line in machine),
        "",
        "Command:",
        "",
        f"    {command_line()}",
    ]


def command_line() -> str:
    """How this script was started, with the checkout and the packs folder as placeholders."""
    args = list(sys.argv[1:])
    for i, arg in enumerate(args):
        for option, placeholder in (
            ("--comfyui", "<checkout>"),
            ("--packs", "<packs>"),
            ("--peer", "<worker-comfyui>"),
            ("--peer-site", "<peer-site>"),
        ):
            if i > 0 and args[i - 1] == option:
                args[i] = placeholder
            elif arg.startswith(f"{option}="):
                args[i] = f"{option}={placeholder}"
    script = Path(sys.argv[0])
    script_arg = f"scripts/{script.name}" if script.parent.name == "scripts" else str(script)
    return " ".join(["COMFYUI_PATH=<checkout>", "python", script_arg, *args])


# -- the jobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    """One benchmark job: an input image through ImageInvert to SaveImage."""

    key: str
    label: str
    input_size: int
    batch: int = 1
    """Images in the output: RepeatImageBatch makes a batch of the loaded image."""

    def image_name(self) -> str:
        """The file name the workflow's LoadImage reads (one per kind, replaced per run)."""
        return f"bench-{self.key}.png"

    def workflow(self, prefix: str) -> Workflow:
        """LoadImage -> [RepeatImageBatch] -> ImageInvert -> SaveImage."""
        wf: Workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": self.image_name()}}}
        source = ["1", 0]
        if self.batch > 1:
            wf["2"] = {
                "class_type": "RepeatImageBatch",
                "inputs": {"image": ["1", 0], "amount": self.batch},
            }
            source = ["2", 0]
        wf["3"] = {"class_type": "ImageInvert", "inputs": {"image": source}}
        wf["4"] = {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": prefix},
        }
        return wf

    def input_png(self, seed: int) -> bytes:
        """A photo-like PNG (gradients and mild noise) that differs for every ``seed``.

        A new image per run changes LoadImage's cache key (a hash of the file), so
        ComfyUI runs every node on every run instead of answering from its cache.
        """
        import numpy as np
        from PIL import Image

        size = self.input_size
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        phase = rng.uniform(0, 6.28, 3)
        channels = [
            127 + 100 * np.sin(6 * x + phase[0]) * np.cos(4 * y),
            127 + 100 * np.sin(5 * y + phase[1]),
            127 + 100 * np.cos(7 * (x + y) + phase[2]),
        ]
        rgb = np.stack(channels, -1) + rng.normal(0, 4, (size, size, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    def job_input(self, seed: int, prefix: str) -> JobInput:
        """The RunPod job ``input`` for one run: the workflow and its image as base64."""
        encoded = base64.b64encode(self.input_png(seed)).decode("ascii")
        return {
            "workflow": self.workflow(prefix),
            "images": [{"name": self.image_name(), "image": encoded}],
        }


JOB_KINDS: dict[str, JobKind] = {
    kind.key: kind
    for kind in (
        JobKind("64", "64x64", 64),
        JobKind("512", "512x512", 512),
        JobKind("4x1024", "4x1024x1024", 1024, batch=4),
    )
}


def check_outputs(kind: JobKind, response: dict[str, Any]) -> list[bytes]:
    """The output files of a response, after checking there are as many as the job makes."""
    if "error" in response:
        raise RuntimeError(f"{kind.label} job failed: {json.dumps(response)[:2000]}")
    items = response.get("images") or []
    if len(items) != kind.batch or response.get("errors") or "error" in response:
        raise RuntimeError(f"{kind.label} job returned {len(items)} output(s): {response}")
    # Ours sends data URIs, worker-comfyui bare base64.
    return [base64.b64decode(item["data"].rpartition(",")[2]) for item in items]


def same_pixels(first: bytes, second: bytes) -> bool:
    """Whether two image files hold the same pixels (their PNG metadata may differ)."""
    from PIL import Image

    with Image.open(io.BytesIO(first)) as a, Image.open(io.BytesIO(second)) as b:
        return a.size == b.size and a.tobytes() == b.tobytes()


# -- ComfyUI as a server ----------------------------------------------------------------


_COMFY_LISTENING = re.compile(r"To see the GUI go to: https?://\S+:(\d+)\s*$")
"""ComfyUI's (0.3.64 ``server.py``) line after its socket is bound, with the port."""


class ComfyServer:
    """ComfyUI's own ``main.py`` in a child process, on 127.0.0.1, with its folders in ``root``.

    The same defaults as the worker: CPU when torch sees no CUDA device, custom nodes
    and API nodes loaded, the classic cache, log level INFO, prompt metadata in PNGs.
    """

    def __init__(self, python: str, checkout: Path, root: Path) -> None:
        self.python, self.checkout, self.root = python, checkout, root
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log_path = root / "server.log"
        self.started_at = 0.0
        """``time.time()`` just before the process was spawned."""
        self.log_lines: list[tuple[float, str]] = []
        """Each line the server wrote, with the ``time.time()`` it was read."""
        self._reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(
        self,
        cpu: bool,
        extra_model_paths: Path | None = None,
        *,
        peer: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """Spawn ``main.py`` as worker-comfyui's start.sh does; returns at once.

        Its flags: ``--disable-auto-launch --disable-metadata --listen``, here on
        127.0.0.1 and a picked port (:meth:`bound` says whether it got it), with the
        folders and database in ``root``.
        ``extra_model_paths`` (a yaml that may list ``custom_nodes`` folders) gives it
        the same packs as the worker. ``cpu``: ``--cpu``, without which ComfyUI 0.3.64
        does not start on a machine with no GPU. ``peer``: start.sh's RunPod line as it
        is (``python -u main.py --disable-auto-launch --disable-metadata --verbose LEVEL
        --log-stdout``, no ``--listen``: 127.0.0.1), plus the port and folders.
        """
        dirs = {name: self.root / name for name in ("input", "output", "temp", "user")}
        for folder in dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        # Picked here, not port 0: ComfyUI logs the port it was given, not the one it
        # bound, and the peer's handler must be told where ComfyUI is before it starts.
        # Another process may take the port before ComfyUI binds it (seconds later):
        # bound() tells, start_bound() and the cold-start samples start again.
        self.port = free_port()
        listen = [] if peer else ["--listen", "127.0.0.1"]
        argv = [
            self.python,
            *(["-u"] if peer else []),
            str(self.checkout / "main.py"),
            *listen,
            "--port", str(self.port),
            "--disable-auto-launch",
            "--disable-metadata",
            "--verbose", "INFO",
            "--log-stdout",
            "--input-directory", str(dirs["input"]),
            "--output-directory", str(dirs["output"]),
            "--temp-directory", str(dirs["temp"]),
            "--user-directory", str(dirs["user"]),
            # Its default puts the database inside the checkout.
            "--database-url", f"sqlite:///{self.root / 'comfyui.db'}",
        ]  # fmt: skip
        if cpu:
            argv.append("--cpu")
        if extra_model_paths is not None:
            argv += ["--extra-model-paths-config", str(extra_model_paths)]
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.log_lines = []  # a start again (start_bound) reads only its own
        self.started_at = time.time()
        self.process = subprocess.Popen(
            argv,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: stop() ends all of it
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for line in self.process.stdout:
                self.log_lines.append((time.time(), line.rstrip("\n")))
                log.write(line)

    def bound(self) -> bool | None:
        """Whether this server holds its port: True once its log says it listens there
        (ComfyUI logs "To see the GUI go to: URL" after its socket is bound), False when
        its bind failed because another process holds the port, None while neither.

        Checked because the port is picked before ComfyUI starts (:func:`free_port`) and
        bound seconds later, after its imports: another process may take it meanwhile,
        and a client polling the port would then be answered by that process.
        """
        for _, line in list(self.log_lines):
            found = _COMFY_LISTENING.search(line)
            if found and int(found[1]) == self.port:
                return True
            if "address already in use" in line.lower():
                return False
        return None

    def wait_bound(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        """Wait until :meth:`bound` says True; :class:`PortTaken` when it says False."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.bound()
            if state is not None:
                if not state:
                    raise PortTaken(f"port {self.port} was taken before ComfyUI bound it")
                return
            if self.process is None or self.process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5)  # its last lines, the bind error among them
                if self.bound() is False:
                    raise PortTaken(f"port {self.port} was taken before ComfyUI bound it")
                raise RuntimeError(f"ComfyUI's server exited during start:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"ComfyUI's server did not listen in {timeout_s:.0f} s")

    def start_bound(self, cpu: bool, extra_model_paths: Path | None = None) -> None:
        """:meth:`start`, then :meth:`wait_bound`, on another port when the picked one was
        taken (up to :data:`PORT_ATTEMPTS` starts). For a benchmark that does not time
        the server's start; one that does checks :meth:`bound` after the sample."""
        _start_bound(lambda: self.start(cpu, extra_model_paths), self, self.stop, "ComfyUI")

    def log_time(self, needle: str) -> float | None:
        """When the first log line containing ``needle`` was read, or ``None``."""
        for stamp, line in list(self.log_lines):
            if needle in line:
                return stamp
        return None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server logged."""
        return "\n".join(line for _, line in self.log_lines[-lines:])

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> float:
        """Poll ``GET /prompt`` until it answers 200; the ``time.time()`` it did.

        ``GET /prompt`` is the prompt route itself: once it answers, the routes are
        up and ComfyUI's prompt worker thread (started before the server listens)
        takes prompts.
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"ComfyUI's server exited during start:\n{self.log_tail()}")
                try:
                    if client.get("/prompt").status_code == 200:
                        return time.time()
                except httpx.TransportError:
                    pass
                time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"ComfyUI's server did not answer in {timeout_s:.0f} s")

    def stop(self) -> None:
        """End the server and everything it started (SIGTERM, then SIGKILL after 10 s)."""
        process = self.process
        if process is None:
            return
        stop_group(process)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.process = None


@dataclass
class HttpResult:
    """One job through the server: the response, the time of each step, the server's own."""

    response: dict[str, Any]
    phases_ms: dict[str, float] = field(default_factory=dict)


def preload_client_modules() -> None:
    """Import the handler-style client's modules now.

    Called before the in-process worker boots: its boot ends in ``gc.freeze()``, and
    its per-job ``gc.collect()`` walks every object created after that. In production
    the runpod SDK is imported before the boot and frozen with it; modules this
    benchmark imports later would be walked on every job, a cost of the benchmark, not
    of the worker.
    """
    import requests  # noqa: F401
    import websockets.sync.client  # noqa: F401


HANDLER_POLL_INTERVAL_S = 0.05
"""worker-comfyui's ``COMFY_API_AVAILABLE_INTERVAL_MS`` default: 50 ms between polls."""


class HandlerClient:
    """One job through ComfyUI's server, step by step as worker-comfyui's handler does it.

    See the module's docstring. Every HTTP request opens a new connection (plain
    ``requests`` calls, no session); the WebSocket is opened per job.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def wait_up(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> float:
        """Poll ``GET /`` every 50 ms until it answers 200; the ``time.time()`` it did."""
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base_url}/", timeout=5).status_code == 200:
                    return time.time()
            except requests.RequestException:
                pass
            time.sleep(HANDLER_POLL_INTERVAL_S)
        raise RuntimeError(f"ComfyUI's server did not answer in {timeout_s:.0f} s")

    def run(self, job_input: JobInput) -> HttpResult:
        """The job's response (``{"images": [...], "errors": []}``) and its step timings."""
        import requests
        from websockets.sync.client import connect

        phases: dict[str, float] = {}
        clock = _Clock(phases)
        self.wait_up()  # the handler checks the server at the start of every job
        clock.lap("check server")
        for image in job_input.get("images") or []:
            data = image["image"]
            blob = base64.b64decode(data.split(",", 1)[1] if "," in data else data)
            answer = requests.post(
                f"{self.base_url}/upload/image",
                files={"image": (image["name"], io.BytesIO(blob), "image/png"),
                       "overwrite": (None, "true")},
                timeout=30,
            )  # fmt: skip
            answer.raise_for_status()
        clock.lap("upload")
        client_id = str(uuid.uuid4())
        ws_url = self.base_url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        with connect(ws_url, max_size=None, open_timeout=10) as ws:
            clock.lap("ws connect")
            answer = requests.post(
                f"{self.base_url}/prompt",
                data=json.dumps({"prompt": job_input["workflow"], "client_id": client_id}),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            if answer.status_code != 200:
                raise RuntimeError(f"POST /prompt: {answer.status_code} {answer.text[:2000]}")
            prompt_id = answer.json()["prompt_id"]
            clock.lap("POST /prompt")
            _wait_done(ws, prompt_id)
            clock.lap("wait done")
        history = requests.get(f"{self.base_url}/history/{prompt_id}", timeout=30).json()[prompt_id]
        clock.lap("GET /history")
        items = []
        for node_output in history["outputs"].values():
            for image in node_output.get("images", []):
                if image.get("type") == "temp":
                    continue
                query = {
                    "filename": image["filename"],
                    "subfolder": image.get("subfolder", ""),
                    "type": image["type"],
                }
                answer = requests.get(f"{self.base_url}/view", params=query, timeout=60)
                answer.raise_for_status()
                encoded = base64.b64encode(answer.content).decode("utf-8")
                items.append(
                    {
                        "filename": image["filename"],
                        "type": "base64",
                        "data": "data:image/png;base64," + encoded,
                    }
                )
        clock.lap("GET /view + base64")
        phases["server execution"] = _execution_ms(history)
        return HttpResult(response={"images": items, "errors": []}, phases_ms=phases)


def _wait_done(ws: Any, prompt_id: str) -> None:
    """Read WebSocket messages until ComfyUI says this prompt finished."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(message, bytes):
            continue  # previews
        event = json.loads(message)
        data = event.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if event.get("type") == "execution_error":
            raise RuntimeError(f"ComfyUI failed the job: {data}")
        if event.get("type") == "executing" and data.get("node") is None:
            return


def _execution_ms(history: dict[str, Any]) -> float:
    """ComfyUI's own execution time, from the status messages' timestamps (ms)."""
    stamps = {
        event: data.get("timestamp")
        for event, data in history.get("status", {}).get("messages", [])
        if isinstance(data, dict)
    }
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return float(end - start) if start is not None and end is not None else float("nan")


class _Clock:
    """Laps of ``time.perf_counter()`` into a dict of milliseconds."""

    def __init__(self, laps: dict[str, float]) -> None:
        self.laps = laps
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + (now - self.last) * 1000
        self.last = now


# -- the real peer: worker-comfyui's own handler, and ours, behind the SDK's API server ----

PEER_COMMIT = "d2a5572"
"""The worker-comfyui commit the round-3 figures were measured against."""
REPO = Path(__file__).resolve().parents[1]
_PEER_LAUNCHER = Path(__file__).resolve().parent / "_peer_handler.py"
# One job of the benchmarks takes seconds; a cold start a minute on a loaded 2-core machine.
API_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class PeerCheckout:
    """A worker-comfyui checkout: its handler.py and src/ (start.sh, network_volume.py)."""

    root: Path
    site: Path | None
    """Prepended to the peer handler's PYTHONPATH: websocket-client, which its
    requirements.txt lists and the image's environment does not hold."""

    def describe(self) -> str:
        """Which peer: its git commit when the checkout has one, and handler.py's sha256."""
        import hashlib

        digest = hashlib.sha256((self.root / "handler.py").read_bytes()).hexdigest()[:12]
        commit = "unknown commit"
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            commit = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
                capture_output=True, text=True, check=True,
            ).stdout.strip() or commit  # fmt: skip
        return f"worker-comfyui at {commit} (handler.py sha256 {digest}...)"


def peer_checkout(value: Path, site: Path | None, python: str) -> PeerCheckout:
    """Check ``--peer`` and ``--peer-site``; exits with what to do when they do not fit."""
    root = value.expanduser().resolve()
    needed = ["handler.py", "src/start.sh", "src/network_volume.py"]
    missing = [name for name in needed if not (root / name).is_file()]
    if missing:
        sys.exit(
            f"error: --peer {root} is not a worker-comfyui checkout (no {', '.join(missing)}): "
            f"git clone https://github.com/runpod-workers/worker-comfyui DIR && "
            f"git -C DIR checkout {PEER_COMMIT}"
        )
    peer = PeerCheckout(root, site.expanduser().resolve() if site else None)
    probe = subprocess.run(
        [python, "-c", "import websocket, requests, runpod"],
        env=peer_env(peer, dict(os.environ)), capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        sys.exit(
            "error: worker-comfyui's handler cannot import its requirements here "
            f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'unknown'}): "
            f"install websocket-client beside this environment, e.g. `{python} -m pip install "
            "--target DIR websocket-client`, and pass --peer-site DIR"
        )
    return peer


def peer_env(peer: PeerCheckout, env: dict[str, str]) -> dict[str, str]:
    """``env`` for the peer's handler: its src/ and ``--peer-site`` on the path."""
    paths = [str(peer.root / "src"), *([str(peer.site)] if peer.site else [])]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def tcmalloc_preload() -> str | None:
    """start.sh's ``LD_PRELOAD``: the first ``libtcmalloc.so.N`` ldconfig knows, else None."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        match = re.search(r"libtcmalloc\.so\.\d", listing)
        if match:
            return match.group(0)
    return None


class ApiProcess:
    """A handler behind the runpod SDK's local API server (``--rp_serve_api``), in a child.

    Either ours (``handler.py`` of this repo) or worker-comfyui's (through
    ``_peer_handler.py``); both are sent ``POST /runsync`` by the same client.
    """

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str], log_path: Path):
        self.argv, self.cwd, self.env, self.log_path = list(argv), cwd, env, log_path
        self.port = 0
        """The port the API server bound; known once :meth:`wait_listening` returns."""
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self._client: Any = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Spawn it; the ``time.time()`` just before.

        On port 0: the server binds a free port itself and names it in uvicorn's "running
        on" line (:meth:`wait_listening`), so no other process can take it between a pick
        and the bind, as with a port picked here.
        """
        argv = [*self.argv, "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                "--rp_api_port", "0"]  # fmt: skip
        # The SDK's default level, named: a quieter one set in the caller's shell would
        # hide the "running on" line this waits for.
        env = {**self.env, "UVICORN_LOG_LEVEL": "info"}
        self.port = 0
        self.spawned_at = time.time()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.spawned_at

    def wait_listening(self, timeout_s: float = API_START_TIMEOUT_S) -> float:
        """Read its log every 10 ms until uvicorn says it listens (after the app has
        started), take the port from that line; the ``time.time()`` it was read.

        Its own word, not an answer on a port: whatever process holds a port answers
        there, and the benchmark would go on against it.
        """
        tail = LogTail(self.log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in tail.new_lines():
                port = listening_port(line)
                if port is not None:
                    self.port = port
                    return time.time()
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[1]} exited during start:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"{self.argv[1]} did not listen in {timeout_s:.0f} s")

    def runsync(self, job_input: JobInput, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """``POST /runsync``; the handler's output, or ``{"error": ...}`` when it failed."""
        import httpx

        if self._client is None:  # one kept-alive connection, as for both sides alike
            self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        answer = self._client.post("/runsync", json={"input": job_input})
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        if body.get("status") != "COMPLETED":
            return {"error": f"{body.get('status')}: {json.dumps(body)[:2000]}"}
        output: dict[str, Any] = body.get("output") or {}
        return output

    def log_tail(self, chars: int = 4000) -> str:
        """The end of what it printed."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        """End it and its process group (SIGTERM, then SIGKILL after 10 s)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        if process is not None:
            stop_group(process)


def stop_group(process: subprocess.Popen[Any]) -> None:
    """End ``process`` and its process group: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def our_side(
    python: str, checkout: Path, root: Path, env: dict[str, str], packs_yaml: Path | None
) -> ApiProcess:
    """This repo's ``handler.py --rp_serve_api``, base64 delivery, metadata off, INFO logs."""
    root.mkdir(parents=True, exist_ok=True)
    ours = {
        **env,
        "COMFYUI_PATH": str(checkout),
        "WORKER_DIR": str(root / "work"),
        "COMFY_LOG_LEVEL": "INFO",
        "OUTPUT_METADATA": "false",  # as the peer's --disable-metadata
        "PYTHONUNBUFFERED": "1",
    }
    if packs_yaml is not None:
        ours["EXTRA_MODEL_PATHS"] = str(packs_yaml)
    return ApiProcess([python, "handler.py"], REPO, ours, root / "worker.log")


class PeerSide:
    """worker-comfyui as its ``src/start.sh`` starts it, on 127.0.0.1, folders in ``root``.

    start.sh: the GPU pre-flight (``torch.cuda.init()``; it exits without a GPU, so it
    runs only where CUDA is), ``LD_PRELOAD`` of tcmalloc when ldconfig knows one, then
    ``python -u main.py --disable-auto-launch --disable-metadata --verbose LEVEL
    --log-stdout &`` with its pid in a file, then ``python -u handler.py`` (here with
    ``--rp_serve_api``, start.sh's local-API line, on 127.0.0.1). What differs, each
    because this is a shared machine or has no GPU: ComfyUI gets a picked ``--port``
    (:meth:`ComfyServer.start` says why not port 0, :meth:`start_bound` what a taken
    one does), its folders and database in ``root``, ``--cpu`` without a GPU and the
    packs through ``--extra-model-paths-config``; the handler's module constants
    ``COMFY_HOST`` and ``COMFY_PID_FILE`` point at that port and pid file
    (``_peer_handler.py``); ComfyUI-Manager's offline switch is skipped (not installed).
    """

    def __init__(
        self,
        python: str,
        checkout: Path,
        peer: PeerCheckout,
        root: Path,
        env: dict[str, str],
        packs_yaml: Path | None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.python, self.checkout, self.peer, self.root = python, checkout, peer, root
        self.packs_yaml = packs_yaml
        self.env = {**env, "COMFY_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        preload = tcmalloc_preload()
        if preload:
            self.env["LD_PRELOAD"] = preload
        self.server = ComfyServer(python, checkout, root / "comfyui")
        self.pid_file = root / "comfyui.pid"
        self.api: ApiProcess | None = None
        self.started_at = 0.0

    def start(self, cuda: bool) -> float:
        """Run start.sh's steps; the ``time.time()`` just before the first."""
        self.started_at = time.time()
        if cuda:  # start.sh's GPU pre-flight, before anything else starts
            subprocess.run(
                [self.python, "-c", "import torch; torch.cuda.init(); torch.cuda.get_device_name(0)"],
                env=self.env, check=True, capture_output=True,
            )  # fmt: skip
        self.server.root.mkdir(parents=True, exist_ok=True)
        self.server.start(cpu=not cuda, extra_model_paths=self.packs_yaml, peer=True, env=self.env)
        assert self.server.process is not None
        self.pid_file.write_text(f"{self.server.process.pid}\n", encoding="utf-8")
        argv = [self.python, "-u", str(_PEER_LAUNCHER), str(self.peer.root),
                f"127.0.0.1:{self.server.port}", str(self.pid_file)]  # fmt: skip
        self.api = ApiProcess(
            argv, self.peer.root, peer_env(self.peer, self.env), self.root / "handler.log"
        )
        self.api.start()
        return self.started_at

    def start_bound(self, cuda: bool) -> None:
        """:meth:`start`, then wait until ComfyUI holds its port; both started again on
        another port when another process took it first (up to :data:`PORT_ATTEMPTS`).
        For a benchmark that does not time the start; bench_cold_start checks
        ``server.bound()`` after each sample instead, so its start stays start.sh's."""
        _start_bound(lambda: self.start(cuda), self.server, self.stop, "worker-comfyui")

    def stop(self) -> None:
        """End the handler and ComfyUI."""
        if self.api is not None:
            self.api.stop()
        self.server.stop()


def clean_env() -> dict[str, str]:
    """This environment without RunPod's, the bucket's or a warm-up workflow's variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BUCKET_", "RUNPOD_", "COMFY_ORG_"))
        and key not in {"WARMUP_WORKFLOW", "EXTRA_MODEL_PATHS", "COMFY_ARGS"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def probe_torch(python: str = sys.executable) -> tuple[str, bool, str]:
    """torch's version, whether CUDA works, the GPU's name: asked of a child process.

    Also reads torch's files into the page cache before anything is timed.
    """
    code = (
        "import json, torch; c = torch.cuda.is_available(); "
        "print(json.dumps([torch.__version__, c, torch.cuda.get_device_name(0) if c else '']))"
    )
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    version, cuda, name = json.loads(out.strip().splitlines()[-1])
    return str(version), bool(cuda), str(name)


def runpod_version(python: str = sys.executable) -> str:
    """The runpod SDK's version in ``python``'s environment."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        return subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('runpod'))"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    return "unknown"


def peer_lines(peer: PeerCheckout) -> list[str]:
    """How the real peer was run, for the report."""
    return [
        f"Peer: {peer.describe()}; its handler.py unchanged behind the runpod SDK "
        f"{runpod_version()} local API server (its requirements pin runpod~=1.7.12), "
        "ComfyUI's main.py with its start.sh flags. Ours: this checkout's handler.py, "
        "also with --rp_serve_api. One HTTP client sends both the same POST /runsync.",
        "",
        "Differences from start.sh, each for a shared machine or one without a GPU: "
        "ComfyUI on a picked --port (started again on another when a process took it "
        "first) with its folders in a temporary directory (and --cpu "
        "and no GPU pre-flight when there is no GPU), the packs through "
        "--extra-model-paths-config; the handler's COMFY_HOST and COMFY_PID_FILE pointed "
        "at them (scripts/_peer_handler.py); tcmalloc preloaded only where ldconfig "
        f"knows it ({tcmalloc_preload() or 'not here'}).",
    ]


def packs_config(root: Path, packs: Path | None) -> Path | None:
    """An ``extra_model_paths.yaml`` that adds the packs in ``packs`` to both sides; or None.

    The worker reads it through ``EXTRA_MODEL_PATHS``, the server through
    ``--extra-model-paths-config``: the same packs, loaded from the same folder,
    without linking anything into the checkout.
    """
    if packs is None:
        return None
    path = root / "packs.yaml"
    # JSON is YAML; ComfyUI reads a custom_nodes entry of any section.
    path.write_text(json.dumps({"bench_packs": {"custom_nodes": str(packs)}}), encoding="utf-8")
    return path


def pack_names(packs: Path | None, checkout: Path | None = None) -> list[str]:
    """The packs both sides load: those of a ``--packs`` folder and of the checkout's
    own ``custom_nodes/`` (sub-folders, hidden ones aside)."""
    names: set[str] = set()
    for folder in (packs, checkout / "custom_nodes" if checkout else None):
        if folder is not None and folder.is_dir():
            names.update(
                p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
            )
    return sorted(names)


def stats_cell(values: Iterable[float]) -> str:
    """``min / **median** / max`` of the values that are not NaN, in seconds; ``n/a`` if none."""
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return "n/a"
    return f"{min(numbers):.2f} / **{statistics.median(numbers):.2f}** / {max(numbers):.2f}"


def ratio_cell(ratios: Sequence[float]) -> str:
    """``min / **median** / max`` of per-pair ratios, as ``1.23x``."""
    if not ratios:
        return "n/a"
    return f"{min(ratios):.2f}x / **{statistics.median(ratios):.2f}x** / {max(ratios):.2f}x"


def rss_mib() -> float:
    """This process's resident memory now, MiB (Linux ``/proc/self/statm``)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text(encoding="utf-8").split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return float("nan")


# -- figures ----------------------------------------------------------------------------


def timed(function: Callable[[], T]) -> tuple[T, float]:
    """``function()``'s result and the milliseconds it took."""
    started = time.perf_counter()
    result = function()
    return result, (time.perf_counter() - started) * 1000


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with ``fraction`` of the values at or below."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction), at least 1
    return ordered[int(rank) - 1]


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, p90) of ``values``."""
    return min(values), statistics.median(values), percentile(values, 0.9)


def fmt_ms(value: float) -> str:
    """Milliseconds with a precision that suits their size."""
    if value != value:  # NaN
        return "n/a"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first column left-aligned, the rest right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


class Metered:
    """The runtime, with the time spent in ``run`` (the engine busy) added up."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.busy_s = 0.0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, job: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._inner.run(job)
        finally:
            with self._lock:
                self.busy_s += time.perf_counter() - started


def stream_jobs(
    worker: Any, runtime: Metered, jobs: list[dict[str, Any]], callers: int
) -> tuple[float, float]:
    """Send ``jobs`` through ``worker.handle`` with ``callers`` in flight at once, as the
    runpod SDK's job loop keeps that many in progress: the stream's wall seconds and the
    engine's busy seconds in it. Each answer must hold one output and no error; a stream
    with a failed job ends the benchmark (SystemExit, with the first answer)."""
    pending = list(reversed(jobs))
    lock = threading.Lock()
    failures: list[str] = []

    def caller() -> None:
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop()
            answer = worker.handle(job)
            if "error" in answer or answer.get("errors") or len(answer.get("images", [])) != 1:
                failures.append(json.dumps(answer)[:400])

    busy_before = runtime.busy_s
    started = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} job(s) failed, first: {failures[0]}")
    return wall, runtime.busy_s - busy_before
