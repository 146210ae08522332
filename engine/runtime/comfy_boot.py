"""Booting ComfyUI in this process, in the order its own ``main.py`` needs.

Called once, from ``ComfyRuntime.boot()``: with :mod:`engine.runtime.comfy` the
only code that imports ComfyUI or torch. ComfyUI's modules are untyped, so they
stay ``Any`` here. docs/runtime.md says why each step comes where it does.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine.baked_inputs import link_baked_inputs
from engine.errors import RuntimeBootError
from engine.runtime import (
    Directories,
    comfy_args,
    fast_save,
    node_index,
    pack_evidence,
    pack_imports,
)
from engine.runtime.comfy_folders import log_model_folders, run_prestartup_scripts
from engine.runtime.headless_server import HeadlessPromptServer
from engine.runtime.lazy_nodes import LazyNodes
from engine.runtime.model_paths import read_model_paths
from engine.runtime.node_index import environment_key, index_key
from engine.runtime.patches import Patches, Target
from engine.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

_REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL_PATHS = _REPO_ROOT / "comfyui" / "extra_model_paths.yaml"
"""The worker's model paths: the image's folders, then a RunPod network volume's."""
BUNDLED_CHECKOUT = _REPO_ROOT / "comfyui" / "ComfyUI"
"""Where ``scripts/setup.sh --with-comfyui`` installs the pinned ComfyUI."""

# Node types from three of ComfyUI's node files. If ComfyUI's ``comfy/utils.py`` wins
# the name ``utils`` over its top-level ``utils`` package, comfy_extras/nodes_images.py
# fails to load with only a warning; a missing sentinel makes that loud.
_SENTINEL_NODES = ("SaveImage", "SaveAnimatedWEBP", "CreateVideo")
_IMAGEIO_NO_PREEXEC = "IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"
# ``--cache-lru`` has no default in ComfyUI; 100 is LRUCache's own default size.
_LRU_CACHE_SIZE = 100


@dataclass(frozen=True)
class Comfy:
    """ComfyUI's modules and the objects the runtime keeps, once booted."""

    folder_paths: Any
    execution: Any
    nodes: Any
    model_management: Any
    executing_context: Any
    server: HeadlessPromptServer
    executor: Any
    node_count: int
    lazy_nodes: LazyNodes
    """ComfyUI's own node files deferred to the job that first names one of their types."""
    patches: Patches
    """The worker's changes to ComfyUI and packs: in force, off, skipped (patches.py)."""


def find_checkout(settings: Settings) -> Path:
    """The ComfyUI checkout to import: ``COMFYUI_PATH``, else setup.sh's ``comfyui/ComfyUI``."""
    candidate = settings.comfyui_path or BUNDLED_CHECKOUT
    path = Path(candidate).expanduser().resolve()
    if not (path / "execution.py").is_file() or not (path / "comfy").is_dir():
        where = (
            f"COMFYUI_PATH={settings.comfyui_path}"
            if settings.comfyui_path
            else f"the bundled checkout {BUNDLED_CHECKOUT}"
        )
        raise RuntimeBootError(
            f"No ComfyUI checkout found at {where}",
            [
                "Run scripts/setup.sh --with-comfyui, or set COMFYUI_PATH to a ComfyUI "
                "checkout (the folder holding main.py and execution.py)"
            ],
        )
    return path


