"""Every change the worker makes to ComfyUI or a custom node pack, in one registry.

ComfyUI is imported, not forked: where the worker needs it to behave differently, it
replaces a function, a class attribute or a module global at boot. Each such change is
one :class:`Patch` in :data:`REGISTRY`, in the order boot applies them, saying what it
replaces, why, what the worker does without it, and the shape of ComfyUI (or of the
pack) it was written against. Boot hands each patch the handles imported so far
(:class:`Target`) at its phase; :meth:`Patches.apply_phase` runs the patch's check
first and applies it only when the shape is there. When it is not (a new ComfyUI moved
the function), the patch is skipped with one warning naming it, and ComfyUI keeps its
own code there: the worker runs as plain ComfyUI would, slower or with a plainer error.
A patch that cannot be skipped (the headless server: ComfyUI's executor and nodes need
a server object) stops the boot with what to do instead.

A patch of node classes names their types (``Patch.node_types``): ComfyUI's node files
and packs may load on a job's first use of one of their types (``lazy_nodes``), after
the boot's phases, so such a patch waits for the file that defines them and is checked
and applied when it loads (:meth:`Patches.after_lazy_load`), or at its phase when the
boot imported it.

``COMFY_PATCHES_OFF=name,name`` switches patches off by name (``engine.settings``);
the boot log lists the patches in force. ``scripts/move_comfyui_pin.py`` boots a moved
pin and reports the patches its checks skipped.

Not in the registry, because nothing of ComfyUI stays changed: the options the boot
sets through ComfyUI's own ``comfy.cli_args`` and progress-bar hook, and the probe
``comfy_folders.folder_names_backing_input`` makes (it swaps
``folder_paths.get_filename_list`` for one ``INPUT_TYPES()`` call and puts it back).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import RuntimeBootError
from engine.runtime import (
    animated_save,
    decoded_inputs,
    fast_save,
    output_metadata,
    output_scope,
    pack_fixes,
    pack_imports,
    vhs_save,
    video_save,
    webm_save,
)
from engine.runtime.headless_server import HeadlessPromptServer
from engine.runtime.model_paths import ModelPaths
from engine.runtime.node_index import PACKS

log = logging.getLogger(__name__)

Phase = Literal["before_packs", "before_node_init", "after_node_init"]
"""When boot applies a patch: once ComfyUI's folders are set and before any pack
imports; once ComfyUI's modules are imported and before its node files load; once
every node file and pack has loaded."""

PHASES: tuple[Phase, ...] = ("before_packs", "before_node_init", "after_node_init")


@dataclass
class Target:
    """What boot has imported so far, for the patches of a phase (``None``: not yet)."""

    folder_paths: Any = None
    model_paths: ModelPaths | None = None
    nodes: Any = None
    execution: Any = None
    server_module: Any = None
    lazy_nodes: Any = None
    """The boot's :class:`~engine.runtime.lazy_nodes.LazyNodes`."""
    server: HeadlessPromptServer | None = None
    """Set by the ``headless_server`` patch."""
    comfy_api: Any = None
    """ComfyUI's ``comfy_api.latest`` (its ``InputImpl`` video classes)."""


@dataclass(frozen=True)
class Patch:
    """One change to ComfyUI or a pack: what, why, and the shape it needs."""

    name: str
    phase: Phase
    replaces: str
    """The dotted names it replaces, as ComfyUI (or the pack) spells them."""
    why: str
    without: str
    """What the worker does when the patch is off or skipped."""
    expects: str
    """The shape of ComfyUI it was written against, checked by ``check``."""
    check: Callable[[Target], str | None]
    """``None`` when the expected shape is there, else what is missing."""
    apply: Callable[[Target], None]
    in_use: Callable[[Target], bool] = lambda target: True
    """False when what it fixes is not there at all (a pack not installed): not a warning."""
    can_skip: bool = True
    after_lazy_pack: bool = False
    """Applied again once a pack deferred at boot has loaded (``lazy_nodes``): it fixes
    what packs do at import. Such a patch must be safe to apply twice."""
    node_types: tuple[str, ...] = ()
    """The node types whose classes it changes. When their file has not loaded at the
    patch's phase (``lazy_nodes`` defers ComfyUI's node files and packs to the first job
    naming one of their types), the patch waits, and is checked and applied once that
    file has loaded (:meth:`Patches.after_lazy_load`); a boot that imports the file
    applies it at its phase."""


