"""The worker's extra model path files, read as ComfyUI reads them (no ComfyUI needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.runtime.model_paths import parse_model_paths, read_model_paths

BUNDLED_YAML = Path(__file__).parents[2] / "comfyui" / "extra_model_paths.yaml"


def test_parse_mirrors_comfyuis_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bases expanded and made absolute, one folder per line, old names mapped."""
    monkeypatch.setenv("VOLUME_ROOT", "/mnt/vol")
    config = {
        "image": {
            "base_path": "/comfyui/models",
            "unet": "unet\ndiffusion_models\n",
            "pulid": "pulid",
        },
        "volume": {"base_path": "$VOLUME_ROOT/models", "clip": "clip", "pulid": "pulid"},
        "relative": {"base_path": "shared", "loras": "loras"},
        "no_base": {"loras": "/abs/loras\nrel/loras"},
        "nodes": {"custom_nodes": "/extra/nodes"},
        "empty": None,
    }
    parsed = parse_model_paths(config, tmp_path)
    assert parsed.bases == (
        Path("/comfyui/models"),
        Path("/mnt/vol/models"),
        tmp_path / "shared",
    )
    assert parsed.folders["diffusion_models"] == (
        "/comfyui/models/unet",
        "/comfyui/models/diffusion_models",
    )
    assert parsed.folders["text_encoders"] == ("/mnt/vol/models/clip",)
    assert parsed.folders["pulid"] == ("/comfyui/models/pulid", "/mnt/vol/models/pulid")
    assert parsed.folders["loras"] == (
        str(tmp_path / "shared" / "loras"),
        "/abs/loras",
        str(tmp_path / "rel" / "loras"),
    )
    assert parsed.folders["custom_nodes"] == ("/extra/nodes",)
    assert parsed.defaults == {}


def test_parse_keeps_is_default_sections_apart(tmp_path: Path) -> None:
    config = {"mine": {"base_path": "/m", "is_default": True, "loras": "loras"}}
    parsed = parse_model_paths(config, tmp_path)
    assert parsed.defaults == {"loras": ("/m/loras",)}
    assert "is_default" not in parsed.folders


def test_read_merges_files_in_order_and_skips_absent_ones(tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="PyYAML (ComfyUI's requirement) reads the files")
    extra = tmp_path / "extra.yaml"
    extra.write_text(json.dumps({"vol": {"base_path": "/vol", "pulid": "pulid"}}))
    merged = read_model_paths([BUNDLED_YAML, None, tmp_path / "absent.yaml", extra])
    assert merged.bases == (
        Path("/comfyui/models"),
        Path("/runpod-volume/models"),
        Path("/runpod-volume/ComfyUI/models"),
        Path("/vol"),
    )
    assert merged.folders["pulid"] == (
        "/comfyui/models/pulid",
        "/runpod-volume/models/pulid",
        "/runpod-volume/ComfyUI/models/pulid",
        "/vol/pulid",
    )
    assert "/runpod-volume/models/unet" in merged.folders["diffusion_models"]
