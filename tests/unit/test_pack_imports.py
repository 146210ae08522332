"""Failed node-pack imports, recorded at boot and named in job errors (pack_imports)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import textwrap
import types
from pathlib import Path

import pytest

from engine.runtime.pack_imports import PackImports, watch

# What ComfyUI 0.3.64's nodes.load_custom_node does with a pack that raises: log the
# traceback and a line, return False (nodes.py, load_custom_node's last except block).
_NODES_SOURCE = textwrap.dedent(
    """
    import importlib.util, logging, os, sys, traceback

    async def load_custom_node(module_path, ignore=set(), module_parent="custom_nodes"):
        try:
            init = os.path.join(module_path, "__init__.py")
            spec = importlib.util.spec_from_file_location(os.path.basename(module_path), init)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return hasattr(module, "NODE_CLASS_MAPPINGS")
        except Exception as e:
            logging.warning(traceback.format_exc())
            logging.warning(f"Cannot import {module_path} module for custom nodes: {e}")
            return False
    """
)


def fake_nodes(root: Path) -> types.ModuleType:
    """A module standing in for ComfyUI's ``nodes``, imported from a file."""
    path = root / "fake_comfy_nodes.py"
    path.write_text(_NODES_SOURCE)
    spec = importlib.util.spec_from_file_location("fake_comfy_nodes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(root: Path, name: str, source: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(source))
    return folder


def test_a_pack_that_raises_is_recorded_with_its_error_whatever_the_log_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = fake_nodes(tmp_path)
    record = watch(nodes, PackImports())
    broken = pack(tmp_path, "broken-pack", "import not_a_module_anywhere\n")
    good = pack(tmp_path, "good-pack", "NODE_CLASS_MAPPINGS = {}\n")
    caplog.set_level(logging.CRITICAL)  # COMFY_LOG_LEVEL=CRITICAL: ComfyUI's lines vanish
    assert asyncio.run(nodes.load_custom_node(str(broken))) is False
    assert asyncio.run(nodes.load_custom_node(str(good))) is True
    (failed,) = record.failed
    assert failed.path == broken and failed.group == "custom_nodes"
    assert failed.error == "ModuleNotFoundError: No module named 'not_a_module_anywhere'"


def test_watching_twice_wraps_once(tmp_path: Path) -> None:
    nodes = fake_nodes(tmp_path)
    record = PackImports()
    watch(nodes, record)
    watch(nodes, record)
    asyncio.run(nodes.load_custom_node(str(pack(tmp_path, "p", "raise ImportError('x')\n"))))
    assert len(record.failed) == 1


def test_an_unknown_type_names_the_failed_pack_that_holds_it(tmp_path: Path) -> None:
    record = PackImports()
    folder = pack(
        tmp_path,
        "rgthree-comfy",
        """
        NAMESPACE = 'rgthree'
        def get_name(name):
            return '{} ({})'.format(name, NAMESPACE)
        NAME = get_name('SDXL Empty Latent Image')
        """,
    )
    record.record(folder, "custom_nodes", "ImportError: cannot import name 'x' from 'y'")
    line = record.describe_unknown("SDXL Empty Latent Image (rgthree)", ["5"])
    assert line.startswith(
        "Node type 'SDXL Empty Latent Image (rgthree)' is not available (used by node 5): "
        "the node pack that provides it failed to import at boot: rgthree-comfy "
        "(ImportError: cannot import name 'x' from 'y')"
    )


def test_an_unknown_type_no_failed_pack_holds_is_not_installed_and_failures_are_listed(
    tmp_path: Path,
) -> None:
    record = PackImports()
    assert record.describe_unknown("Nope", ["1", "2"]) == (
        "Node type 'Nope' is not installed (used by nodes 1, 2): install the custom node "
        "pack that provides it, or fix class_type"
    )
    folder = pack(tmp_path, "other-pack", "NODE = 'SomethingElse'\n")
    record.record(folder, "custom_nodes", "ImportError: no")
    record.record(tmp_path / "nodes_audio.py", "comfy_extras", "ImportError: torchaudio")
    assert record.describe_unknown("Nope", ["1"]).endswith(
        "or fix class_type (node packs that failed to import at boot: other-pack (ImportError: no))"
    )