def _missing(owner: Any, dotted: str) -> str | None:
    """``None`` when ``owner.<dotted>`` exists, else the first name that does not."""
    current = owner
    walked = []
    for part in dotted.split("."):
        walked.append(part)
        if not hasattr(current, part):
            return ".".join(walked)
        current = getattr(current, part)
    return None


def _names_used(function: Any, *names: str) -> str | None:
    """``None`` when ``function``'s code uses every one of ``names`` (globals or attributes).

    Cheap: the compiled code's name table, no source read. A function that no longer
    looks ``Image`` up in its module (a patch's hook) fails this.
    """
    code = getattr(inspect.unwrap(function), "__code__", None)
    if code is None:
        return "its code (not a Python function)"
    absent = [n for n in names if n not in code.co_names]
    return None if not absent else f"its use of {', '.join(absent)}"


def _load_custom_node_shape(nodes: Any) -> str | None:
    """ComfyUI 0.3.64's ``async def load_custom_node(module_path, ignore, module_parent)``."""
    function = getattr(nodes, "load_custom_node", None)
    if function is None:
        return "nodes.load_custom_node"
    if not inspect.iscoroutinefunction(function):
        return "nodes.load_custom_node as a coroutine function"
    parameters = list(inspect.signature(function).parameters)
    if parameters[:3] != ["module_path", "ignore", "module_parent"]:
        return "nodes.load_custom_node(module_path, ignore, module_parent)"
    return None


# -- the checks and the applications, one pair per patch ---------------------------------


def _check_pack_folder_links(target: Target) -> str | None:
    if target.model_paths is None:
        return "the worker's model paths (read before the packs)"
    return _missing(target.folder_paths, "models_dir")


def _apply_pack_folder_links(target: Target) -> None:
    assert target.model_paths is not None
    pack_fixes.link_model_folders(target.folder_paths, target.model_paths)


def _check_output_scope(target: Target) -> str | None:
    for name in output_scope.WRAPS:
        if not callable(getattr(target.folder_paths, name, None)):
            return f"folder_paths.{name}"
    return None


def _apply_output_scope(target: Target) -> None:
    output_scope.install(target.folder_paths)


def _check_output_metadata(target: Target) -> str | None:
    function = getattr(target.execution, "get_input_data", None)
    if function is None:
        return "execution.get_input_data"
    parameters = list(inspect.signature(function).parameters)
    expected = ["inputs", "class_def", "unique_id", "outputs", "dynprompt", "extra_data"]
    if parameters != expected:
        return f"execution.get_input_data({', '.join(expected)})"
    return _names_used(function, "get_original_prompt")


def _apply_output_metadata(target: Target) -> None:
    output_metadata.install(target.execution)


def _check_pack_imports(target: Target) -> str | None:
    return _load_custom_node_shape(target.nodes) or _names_used(
        target.nodes.load_custom_node, "traceback", "format_exc"
    )


def _apply_pack_imports(target: Target) -> None:
    pack_imports.watch(target.nodes)


def _check_headless_server(target: Target) -> str | None:
    return _missing(target.server_module, "PromptServer") or _missing(
        target.execution, "PromptQueue"
    )


def _apply_headless_server(target: Target) -> None:
    target.server = HeadlessPromptServer(target.execution)
    target.server_module.PromptServer.instance = target.server


def _check_lazy_nodes(target: Target) -> str | None:
    nodes = target.nodes
    for name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        if not isinstance(getattr(nodes, name, None), dict):
            return f"nodes.{name} as a dict"
    if _missing(nodes, "init_extra_nodes"):
        return "nodes.init_extra_nodes"
    return _load_custom_node_shape(nodes)


def _apply_lazy_nodes(target: Target) -> None:
    target.lazy_nodes.install()


