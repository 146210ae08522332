"""Narrow fixes for custom node packs that assume a desktop ComfyUI with internet.

The worker runs offline, with models in more places than ``<ComfyUI>/models``
(``comfyui/extra_model_paths.yaml``: the image, then a RunPod network volume). The
packs of ``comfyui/custom_nodes.json`` read some folders straight from
``folder_paths.models_dir``, replace the yaml's entries at import, or download
models while a workflow is validated. Three fixes, each a patch of
:mod:`engine.runtime.patches` (which applies them at boot, checks their shape first,
and lets ``COMFY_PATCHES_OFF`` switch them off); nothing here imports ComfyUI itself:

- ``pack_folder_links`` (:func:`link_model_folders`), before any pack imports: links
  volume entries into the folders packs hard-wire (:func:`link_hardwired_folders`).
- ``folder_paths_restore`` (:func:`restore_folder_paths`), once the packs have loaded:
  puts the yaml's folders back (:func:`reconcile_folder_paths`).
- ``reactor_restorers`` (:func:`patch_reactor_restorers`): stops ReActor's downloads.

Each fix names the pack and the commit it was written against. A fix whose hook is
gone (the pack changed) logs a warning and leaves the pack as it is.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runtime.comfy_folders import marked
from engine.runtime.model_paths import ModelPaths

log = logging.getLogger(__name__)

HARDWIRED_FOLDERS: tuple[str, ...] = (
    # ComfyUI-ReActor d93450bd: swap models are globbed from insightface/, reswapper/ and
    # hyperswap/; face analysis (buffalo_l) loads from insightface/models/; face models
    # from reactor/faces/; the NSFW detector from nsfw_detector/; get_restorers() globs
    # facerestore_models/ and downloads four restorers when it finds none there.
    # PuLID_ComfyUI 4e1fd402: antelopev2 loads from insightface/models/.
    "insightface",
    "insightface/models",
    "reswapper",
    "hyperswap",
    "facerestore_models",
    "reactor/faces",
    "nsfw_detector",
)
"""Folders under ``models_dir`` that packs read without asking ``folder_paths``.

A folder listed inside another (``insightface/models``) is kept a real directory, so
entries from several bases can meet in it."""

_NOT_MODEL_FOLDERS = frozenset({"custom_nodes"})
"""Yaml keys that name no model folder (``custom_nodes`` lives beside ``models``)."""

_RESTORER_SUFFIXES = (".pth", ".onnx")
"""What ReActor d93450bd's ``get_restorers()`` keeps of ``facerestore_models/*``."""

_RESTORERS = "facerestore_models"
REACTOR_NODE = "ReActorFaceSwap"
REACTOR_HOOK = "get_restorers"
_NAMES_LOGGED = 8
"""Entries named in the summary line; more are counted."""


# -- fix 1: folders packs hard-wire under models_dir -------------------------------------


