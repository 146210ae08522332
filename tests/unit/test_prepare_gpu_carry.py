"""scripts/prepare_gpu_carry.py: what the GPU host's carry folder holds."""

from __future__ import annotations

import tarfile
from pathlib import Path

from tests.unit.test_manifests import load_script


def test_every_carried_wheel_is_pinned_by_the_image_lock() -> None:
    """The host gets the image's versions: a name the lock drops is caught here."""
    carry = load_script("prepare_gpu_carry")
    versions = carry.locked_versions()
    names = [*carry.CARRIED, *carry.FROM_SDIST]
    specs = carry.pinned(tuple(names), versions, ["extra==1.0"])
    assert specs[:-1] == [f"{n}=={versions[n]}" for n in names]
    assert specs[-1] == "extra==1.0"
    assert versions["av"] and versions["boto3"]


def test_the_comfyui_archive_leaves_out_history_bytecode_packs_and_models(tmp_path: Path) -> None:
    carry = load_script("prepare_gpu_carry")
    checkout = tmp_path / "ComfyUI"
    for name in (
        "execution.py",
        "comfy/sd.py",
        ".git/HEAD",
        "comfy/__pycache__/sd.cpython-312.pyc",
        "custom_nodes/SomePack/__init__.py",
        "models/checkpoints/big.safetensors",
        "models/configs/v1-inference.yaml",
        ".worker-node-index/index.json",
    ):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    target = tmp_path / "ComfyUI.tar.xz"
    assert carry.archive_comfyui(checkout, target) == 2
    with tarfile.open(target) as archive:
        names = set(archive.getnames())
    assert {"ComfyUI/execution.py", "ComfyUI/comfy/sd.py"} <= names
    # The folders ComfyUI lists stay, empty.
    assert {"ComfyUI/custom_nodes", "ComfyUI/models"} <= names
    assert not [n for n in names if ".git" in n or "__pycache__" in n or "SomePack" in n]
    assert not [n for n in names if n.startswith("ComfyUI/models/") or "node-index" in n]