def _check_folder_paths_restore(target: Target) -> str | None:
    if target.model_paths is None:
        return "the worker's model paths (read before the packs)"
    names = getattr(target.folder_paths, "folder_names_and_paths", None)
    if not isinstance(names, dict):
        return "folder_paths.folder_names_and_paths as a dict"
    return _missing(target.folder_paths, "models_dir")


def _apply_folder_paths_restore(target: Target) -> None:
    assert target.model_paths is not None
    pack_fixes.restore_folder_paths(target.folder_paths, target.model_paths)


def _reactor_loaded(target: Target) -> bool:
    return pack_fixes.REACTOR_NODE in dict.keys(target.nodes.NODE_CLASS_MAPPINGS)


def _check_reactor_restorers(target: Target) -> str | None:
    node_class = target.nodes.NODE_CLASS_MAPPINGS[pack_fixes.REACTOR_NODE]
    if not pack_fixes.reactor_hook_present(node_class):
        return f"ComfyUI-ReActor's module-level {pack_fixes.REACTOR_HOOK}() (pack d93450bd)"
    return _missing(target.folder_paths, "get_folder_paths")


def _apply_reactor_restorers(target: Target) -> None:
    pack_fixes.patch_reactor_restorers(target.nodes.NODE_CLASS_MAPPINGS, target.folder_paths)


def _check_parallel_png(target: Target) -> str | None:
    nodes = target.nodes
    return (
        _missing(nodes, "SaveImage.save_images")
        or _missing(nodes, "Image.fromarray")
        or _names_used(nodes.SaveImage.save_images, "Image", "fromarray", "save")
    )


def _apply_parallel_png(target: Target) -> None:
    fast_save.install(target.nodes)


# What VideoFromComponents.save_to does that video_encode.VideoFile.save does the same way:
# the constants and the names its code uses (ComfyUI 0.3.64).
_SAVE_TO_CONSTANTS = ("h264", "yuv420p", "rgb24", "aac", "flt", "movflags", "use_metadata_tags")
_SAVE_TO_NAMES = ("open", "add_stream", "from_ndarray", "reformat", "encode", "mux", "dumps")


def _video_class(target: Target) -> Any:
    return getattr(getattr(target.comfy_api, "InputImpl", None), "VideoFromComponents", None)


def _check_deferred_video(target: Target) -> str | None:
    video_class = _video_class(target)
    if video_class is None:
        return "comfy_api.latest.InputImpl.VideoFromComponents"
    function: Any = getattr(video_class, "save_to", None)
    if not callable(function) or _missing(video_class, "get_components"):
        return "VideoFromComponents.save_to and get_components"
    code = getattr(inspect.unwrap(function), "__code__", None)
    if code is None:
        return "VideoFromComponents.save_to's code (not a Python function)"
    parameters = list(inspect.signature(function).parameters)
    if parameters != ["self", "path", "format", "codec", "metadata"]:
        return "VideoFromComponents.save_to(self, path, format, codec, metadata)"
    absent = [c for c in _SAVE_TO_CONSTANTS if c not in code.co_consts]
    if absent:
        return f"save_to's {', '.join(absent)} (its stream settings)"
    module = sys.modules.get(video_class.__module__)
    for name in ("VideoContainer", "VideoCodec"):
        if _missing(module, name):
            return f"{name} in VideoFromComponents' module"
    return _names_used(function, *_SAVE_TO_NAMES) or _missing(
        target.folder_paths, "get_output_directory"
    )


def _apply_deferred_video(target: Target) -> None:
    video_class = _video_class(target)
    module = sys.modules[video_class.__module__]
    containers, codecs = module.VideoContainer, module.VideoCodec
    video_save.install(
        video_class,
        target.folder_paths.get_output_directory,
        # save_to raises ValueError for any other: then its own code runs, and raises.
        ((containers.AUTO, containers.MP4), (codecs.AUTO, codecs.H264)),
    )


def _node_class(target: Target, name: str) -> Any:
    """The class of node type ``name`` if its file is loaded (never imports one)."""
    classes = getattr(target.nodes, "NODE_CLASS_MAPPINGS", None)
    return dict.get(classes, name) if isinstance(classes, dict) else None