@dataclass
class LinkReport:
    """What :func:`link_hardwired_folders` did, by path under ``models_dir``."""

    linked: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Links made at an earlier boot that still point where they should."""
    shadowed: list[str] = field(default_factory=list)
    """Entries of a base hidden by the image's own, or an earlier base's, of that name."""
    removed: list[str] = field(default_factory=list)
    """Links made at an earlier boot whose target is gone."""
    skipped: list[str] = field(default_factory=list)
    """Folders left alone, with the reason."""

    def summary(self) -> str:
        """One line for the boot log."""
        parts = [f"linked {len(self.linked)}{_names(self.linked)}"]
        if self.kept:
            parts.append(f"kept {len(self.kept)} from earlier boots")
        if self.shadowed:
            parts.append(
                f"{len(self.shadowed)} shadowed by an earlier folder{_names(self.shadowed)}"
            )
        if self.removed:
            parts.append(f"removed {len(self.removed)} stale links{_names(self.removed)}")
        if self.skipped:
            parts.append(f"skipped {'; '.join(self.skipped)}")
        return ", ".join(parts)


def link_hardwired_folders(
    models_dir: Path, bases: Sequence[Path], folders: Sequence[str] = HARDWIRED_FOLDERS
) -> LinkReport:
    """Make each entry of ``<base>/<folder>`` visible as ``<models_dir>/<folder>/<name>``.

    For packs that read ``models_dir`` directly and never see the yaml's other bases
    (a network volume). The image's own entries win, then bases in order; a real file
    is never replaced. Links left by an earlier boot whose target is gone (the volume
    not mounted) are removed first: a link is the worker's when its target ends in
    the same ``<folder>/<name>``. Nothing is written through a symlink, so a
    ``models_dir`` that is itself a link (to a volume) is left alone.
    """
    report = LinkReport()
    if models_dir.is_symlink():
        report.skipped.append(f"{models_dir} (a symlink: its target is not the image's)")
        return report
    home = _real(models_dir)
    sources = [b for b in dict.fromkeys(bases) if _real(b) != home]
    ordered = list(dict.fromkeys(folders))
    declared = set(ordered)
    # Parents first (stable, so the declared order breaks ties): a nested declared
    # folder is created inside its parent as a real directory, never linked whole.
    for folder in sorted(ordered, key=lambda f: f.count("/")):
        if _crosses_symlink(models_dir, folder):
            report.skipped.append(f"{folder}/ (a symlink)")
            continue
        try:
            _link_folder(models_dir / folder, folder, sources, declared, report)
        except OSError as exc:
            report.skipped.append(f"{folder}/ ({type(exc).__name__}: {exc})")
    return report


def _link_folder(
    target: Path, folder: str, sources: Sequence[Path], declared: set[str], report: LinkReport
) -> None:
    _remove_stale_links(target, folder, report)
    # Per entry name, every base that has one, in search order: the first wins.
    candidates: dict[str, list[Path]] = {}
    for base in sources:
        if not (base / folder).is_dir():
            continue
        for entry in sorted((base / folder).iterdir()):
            name = entry.name
            if name.startswith(".") or f"{folder}/{name}" in declared:
                continue
            candidates.setdefault(name, []).append(entry)
    if candidates:
        target.mkdir(parents=True, exist_ok=True)
    for name, (winner, *others) in candidates.items():
        label = f"{folder}/{name}"
        report.shadowed.extend([label] * len(others))
        _link_one(winner, target / name, label, report)


def _link_one(source: Path, link: Path, label: str, report: LinkReport) -> None:
    if link.is_symlink():
        if link.readlink() == source:
            report.kept.append(label)
            return
        if not _made_by_worker(link, label):
            report.shadowed.append(label)
            return
        # An earlier boot linked a later base's entry; an earlier base now has one.
        link.unlink()
    elif link.exists():
        report.shadowed.append(label)  # the image's own file wins
        return
    try:
        link.symlink_to(source, target_is_directory=source.is_dir())
    except FileExistsError:  # another process made it between the check and here
        report.shadowed.append(label)
        return
    report.linked.append(label)


def _remove_stale_links(target: Path, folder: str, report: LinkReport) -> None:
    if not target.is_dir():
        return
    for entry in sorted(target.iterdir()):
        label = f"{folder}/{entry.name}"
        if entry.is_symlink() and not entry.exists() and _made_by_worker(entry, label):
            entry.unlink()
            report.removed.append(label)


def _made_by_worker(link: Path, label: str) -> bool:
    """The worker's links end where they sit: ``<folder>/<name>`` under some base."""
    tail = Path(label).parts
    return link.readlink().parts[-len(tail) :] == tail


def _crosses_symlink(models_dir: Path, folder: str) -> bool:
    path = models_dir
    for part in Path(folder).parts:
        path = path / part
        if path.is_symlink():
            return True
    return False


# -- fix 2: the yaml's folders after packs replaced them --------------------------------