def import_comfy(
    checkout: Path,
    settings: Settings,
    dirs: Directories,
    step_hook: Callable[..., None],
    timings: dict[str, float],
) -> Comfy:
    """Import and initialise ComfyUI from ``checkout``, in the order main.py needs.

    ``step_hook`` becomes ComfyUI's global progress-bar hook; ``timings`` gets the
    seconds of ``torch_import``, ``comfy_import`` and ``node_init``.
    """
    if "torch" in sys.modules:
        log.warning("torch was imported before ComfyUI; its CUDA allocator setting cannot apply")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp, which runs Python in the
    # forked child; with PyAV 19 threads alive (ComfyUI's video nodes) the child can
    # deadlock before exec and the job never returns. This switch is its own workaround
    # (no preexec_fn: CPython's vfork path), for any pack that reads or writes video
    # through it. The worker itself no longer forks through imageio-ffmpeg (engine/video.py).
    os.environ.setdefault(_IMAGEIO_NO_PREEXEC, "1")
    # Nothing is pip-installed at run time (docs/custom-nodes.md): packs that start pip
    # to fetch what they miss (at import, or in a job) fail at once instead of reaching
    # out to PyPI from every cold worker, and the import error names the module.
    os.environ.setdefault("PIP_NO_INDEX", "1")

    # comfy/cli_args.py parses its arguments at import, from sys.argv only when
    # comfy.options.enable_args_parsing() was called: it is not, so the host's argv
    # stays the worker's and every field starts at ComfyUI's default.
    cli_module = importlib.import_module("comfy.cli_args")
    cli_args = cli_module.args
    # COMFY_ARGS: ComfyUI's own flags, by its own parser; refused and unknown flags stop
    # the boot here, before torch, and become the answer of every job.
    flags = comfy_args.parse(cli_module.parser, settings.comfy_args)
    cache = comfy_args.cache_choice(flags, settings.cache_type)
    comfy_args.apply(flags, cli_args)
    if flags.flags:
        log.info("ComfyUI flags from COMFY_ARGS: %s", " ".join(settings.comfy_args))
        if "comfy.model_management" in sys.modules:
            log.warning("comfy.model_management was imported before boot: COMFY_ARGS may not apply")
    if cli_args.deterministic:
        # As main.py: cuBLAS refuses deterministic algorithms without this workspace setting.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cli_args.verbose = settings.comfy_log_level
    # OUTPUT_METADATA=false: save nodes leave the workflow out of PNG/WEBP/video metadata.
    cli_args.disable_metadata = not settings.output_metadata
    # PNG_ENCODER: which writer the parallel_png patch hands SaveImage's files to.
    fast_save.configure(settings.png_encoder)
    _install_comfy_log_filter(settings.comfy_log_level)
    # As main.py: the top-level ``utils`` package first, or comfy/utils.py takes its name.
    _check_utils_module(checkout)
    extra_config = importlib.import_module("utils.extra_config")
    _check_utils_module(checkout)
    folder_paths = importlib.import_module("folder_paths")
    _configure_paths(folder_paths, extra_config, settings, dirs)
    # Static inputs baked where ComfyUI keeps them (worker-comfyui's Dockerfiles COPY
    # theirs into /comfyui/input), readable by their plain names as on a ComfyUI server.
    linked = link_baked_inputs(checkout / "input", dirs.input)
    if linked:
        log.debug("linked %d input file(s) from %s", len(linked), checkout / "input")
    # Every change to ComfyUI and the packs, each checked before it applies (patches.py).
    patches = Patches(off=settings.comfy_patches_off)
    target = Target(
        folder_paths=folder_paths,
        model_paths=read_model_paths([BUNDLED_MODEL_PATHS, settings.extra_model_paths]),
    )
    patches.apply_phase("before_packs", target)
    run_prestartup_scripts(folder_paths.get_folder_paths("custom_nodes"))

    started = time.perf_counter()
    if _nvidia_driver_present():
        # As main.py: cuda_malloc picks the CUDA allocator through an environment
        # variable that torch reads once, so it must come before torch.
        importlib.import_module("cuda_malloc")
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        # Read by comfy.model_management when it is imported, just below.
        cli_args.cpu = True
    timings["torch_import"] = time.perf_counter() - started

    started = time.perf_counter()
    comfy_utils = importlib.import_module("comfy.utils")
    execution = importlib.import_module("execution")
    server_module = importlib.import_module("server")
    nodes = importlib.import_module("nodes")
    model_management = importlib.import_module("comfy.model_management")
    hook_breaker = importlib.import_module("hook_breaker_ac10a0")
    executing_context = importlib.import_module("comfy_execution.utils")
    comfy_api = importlib.import_module("comfy_api.latest")  # nodes.py imported it already
    timings["comfy_import"] = time.perf_counter() - started

    # Where the node index is read from, first to last; it is written to the first.
    index_dirs = _node_index_dirs(checkout, dirs)
    lazy = _lazy_nodes(nodes, index_dirs, settings, folder_paths, checkout)
    target.nodes, target.execution, target.server_module = nodes, execution, server_module
    target.lazy_nodes, target.comfy_api = lazy, comfy_api
    patches.apply_phase("before_node_init", target)
    server = target.server
    assert server is not None  # headless_server cannot be skipped: its check raised
    # Per-step progress reaches RunPod through the hook; tqdm's bars would only
    # add a line per sampler step to the worker's log.
    comfy_utils.set_progress_bar_enabled(False)
    comfy_utils.set_progress_bar_global_hook(step_hook)

    started = time.perf_counter()
    lazy_on = patches.is_applied("lazy_nodes")
    # As main.py: custom nodes may not replace model_management.cast_to for good.
    hook_breaker.save_functions()
    try:
        init = nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=True)
        with lazy.booting() if lazy_on else nullcontext():
            _outside_any_loop(server.run_until_complete, init)
    finally:
        hook_breaker.restore_functions()
    server.start_loop()
    timings["node_init"] = time.perf_counter() - started
    written = lazy.save(index_dirs[0]) if lazy_on else None
    if written is not None:
        log.info("node index written to %s", written)
    patches.apply_phase("after_node_init", target)
    # From here on a file deferred at boot loads on first use: the pack fixes above follow
    # a pack, a patch of a node class waits for the file that defines it, and an import
    # failure then is one on first use.
    lazy.on_loaded = lambda path, group: patches.after_lazy_load(target, group)
    pack_imports.RECORD.booted = True
    log.info("patches to ComfyUI and packs (engine/runtime/patches.py): %s", patches.summary())
    # Counted and checked by name: a walk of the mapping would import every deferred file.
    node_count = lazy.count()
    missing = [n for n in _SENTINEL_NODES if not lazy.known(n)]
    if missing:
        log.error(
            "ComfyUI loaded %d node types but not %s: part of its node files failed to import",
            node_count,
            ", ".join(missing),
        )
    packs = [Path(p).name for p in lazy.deferred_packs()]
    log.info(
        "ComfyUI %s: %d node types; %d of its node files and %d custom node packs%s "
        "deferred to the first job naming one of their types",
        _comfy_version(),
        node_count,
        len(lazy.deferred) - len(packs),
        len(packs),
        f" ({', '.join(packs)})" if packs else "",
    )
    log_model_folders(folder_paths)

    kind, size = cache or (settings.cache_type or "classic", _LRU_CACHE_SIZE)
    cache_type = {
        "lru": execution.CacheType.LRU,
        "none": execution.CacheType.DEPENDENCY_AWARE,
    }.get(kind, execution.CacheType.CLASSIC)
    executor = execution.PromptExecutor(server, cache_type=cache_type, cache_size=size)
    # Everything imported so far lives as long as the process: frozen, the per-job
    # gc.collect() only walks what jobs allocate. No full collection first: with the
    # five packs it walks ~690k objects for 0.6 s on 2 CPU cores to free ~19k (8 MiB of
    # import-time cycles, no arrays among them), kept instead (docs/benchmarks.md).
    gc.freeze()
    return Comfy(
        folder_paths=folder_paths,
        execution=execution,
        nodes=nodes,
        model_management=model_management,
        executing_context=executing_context,
        server=server,
        executor=executor,
        node_count=node_count,
        lazy_nodes=lazy,
        patches=patches,
    )


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while ComfyUI boots.

    Importing torch, ComfyUI and the packs allocates millions of objects that live as
    long as the process, and each allocation burst starts a collection that walks all
    of them again (docs/benchmarks.md has the seconds). The boot then freezes them
    (:func:`import_comfy`).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _node_index_dirs(checkout: Path, dirs: Directories) -> list[Path]:
    """Where the node index may live: beside ComfyUI (baked into the image at build,
    shared by every container), else under the worker's folder (a read-only checkout)."""
    beside = checkout / ".worker-node-index"
    ours = dirs.temp.parent / "node-index"
    writable = beside.is_dir() and os.access(beside, os.W_OK)
    writable = writable or (not beside.exists() and os.access(checkout, os.W_OK))
    return [beside, ours] if writable else [ours, beside]