def _loaded(target: Target, names: tuple[str, ...]) -> bool:
    return all(_node_class(target, name) is not None for name in names)


# The keyword arguments of the one save call SaveAnimatedWEBP and SaveAnimatedPNG make for
# every frame (ComfyUI 0.3.64): what animated_save.AnimatedFile replays in a process.
_ANIMATED_SAVE_KEYWORDS = ("save_all", "append_images")


def _check_deferred_animated(target: Target) -> str | None:
    for name in animated_save.NODES:
        function = getattr(_node_class(target, name), "save_images", None)
        if not inspect.isfunction(function) or function.__closure__ is not None:
            # Run with other globals for one call: ComfyUI's own function, no wrapper.
            return f"{name}.save_images as a plain function"
        keywords = {k for c in function.__code__.co_consts if isinstance(c, tuple) for k in c}
        absent = [k for k in _ANIMATED_SAVE_KEYWORDS if k not in keywords]
        if absent:
            return f"{name}.save_images's save({', '.join(absent)}=...)"
        if _missing(function.__globals__.get("Image"), "fromarray"):
            return f"Image (PIL.Image) in {name}'s module"
        missing = _names_used(function, "Image", "fromarray", "save")
        if missing is not None:
            return f"{name}.save_images's {missing.removeprefix('its ')}"
    return _missing(target.folder_paths, "get_output_directory")


def _apply_deferred_animated(target: Target) -> None:
    for name in animated_save.NODES:
        animated_save.install(_node_class(target, name), target.folder_paths.get_output_directory)


# What SaveWEBM.execute does that webm_save.WebmFile replays in a process (ComfyUI 0.3.64):
# the PyAV names its code uses and its frames' format.
_WEBM_NAMES = ("av", "open", "metadata", "add_stream", "VideoFrame", "from_ndarray", "encode")
_WEBM_NAMES_END = ("mux", "close")


def _check_deferred_webm(target: Target) -> str | None:
    node_class = _node_class(target, webm_save.NODE)
    method = getattr(node_class, "__dict__", {}).get("execute")
    function = getattr(method, "__func__", None)
    if not isinstance(method, classmethod) or not inspect.isfunction(function):
        return "SaveWEBM.execute as a classmethod"
    if function.__closure__ is not None:
        # Run with other globals for one call: ComfyUI's own function, no wrapper.
        return "SaveWEBM.execute as a plain function"
    if "rgb24" not in function.__code__.co_consts:
        return "SaveWEBM.execute's rgb24 frames"
    if _missing(function.__globals__.get("av"), "open"):
        return "av (PyAV) in SaveWEBM's module"
    missing = _names_used(function, *_WEBM_NAMES, *_WEBM_NAMES_END)
    if missing is not None:
        return f"SaveWEBM.execute's {missing.removeprefix('its ')}"
    return _missing(target.folder_paths, "get_output_directory")


def _apply_deferred_webm(target: Target) -> None:
    webm_save.install(_node_class(target, webm_save.NODE), target.folder_paths.get_output_directory)


# What VHS's ffmpeg_process does that vhs_save's encode thread relies on (VHS at the
# image's pin): it starts ffmpeg with subprocess.Popen (recorded, to be killed) and writes
# the metadata file under folder_paths.get_temp_directory() (one folder per encode).
_VHS_PROCESS_NAMES = ("subprocess", "Popen", "folder_paths", "get_temp_directory", "write")


def _check_deferred_vhs(target: Target) -> str | None:
    function = getattr(_node_class(target, vhs_save.NODE), "combine_video", None)
    if not inspect.isfunction(function) or function.__closure__ is not None:
        # Run with other globals for one call: VHS's own function, no wrapper.
        return "VideoCombine.combine_video as a plain function"
    missing = _names_used(function, "ffmpeg_process")
    if missing is not None:
        return f"VideoCombine.combine_video's {missing.removeprefix('its ')}"
    process = function.__globals__.get("ffmpeg_process")
    if not inspect.isgeneratorfunction(process):
        return "ffmpeg_process as a generator function in VideoCombine's module"
    missing = _names_used(process, *_VHS_PROCESS_NAMES)
    if missing is not None:
        return f"ffmpeg_process's {missing.removeprefix('its ')}"
    return None