def reconcile_folder_paths(
    folder_names_and_paths: MutableMapping[str, Any], models_dir: str, wanted: ModelPaths
) -> dict[str, str]:
    """Make each yaml folder name search ComfyUI's own folder first, then the yaml's.

    ComfyUI-ReActor d93450bd replaces ``facerestore_models`` with its own folder only;
    PuLID_ComfyUI 4e1fd402 keeps only the yaml's ``pulid`` folders when the yaml
    registered the name first (so ``<models_dir>/pulid`` is lost wherever ComfyUI is
    not at the yaml's image base). For each folder name of ``wanted``: the yaml's
    ``is_default`` folders, then ComfyUI's own (under ``models_dir``; ``<models_dir>/
    <name>`` when there is none), then what packs added, then the yaml's missing ones.
    The extensions stay the current ones (a pack's). Returns what changed, by name.
    """
    home = Path(os.path.normpath(models_dir))
    changed: dict[str, str] = {}
    for name, paths in wanted.folders.items():
        if name in _NOT_MODEL_FOLDERS:
            continue
        current, extensions = folder_names_and_paths.get(name, ([], set()))
        current = [os.path.normpath(p) for p in current]
        first = list(wanted.defaults.get(name, ()))
        own = [p for p in current if Path(p).parent == home and p not in first]
        rest = [p for p in current if p not in first and p not in own]
        done = []
        if not own:
            own = [str(home / name)]
            done.append(f"added {own[0]}")
        missing = [p for p in paths if p not in current]
        if missing:
            done.append(f"put back {len(missing)} yaml folders")
        merged = list(dict.fromkeys([*first, *own, *rest, *paths]))
        if merged != current:
            folder_names_and_paths[name] = (merged, extensions)
            changed[name] = ", ".join(done) or "put ComfyUI's own folder first"
    return changed


# -- fix 3: ReActor's face restorers, listed, never downloaded ---------------------------


def list_restorers(folders: Sequence[str]) -> list[str]:
    """Face restorer files at the top of ``folders``, the first of each name winning.

    The listing ReActor d93450bd's ``get_restorers()`` makes of
    ``<models_dir>/facerestore_models/*`` (full paths ending in ``.pth`` or ``.onnx``; its
    nodes offer the base names and find the file again with ``folder_paths``), over
    every folder of the name instead of one, and without its download when none is found.
    """
    found: dict[str, str] = {}
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # absent (a volume not mounted) or unreadable: nothing there
            continue
        for entry in entries:
            if entry.name.endswith(_RESTORER_SUFFIXES) and entry.is_file():
                found.setdefault(entry.name, entry.path)
    return list(found.values())


def patch_reactor_restorers(node_class_mappings: Mapping[str, Any], folder_paths: Any) -> bool:
    """Replace ReActor's ``get_restorers`` with a listing that never downloads.

    ComfyUI-ReActor d93450bd calls ``get_restorers()`` from ``INPUT_TYPES`` of
    ReActorFaceSwap, ReActorFaceSwapOpt, ReActorFaceBoost and ReActorRestoreFace(Advanced), so
    during every validation; when its one folder holds no restorer it downloads four
    from huggingface, and an offline worker fails each such job with a URLError. The
    replacement lists every ``facerestore_models`` folder of ``folder_paths``. Returns
    whether it was applied.

    It reads the folders directly rather than through ``get_filename_list``: that
    call is what ``comfy_folders.folders_backing_input`` records to say where a missing
    file was looked for, and an empty restorer listing recorded inside ReActorFaceSwap's
    ``INPUT_TYPES`` would be reported as where its swap model was looked for.
    """
    node_class = node_class_mappings.get(REACTOR_NODE)
    if node_class is None:
        log.debug("ComfyUI-ReActor is not loaded; its restorer fix does not apply")
        return False
    namespace = _module_namespace(node_class)
    if namespace is None or not callable(namespace.get(REACTOR_HOOK)):
        log.warning(
            "ComfyUI-ReActor is loaded but its module has no %s(): the pack changed since "
            "d93450bd, and its nodes may download face restorers while validating. Check "
            "engine/runtime/pack_fixes.py against the pinned commit",
            REACTOR_HOOK,
        )
        return False

    def get_restorers() -> list[str]:
        try:
            folders = folder_paths.get_folder_paths(_RESTORERS)
        except KeyError:  # no pack registered the name
            folders = []
        return list_restorers(folders)

    namespace[REACTOR_HOOK] = get_restorers
    log.info(
        "ComfyUI-ReActor: face restorers are listed from every facerestore_models folder, "
        "never downloaded"
    )
    return True


def _module_namespace(node_class: Any) -> dict[str, Any] | None:
    """The globals a node class's methods read: its module's, even once out of sys.modules.

    ReActor's ``__init__`` deletes the modules it imported (``nodes`` among them) from
    ``sys.modules``; the class's ``INPUT_TYPES`` still reads the module's dict.
    """
    module = sys.modules.get(getattr(node_class, "__module__", ""))
    if module is not None:
        return vars(module)
    method = node_class.__dict__.get("INPUT_TYPES")
    function = getattr(method, "__func__", method)
    namespace = getattr(function, "__globals__", None)
    if isinstance(namespace, dict) and namespace.get("__name__") == node_class.__module__:
        return namespace
    return None