def _lazy_nodes(
    nodes: Any, folders: list[Path], settings: Settings, folder_paths: Any, checkout: Path
) -> LazyNodes:
    """The node index for this checkout and environment, read from ``folders``
    (:func:`_node_index_dirs`) if one was made before."""
    environment = environment_key()
    key = index_key(_comfy_version(), folder_paths.get_folder_paths("custom_nodes"), environment)
    index = node_index.find(folders, key)
    # None for this set of packs (a network volume adds some): the newest index of this
    # layout and environment (the image's, made at build) lends its packs' evidence, so
    # the boot that makes this one snapshots only the packs it does not know.
    donor = None
    if index is None and settings.lazy_packs:
        donor = node_index.newest_of(folders, environment)
    # With a Comfy.org key configured, API nodes are expected: loaded at boot, as before.
    eager = ("comfy_api_nodes",) if settings.comfy_org_api_key else ()
    # LAZY_PACKS=false: every custom node pack at boot, as ComfyUI does.
    packs = pack_evidence.Recorder(checkout, folder_paths) if settings.lazy_packs else None
    return LazyNodes(
        nodes,
        index,
        key,
        eager_groups=eager,
        packs=packs,
        evidence_from=donor,
        environment=environment,
    )


def _configure_paths(
    folder_paths: Any, extra_config: Any, settings: Settings, dirs: Directories
) -> None:
    for folder in (dirs.input, dirs.output, dirs.temp):
        folder.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(dirs.input))
    folder_paths.set_output_directory(str(dirs.output))
    folder_paths.set_temp_directory(str(dirs.temp))
    configs = [BUNDLED_MODEL_PATHS] if BUNDLED_MODEL_PATHS.is_file() else []
    extra = settings.extra_model_paths
    if extra is not None:
        if not extra.is_file():
            raise RuntimeBootError(
                f"EXTRA_MODEL_PATHS names {extra}, which is not a file",
                ["Point EXTRA_MODEL_PATHS at a ComfyUI extra_model_paths.yaml, or unset it"],
            )
        configs.append(extra)
    for config in configs:
        log.info("model paths from %s", config)
        extra_config.load_extra_path_config(str(config))
    # ComfyUI lists every custom_nodes folder with os.listdir and fails the whole
    # node init on one that is missing (a checkout without custom_nodes/, a volume
    # not mounted): skip those instead.
    custom_node_dirs = folder_paths.folder_names_and_paths["custom_nodes"][0]
    for folder in [p for p in custom_node_dirs if not Path(p).is_dir()]:
        log.warning("custom node folder %s does not exist; skipped", folder)
        custom_node_dirs.remove(folder)


