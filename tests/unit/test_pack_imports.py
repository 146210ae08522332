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
        "pack that provides it (scripts/add_custom_nodes.py <repository URL>@<commit>; "
        "scripts/workflow_needs.py names the packs a workflow needs), or fix class_type"
    )
    folder = pack(tmp_path, "other-pack", "NODE = 'SomethingElse'\n")
    record.record(folder, "custom_nodes", "ImportError: no")
    record.record(tmp_path / "nodes_audio.py", "comfy_extras", "ImportError: torchaudio")
    assert record.describe_unknown("Nope", ["1"]).endswith(
        "or fix class_type (node packs that failed to import at boot: other-pack (ImportError: no))"
    )


def test_a_missing_module_is_named_with_its_requirement_and_the_bake_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A volume pack that needs more than the image: module, requirement, one command."""
    import subprocess

    nodes = fake_nodes(tmp_path)
    record = watch(nodes, PackImports())
    folder = pack(
        tmp_path, "ComfyUI-Rembg-Pack", "import rembg_not_here\nNODE = 'RemoveBackground'\n"
    )
    (folder / "requirements.txt").write_text("numpy\nrembg_not_here>=2.0.50\n")
    for args in (
        ["init", "--quiet"],
        ["add", "."],
        ["commit", "--quiet", "-m", "pack"],
        ["remote", "add", "origin", "https://github.com/someone/ComfyUI-Rembg-Pack"],
    ):
        subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
            cwd=folder,
            check=True,
            capture_output=True,
        )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True, text=True
    ).stdout.strip()
    with caplog.at_level(logging.WARNING, logger="engine.runtime.pack_imports"):
        assert asyncio.run(nodes.load_custom_node(str(folder))) is False
    (failed,) = record.failed
    assert failed.missing_module == "rembg_not_here"
    assert failed.requirement == "rembg_not_here>=2.0.50"
    command = f"scripts/add_custom_nodes.py https://github.com/someone/ComfyUI-Rembg-Pack@{head}"
    expected = (
        "ComfyUI-Rembg-Pack: module 'rembg_not_here' is missing from the image (its requirement "
        f"'rembg_not_here>=2.0.50' installs it); bake it into the image with its requirements: "
        f"{command}"
    )
    assert failed.remedy() == expected
    assert expected in caplog.text  # the boot log says it
    line = record.describe_unknown("RemoveBackground", ["3"])
    assert "No module named 'rembg_not_here'" in line and command in line  # and the job


def test_a_pack_without_a_git_origin_is_told_to_add_it_by_url(tmp_path: Path) -> None:
    record = PackImports()
    folder = pack(tmp_path, "copied-pack", "import missing_thing\n")
    failed = record.record(
        folder,
        "custom_nodes",
        "ModuleNotFoundError: No module named 'missing_thing'",
        ModuleNotFoundError("No module named 'missing_thing'", name="missing_thing"),
    )
    assert failed.remedy() == (
        "copied-pack: module 'missing_thing' is missing from the image (its requirements.txt "
        "does not list a distribution for 'missing_thing'); bake it into the image with "
        "scripts/add_custom_nodes.py <repository URL>@<commit> (its folder has no git origin: "
        "add the pack by its repository URL and commit)"
    )


def test_a_second_folder_of_the_same_name_and_comfyui_manager_are_not_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The image's copy wins over a volume's; ComfyUI-Manager never starts in a worker."""
    nodes = fake_nodes(tmp_path)
    record = watch(nodes, PackImports())
    image, volume = tmp_path / "image", tmp_path / "volume"
    image.mkdir()
    volume.mkdir()
    mine = pack(image, "rgthree-comfy", "NODE_CLASS_MAPPINGS = {}\nLOADED = True\n")
    theirs = pack(volume, "rgthree-comfy", "raise SystemExit('must not be imported')\n")
    manager = pack(volume, "ComfyUI-Manager", "raise SystemExit('must not be imported')\n")
    with caplog.at_level(logging.WARNING, logger="engine.runtime.pack_imports"):
        for folder in (mine, theirs, manager):
            assert asyncio.run(nodes.load_custom_node(str(folder))) is True
    assert record.failed == ()
    assert f"{theirs} not loaded: a pack of that name was already loaded from {mine}" in caplog.text
    assert f"{manager} not loaded: ComfyUI-Manager is a tool for a ComfyUI server" in caplog.text
    # API nodes and ComfyUI's own files are never skipped by name.
    assert asyncio.run(nodes.load_custom_node(str(mine), module_parent="comfy_extras")) is True