def _apply_deferred_vhs(target: Target) -> None:
    vhs_save.install(_node_class(target, vhs_save.NODE))


def _check_decoded_inputs(target: Target) -> str | None:
    nodes = target.nodes
    return (
        _missing(nodes, "LoadImage.load_image")
        or _missing(nodes, "LoadImage.IS_CHANGED")
        or _missing(nodes, "Image.open")
        or _missing(nodes, "folder_paths.get_annotated_filepath")
        or _names_used(nodes.LoadImage.load_image, "Image", "open")
    )


def _apply_decoded_inputs(target: Target) -> None:
    decoded_inputs.install(target.nodes)


REGISTRY: tuple[Patch, ...] = (
    Patch(
        name="pack_folder_links",
        phase="before_packs",
        replaces="the folders under folder_paths.models_dir that packs glob themselves "
        f"({', '.join(pack_fixes.HARDWIRED_FOLDERS)}): symlinks to the volume's entries",
        why="ComfyUI-ReActor d93450bd and PuLID_ComfyUI 4e1fd402 read these folders "
        "straight from models_dir and never see a network volume's folders",
        without="those packs see only the image's own files in those folders",
        expects="folder_paths.models_dir, a real folder (a symlinked one is left alone)",
        check=_check_pack_folder_links,
        apply=_apply_pack_folder_links,
    ),
    Patch(
        name="output_scope",
        phase="before_packs",
        replaces="folder_paths.get_save_image_path, folder_paths.get_annotated_filepath "
        "and folder_paths.exists_annotated_filepath (wrapped while a job runs)",
        why="a filename_prefix or a file name made while the graph runs (wired from "
        "another node, a preview's) could write out of the job's folder or read another "
        "job's files in the shared output and temp folders",
        without="literal prefixes and [output]/[temp] names are still held to the job's "
        "folder before the run; values wired while it runs are not",
        expects="folder_paths.get_save_image_path(filename_prefix, output_dir, ...), "
        "get_annotated_filepath(name, default_dir=None), exists_annotated_filepath(name), "
        "called on the module by every save and load node",
        check=_check_output_scope,
        apply=_apply_output_scope,
    ),
    Patch(
        name="output_metadata",
        phase="before_node_init",
        replaces="execution.get_input_data (wrapped: an output node's hidden PROMPT is the "
        "workflow as the user sent it)",
        why="output files embedded the worker's rewrite of the prompt (per-job folders in "
        "file names and prefixes, ComfyUI's is_changed hashes): dropped into ComfyUI they "
        "restored a workflow naming files nobody has",
        without="output files embed the prompt the worker ran, with its per-job names",
        expects="execution.get_input_data(inputs, class_def, unique_id, outputs, dynprompt, "
        "extra_data) returning (input_data_all, missing_keys, hidden_inputs_v3), filling "
        "PROMPT from dynprompt.get_original_prompt()",
        check=_check_output_metadata,
        apply=_apply_output_metadata,
    ),
    Patch(
        name="pack_imports",
        phase="before_node_init",
        replaces="nodes.load_custom_node (wrapped) and nodes.traceback (a stand-in whose "
        "format_exc also hands the exception over)",
        why="a job that names a node type of a pack that failed to import is told which "
        "pack and its import error, not only that the type does not exist",
        without="such a job hears that the node type is not installed; the cause stays "
        "in the boot log",
        expects="async def nodes.load_custom_node(module_path, ignore, module_parent), "
        "calling traceback.format_exc() when an import fails",
        check=_check_pack_imports,
        apply=_apply_pack_imports,
    ),
    Patch(
        name="headless_server",
        phase="before_node_init",
        replaces="server.PromptServer.instance (a HeadlessPromptServer: no HTTP, no "
        "WebSocket; messages go to the running job)",
        why="ComfyUI's executor, its nodes and many packs reach for the running server; "
        "the worker runs no server",
        without="nothing: ComfyUI cannot run a prompt without a server object, so this "
        "patch cannot be skipped",
        expects="server.PromptServer and execution.PromptQueue",
        check=_check_headless_server,
        apply=_apply_headless_server,
        can_skip=False,
    ),
    Patch(
        name="lazy_nodes",
        phase="before_node_init",
        replaces="nodes.NODE_CLASS_MAPPINGS and nodes.NODE_DISPLAY_NAME_MAPPINGS (lazy "
        "dicts), and nodes.load_custom_node while nodes.init_extra_nodes runs",
        why="ComfyUI imports all of its ~96 own node files and every custom node pack at "
        "every start; a boot with the node index imports one (a pack: one whose import "
        "patched nothing, LAZY_PACKS) when a job first names one of its types",
        without="every node file and pack is imported at boot, as ComfyUI does (a slower "
        "cold start)",
        expects="nodes.NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS as dicts, "
        "nodes.init_extra_nodes, async def nodes.load_custom_node(module_path, ignore, "
        "module_parent)",
        check=_check_lazy_nodes,
        apply=_apply_lazy_nodes,
    ),
    Patch(
        name="folder_paths_restore",
        phase="after_node_init",
        replaces="entries of folder_paths.folder_names_and_paths that packs replaced at "
        "import (the model paths files' folders are put back)",
        why="packs that set a folder's list at import drop the network volume's folders "
        "the model paths files added",
        without="those folders list only what the packs set",
        expects="folder_paths.folder_names_and_paths as a dict of (paths, extensions), "
        "folder_paths.models_dir",
        check=_check_folder_paths_restore,
        apply=_apply_folder_paths_restore,
        after_lazy_pack=True,
    ),
    Patch(
        name="reactor_restorers",
        phase="after_node_init",
        replaces="ComfyUI-ReActor's module global get_restorers()",
        why="ReActor d93450bd downloads four face restorers while a workflow is validated "
        "when its one folder holds none; an offline worker fails each such job",
        without="ReActor lists its own folder only and downloads when it is empty",
        expects="ReActorFaceSwap's module with a function get_restorers (pack d93450bd)",
        check=_check_reactor_restorers,
        apply=_apply_reactor_restorers,
        in_use=_reactor_loaded,
        after_lazy_pack=True,
    ),
    Patch(
        name="parallel_png",
        phase="after_node_init",
        replaces="nodes.SaveImage.save_images (wrapped: nodes.Image points, for one "
        "call, at a stand-in whose images save in encoder processes)",
        why="a batch's PNGs encode one after the other in ComfyUI; here side by side, same bytes",
        without="a batch's PNGs are encoded one after the other, as ComfyUI does",
        expects="nodes.SaveImage.save_images looking up Image.fromarray and calling "
        "save on the image; nodes.Image is PIL.Image",
        check=_check_parallel_png,
        apply=_apply_parallel_png,
    ),
    Patch(
        name="deferred_video",
        phase="after_node_init",
        replaces="comfy_api's VideoFromComponents.save_to (wrapped: while another job is in "
        "flight, a file under the output folder is encoded in a helper process after the "
        "node returns)",
        why="SaveVideo's H.264 encode ran on the engine thread for seconds, time the next "
        "job's run waited",
        without="SaveVideo encodes on the engine thread, as ComfyUI does; the next job waits",
        expects="VideoFromComponents.save_to(self, path, format, codec, metadata) encoding "
        "with PyAV: av.open(movflags=use_metadata_tags), json.dumps metadata, h264 yuv420p "
        "from rgb24 frames, aac audio; get_components(); VideoContainer and VideoCodec in "
        "its module; folder_paths.get_output_directory",
        check=_check_deferred_video,
        apply=_apply_deferred_video,
    ),
    Patch(
        name="deferred_animated",
        phase="after_node_init",
        replaces="comfy_extras' SaveAnimatedWEBP.save_images and SaveAnimatedPNG.save_images "
        "(wrapped: while another job is in flight, ComfyUI's own code runs with a Pillow "
        "stand-in whose save of a file under the output folder goes to a helper process)",
        why="the Pillow encode of every frame (WEBP, APNG) ran on the engine thread for "
        "seconds, time the next job's run waited",
        without="SaveAnimatedWEBP and SaveAnimatedPNG encode on the engine thread, as ComfyUI "
        "does; the next job waits",
        expects="SaveAnimatedWEBP.save_images and SaveAnimatedPNG.save_images as plain "
        "functions looking Image (PIL.Image) up in their module, making each frame with "
        "Image.fromarray and writing all with one save(path, save_all=True, "
        "append_images=...); folder_paths.get_output_directory",
        check=_check_deferred_animated,
        apply=_apply_deferred_animated,
        node_types=animated_save.NODES,
    ),
    Patch(
        name="deferred_webm",
        phase="after_node_init",
        replaces="comfy_extras' SaveWEBM.execute (wrapped: while another job is in flight, "
        "ComfyUI's own code runs with a PyAV recorder, and the WebM it describes is encoded "
        "in a helper process after the node returns)",
        why="SaveWEBM's VP9 / AV1 encode ran on the engine thread for seconds, time the next "
        "job's run waited",
        without="SaveWEBM encodes on the engine thread, as ComfyUI does; the next job waits",
        expects="SaveWEBM.execute as a classmethod of a plain function looking av (PyAV) up in "
        "its module: av.open(path, mode='w'), container.metadata, add_stream(codec, rate=...), "
        "the stream's width, height, pix_fmt, bit_rate and options, "
        "av.VideoFrame.from_ndarray(format='rgb24'), encode, mux, close; "
        "folder_paths.get_output_directory",
        check=_check_deferred_webm,
        apply=_apply_deferred_webm,
        node_types=(webm_save.NODE,),
    ),
    Patch(
        name="deferred_vhs",
        phase="after_node_init",
        replaces="ComfyUI-VideoHelperSuite's VideoCombine.combine_video (wrapped: while "
        "another job is in flight, VHS's own code runs with an ffmpeg_process stand-in "
        "that feeds VHS's own generator on a thread through a bounded queue, and the file "
        "is waited for after the run)",
        why="VHS_VideoCombine waited on the engine thread until ffmpeg had encoded the whole "
        "video, time the next job's run waited",
        without="VHS_VideoCombine waits for ffmpeg on the engine thread, as VHS does; the "
        "next job waits",
        expects="VideoCombine.combine_video as a plain function calling its module's "
        "generator function ffmpeg_process(args, video_format, video_metadata, file_path, "
        "env), which starts ffmpeg with subprocess.Popen, writes each frame to its stdin and "
        "its metadata file under folder_paths.get_temp_directory()",
        check=_check_deferred_vhs,
        apply=_apply_deferred_vhs,
        node_types=(vhs_save.NODE,),
    ),
    Patch(
        name="decoded_inputs",
        phase="after_node_init",
        replaces="nodes.LoadImage.load_image and nodes.LoadImage.IS_CHANGED (wrapped)",
        why="LoadImage decodes and hashes again an input image the input step already "
        "decoded and hashed",
        without="LoadImage opens and hashes the file from disk, as ComfyUI does",
        expects="nodes.LoadImage.load_image looking up Image.open; LoadImage.IS_CHANGED; "
        "nodes.folder_paths.get_annotated_filepath",
        check=_check_decoded_inputs,
        apply=_apply_decoded_inputs,
    ),
)
"""Every patch, in the order boot applies them."""

