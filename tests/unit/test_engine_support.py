"""tests/engine/support.py: when the real-engine tests run, skip, or fail.

A Python without torch skips them all, saying so; a pack found only in the ComfyUI
checkout that cannot import for a missing module skips its tests, naming both; a pack
``COMFYUI_TEST_CUSTOM_NODES`` names, or a failure of another kind, is left to fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.engine import support

FAILED = {"pack": "PackA", "module": "insightface", "error": "ModuleNotFoundError: No module"}


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ComfyUI checkout whose custom_nodes/ holds PackA, and a named folder holding PackB."""
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "execution.py").write_text("")
    (root / "custom_nodes" / "PackA").mkdir(parents=True)
    (root / "custom_nodes" / "PackB").mkdir(parents=True)
    named = tmp_path / "packs"
    (named / "PackB").mkdir(parents=True)
    monkeypatch.setattr(support, "COMFYUI_PATH", root)
    monkeypatch.setenv(support.CUSTOM_NODES_ENV, str(named))
    return root


def test_a_checkout_pack_missing_a_module_skips_naming_both(checkout: Path) -> None:
    with pytest.raises(pytest.skip.Exception) as caught:
        support.skip_packs_that_cannot_import([FAILED], ["PackA"])
    assert "custom node pack PackA cannot be imported by this Python: module 'insightface'" in (
        str(caught.value)
    )


def test_a_named_pack_that_fails_is_left_to_fail(checkout: Path) -> None:
    support.skip_packs_that_cannot_import([{**FAILED, "pack": "PackB"}])  # no skip


def test_other_failures_and_other_packs_are_left_alone(checkout: Path) -> None:
    support.skip_packs_that_cannot_import([{**FAILED, "module": None}])  # a broken pack
    support.skip_packs_that_cannot_import([FAILED], ["PackB"])  # not this test's pack


def test_a_python_without_torch_skips_the_engine_tests(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYUI_PATH", str(checkout))
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "torch" else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    path, reason = support.comfyui_checkout()
    assert path is None
    assert "this Python has no torch, which ComfyUI needs to start" in reason
