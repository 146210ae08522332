"""The worker's extra model path files, read the way ComfyUI reads them.

ComfyUI loads ``comfyui/extra_model_paths.yaml`` and ``EXTRA_MODEL_PATHS`` itself
(``utils.extra_config``) and keeps only the merged result; the boot fixes of
:mod:`engine.runtime.pack_fixes` need to know what the files asked for (their base
folders, and each folder name's folders) to put it back after packs change it.
Plain Python: nothing here imports ComfyUI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelPaths:
    """What the worker's model path files register, as ComfyUI reads them."""

    bases: tuple[Path, ...] = ()
    """Each section's ``base_path``, in file order."""
    folders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """ComfyUI folder name -> the folders the files add to it, in order."""
    defaults: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The part of ``folders`` from sections marked ``is_default`` (ComfyUI puts them first)."""


def parse_model_paths(config: Mapping[str, Any], yaml_dir: Path) -> ModelPaths:
    """The folders one parsed extra_model_paths file adds, as ComfyUI 0.3.64 adds them.

    Mirrors ``utils/extra_config.load_extra_path_config``: ``base_path`` with ``~`` and
    ``$VARS`` expanded, relative to the file's folder; each value one subfolder per
    line; paths normalised; ``unet``/``clip`` mapped to their new names.
    """
    bases: list[Path] = []
    folders: dict[str, list[str]] = {}
    defaults: dict[str, list[str]] = {}
    for section in config.values():
        if not isinstance(section, Mapping):
            continue
        base: str | None = None
        raw_base = section.get("base_path")
        if isinstance(raw_base, str):
            # ComfyUI expands the process's variables here; so must the copy of its rule.
            expanded = Path(os.path.expandvars(Path(raw_base).expanduser()))
            base = os.path.normpath(yaml_dir / expanded)  # an absolute one stays whole
            bases.append(Path(base))
        is_default = bool(section.get("is_default", False))
        for key, value in section.items():
            if key in ("base_path", "is_default") or not isinstance(value, str):
                continue
            name = _map_legacy(str(key))
            for line in value.split("\n"):
                if not line:
                    continue
                # Relative to the base, else to the file's folder; absolute lines stay.
                path = os.path.normpath(Path(base or yaml_dir) / line)
                _append_new(folders.setdefault(name, []), path)
                if is_default:
                    _append_new(defaults.setdefault(name, []), path)
    return ModelPaths(
        bases=tuple(dict.fromkeys(bases)),
        folders={k: tuple(v) for k, v in folders.items()},
        defaults={k: tuple(v) for k, v in defaults.items()},
    )


def read_model_paths(files: Sequence[Path | None]) -> ModelPaths:
    """:func:`parse_model_paths` over each file that exists, merged in order."""
    import yaml  # ComfyUI's own requirement; it reads these files with it too

    merged = ModelPaths()
    for file in files:
        if file is None or not file.is_file():
            continue
        config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if isinstance(config, Mapping):
            merged = _merge(merged, parse_model_paths(config, file.absolute().parent))
    return merged


def _map_legacy(name: str) -> str:
    # folder_paths.map_legacy in ComfyUI 0.3.64.
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(name, name)


def _append_new(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _merge(a: ModelPaths, b: ModelPaths) -> ModelPaths:
    def join(
        x: Mapping[str, tuple[str, ...]], y: Mapping[str, tuple[str, ...]]
    ) -> dict[str, tuple[str, ...]]:
        return {k: tuple(dict.fromkeys([*x.get(k, ()), *y.get(k, ())])) for k in {**x, **y}}

    return ModelPaths(
        bases=tuple(dict.fromkeys([*a.bases, *b.bases])),
        folders=join(a.folders, b.folders),
        defaults=join(a.defaults, b.defaults),
    )