NAMES: tuple[str, ...] = tuple(p.name for p in REGISTRY)


def patch_named(name: str) -> Patch:
    """The registry's entry called ``name``; ``KeyError`` if there is none."""
    for patch in REGISTRY:
        if patch.name == name:
            return patch
    raise KeyError(name)


@dataclass
class Patches:
    """The patches of one boot: which were applied, switched off or skipped, and why."""

    off: frozenset[str] = frozenset()
    """``COMFY_PATCHES_OFF``: names never applied."""
    registry: tuple[Patch, ...] = REGISTRY
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Name -> what of the expected shape was missing."""
    not_in_use: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    """Patches of node types whose file loads on first use: applied when it does."""

    def __post_init__(self) -> None:
        known = {p.name for p in self.registry}
        unknown = sorted(self.off - known)
        if unknown:
            raise RuntimeBootError(
                f"COMFY_PATCHES_OFF names {', '.join(unknown)}, which is no patch",
                [f"Use names from: {', '.join(p.name for p in self.registry)}"],
            )
        fixed = sorted(p.name for p in self.registry if p.name in self.off and not p.can_skip)
        if fixed:
            raise RuntimeBootError(
                f"COMFY_PATCHES_OFF names {', '.join(fixed)}, which cannot be switched off: "
                "ComfyUI cannot run a prompt without it in this worker",
                ["Remove it from COMFY_PATCHES_OFF"],
            )

    def apply_phase(self, phase: Phase, target: Target) -> None:
        """Check and apply every patch of ``phase``, in the registry's order."""
        for patch in self.registry:
            if patch.phase == phase:
                self.apply(patch, target)

    def apply(self, patch: Patch, target: Target) -> bool:
        """Check ``patch`` against ``target`` and apply it if its shape is there; whether it was."""
        if patch.name in self.off:
            log.info("patch %s is off (COMFY_PATCHES_OFF): %s", patch.name, patch.without)
            return False
        if not patch.in_use(target):
            self.not_in_use.append(patch.name)
            log.debug("patch %s: what it fixes is not loaded", patch.name)
            return False
        if patch.node_types and not _loaded(target, patch.node_types):
            if patch.name not in self.waiting:
                self.waiting.append(patch.name)
            log.debug("patch %s waits for the file of %s", patch.name, ", ".join(patch.node_types))
            return False
        missing = patch.check(target)
        if missing is not None:
            if not patch.can_skip:
                raise RuntimeBootError(
                    f"ComfyUI has no {missing}, which the worker's {patch.name} patch needs "
                    "and cannot run without",
                    [
                        "Move the ComfyUI pin back (comfyui/pin.env), or update the patch in "
                        "engine/runtime/patches.py to this ComfyUI (docs/maintenance.md)"
                    ],
                )
            self.skipped[patch.name] = missing
            log.warning(
                "patch %s skipped: this ComfyUI has no %s (expected: %s); %s",
                patch.name,
                missing,
                patch.expects,
                patch.without,
            )
            return False
        patch.apply(target)
        self.applied.append(patch.name)
        return True

    def after_lazy_load(self, target: Target, group: str) -> None:
        """Once a file deferred at boot has loaded (``lazy_nodes``; ``group``: ComfyUI's
        ``module_parent``): each patch waiting for node types it defined, checked and
        applied now; after a pack, the pack fixes again (:meth:`after_lazy_pack`)."""
        for patch in self.registry:
            if patch.name in self.waiting and _loaded(target, patch.node_types):
                self.waiting.remove(patch.name)
                self.apply(patch, target)
        if group == PACKS:
            self.after_lazy_pack(target)

    def after_lazy_pack(self, target: Target) -> None:
        """Once a deferred pack has loaded: its patches of phase ``after_node_init`` again
        (a folder it replaced put back; its fix, now that it is there)."""
        for patch in self.registry:
            if not patch.after_lazy_pack or patch.name in self.skipped or patch.name in self.off:
                continue
            if patch.name in self.not_in_use and patch.in_use(target):
                self.not_in_use.remove(patch.name)
            if patch.name in self.applied:
                patch.apply(target)  # its check passed at boot; the shape is ComfyUI's
            elif patch.name not in self.not_in_use:
                self.apply(patch, target)

    def is_applied(self, name: str) -> bool:
        """Whether the patch called ``name`` is in force."""
        return name in self.applied

    def summary(self) -> str:
        """One line for the boot log: in force, off, skipped."""
        parts = [f"in force: {', '.join(self.applied) or 'none'}"]
        off = [p.name for p in self.registry if p.name in self.off]
        if off:
            parts.append(f"off: {', '.join(off)}")
        if self.skipped:
            parts.append(f"skipped: {', '.join(self.skipped)}")
        if self.not_in_use:
            parts.append(f"not needed: {', '.join(self.not_in_use)}")
        if self.waiting:
            parts.append(f"waiting for their node files: {', '.join(self.waiting)}")
        return "; ".join(parts)