def _outside_any_loop(function: Callable[[Any], T], argument: Any) -> T:
    """``function(argument)`` here, or in a helper thread if an event loop runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    # Called outside the except block: a traceback ComfyUI formats inside would otherwise
    # carry "During handling of the above exception ... no running event loop".
    if not running:
        return function(argument)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfy-boot") as pool:
        return pool.submit(function, argument).result()


class _ComfyLogFilter(logging.Filter):
    """Holds ComfyUI's own records to ``COMFY_LOG_LEVEL``.

    ComfyUI logs through the root logger (``logging.info(...)``), and a filter on
    the root logger sees only records logged on it directly: exactly those. The
    worker's named loggers, and custom nodes' own, pass untouched.
    """

    def __init__(self, level: str) -> None:
        super().__init__()
        self.level = logging.getLevelNamesMapping()[level]

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= self.level


def _install_comfy_log_filter(level: str) -> None:
    root = logging.getLogger()
    for existing in [f for f in root.filters if isinstance(f, _ComfyLogFilter)]:
        root.removeFilter(existing)
    root.addFilter(_ComfyLogFilter(level))


def _check_utils_module(checkout: Path) -> None:
    """ComfyUI imports its top-level package ``utils`` by that bare name."""
    module = sys.modules.get("utils")
    origin = str(getattr(module, "__file__", None) or "")
    if module is not None and not origin.startswith(str(checkout)):
        raise RuntimeBootError(
            f"A module named 'utils' ({origin or 'a namespace package'}) was imported "
            "before ComfyUI, whose own top-level 'utils' package needs that name",
            ["Rename that module, or import it after the worker has booted"],
        )


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _comfy_version() -> str:
    module = sys.modules.get("comfyui_version")
    if module is None:
        try:
            module = importlib.import_module("comfyui_version")
        except ImportError:
            return "(unknown version)"
    return str(getattr(module, "__version__", "(unknown version)"))