# -- where packs look for a file (for "file not found; looked in: ...") -----------------

_SWAP_MODEL_FOLDERS = ("insightface", "reswapper", "hyperswap")
_HARDWIRED_INPUTS: dict[tuple[str, str], tuple[str, ...]] = {
    # ComfyUI-ReActor d93450bd builds these lists with glob, not folder_paths, so
    # comfy_folders.folders_backing_input cannot see where they come from. Folder names
    # under models_dir, or "folder_paths:<name>" for a folder_paths name (the restorers,
    # listed by patch_reactor_restorers from every facerestore_models folder).
    ("ReActorFaceSwap", "swap_model"): _SWAP_MODEL_FOLDERS,
    ("ReActorFaceSwapOpt", "swap_model"): _SWAP_MODEL_FOLDERS,
    ("ReActorFaceSwap", "face_restore_model"): (f"folder_paths:{_RESTORERS}",),
    ("ReActorFaceSwapOpt", "face_restore_model"): (f"folder_paths:{_RESTORERS}",),
    ("ReActorRestoreFace", "model"): (f"folder_paths:{_RESTORERS}",),
    ("ReActorRestoreFaceAdvanced", "model"): (f"folder_paths:{_RESTORERS}",),
    ("ReActorFaceBoost", "boost_model"): (f"folder_paths:{_RESTORERS}",),
    ("ReActorLoadFaceModel", "face_model"): ("reactor/faces",),
}


def hardwired_input_folders(
    folder_paths: Any, class_type: str, input_name: str
) -> list[str] | None:
    """The folders a pack lists for ``input_name`` without ``folder_paths``, if it is one.

    None for every other input: ``comfy_folders.folders_backing_input`` finds those.
    """
    names = _HARDWIRED_INPUTS.get((class_type, input_name))
    if names is None:
        return None
    folders: list[str] = []
    for name in names:
        if name.startswith("folder_paths:"):
            try:
                folders.extend(folder_paths.get_folder_paths(name.partition(":")[2]))
            except KeyError:  # the pack did not register it
                continue
        else:
            folders.append(str(Path(folder_paths.models_dir) / name))
    return [marked(f) for f in folders]


# -- what the patch registry applies (engine/runtime/patches.py) ----------------------


def link_model_folders(folder_paths: Any, model_paths: ModelPaths) -> LinkReport:
    """Boot, once the model path files are loaded and before any pack imports: the
    volume's entries linked into the folders packs hard-wire (``pack_folder_links``)."""
    models_dir = Path(folder_paths.models_dir)
    report = link_hardwired_folders(models_dir, model_paths.bases)
    log.info("pack folders in %s: %s", models_dir, report.summary())
    return report


def restore_folder_paths(folder_paths: Any, model_paths: ModelPaths) -> dict[str, str]:
    """Boot, once the packs have loaded: the model path files' folders put back where a
    pack replaced them (``folder_paths_restore``). What changed, by folder name."""
    changed = reconcile_folder_paths(
        folder_paths.folder_names_and_paths, folder_paths.models_dir, model_paths
    )
    cache = getattr(folder_paths, "filename_list_cache", {})
    for name in changed:
        # Its staleness check notices added folders only, not reordered or dropped ones.
        cache.pop(name, None)
    if changed:
        log.info(
            "model paths after custom nodes: %s",
            "; ".join(f"{name}: {what}" for name, what in sorted(changed.items())),
        )
    return changed


def reactor_hook_present(node_class: Any) -> bool:
    """Whether ReActor's node module still has the ``get_restorers()`` it was written for."""
    namespace = _module_namespace(node_class)
    return namespace is not None and callable(namespace.get(REACTOR_HOOK))


# -- helpers ---------------------------------------------------------------------------


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _names(labels: Sequence[str]) -> str:
    if not labels:
        return ""
    shown = ", ".join(labels[:_NAMES_LOGGED])
    more = f" and {len(labels) - _NAMES_LOGGED} more" if len(labels) > _NAMES_LOGGED else ""
    return f" ({shown}{more})"
