"""Windows-path normalisation and per-job output scoping."""

from __future__ import annotations

import json

from engine.workflow import normalize_paths, scope_outputs


def _listed(class_type: str) -> frozenset[str]:
    return frozenset({"ckpt_name"}) if class_type == "CheckpointLoaderSimple" else frozenset()


def test_model_name_in_a_listed_input_becomes_posix() -> None:
    wf = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "SDXL\\model.safetensors"},
        }
    }
    assert normalize_paths(wf, _listed)["4"]["inputs"]["ckpt_name"] == "SDXL/model.safetensors"


def test_windows_json_export_round_trip() -> None:
    """The guide's case: the JSON text holds a doubled backslash, Python sees one."""
    raw = '{"4": {"class_type": "X", "inputs": {"lora": "SDXL\\\\sub\\\\style.safetensors"}}}'
    wf = json.loads(raw)
    assert wf["4"]["inputs"]["lora"] == "SDXL\\sub\\style.safetensors"
    assert normalize_paths(wf, _listed)["4"]["inputs"]["lora"] == "SDXL/sub/style.safetensors"


def test_prompt_text_is_never_touched() -> None:
    text = "\\(masterpiece\\), best quality, C:\\not\\a\\path in a sentence"
    wf = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}}
    assert normalize_paths(wf, _listed)["6"]["inputs"]["text"] == text


def test_multiline_text_ending_like_a_file_is_kept() -> None:
    text = "line one\nsee photo\\of.png"
    wf = {"6": {"class_type": "Note", "inputs": {"text": text}}}
    assert normalize_paths(wf, _listed)["6"]["inputs"]["text"] == text


def test_known_file_inputs_and_extensions_on_unknown_nodes() -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "faces\\a.jpg"}},
        "2": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "out\\run", "images": ["1", 0]},
        },
        "3": {"class_type": "CustomLoader", "inputs": {"model": "wan\\wan2.2_5b.safetensors"}},
        "4": {"class_type": "CustomLoader", "inputs": {"mode": "a\\b"}},
    }
    out = normalize_paths(wf, _listed)
    assert out["1"]["inputs"]["image"] == "faces/a.jpg"
    assert out["2"]["inputs"]["filename_prefix"] == "out/run"
    assert out["3"]["inputs"]["model"] == "wan/wan2.2_5b.safetensors"
    assert out["4"]["inputs"]["mode"] == "a\\b"  # not a file: left as sent
    assert out["2"]["inputs"]["images"] == ["1", 0]


def test_doubled_separators_collapse() -> None:
    wf = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "SDXL\\\\m.ckpt"}}}
    assert normalize_paths(wf, _listed)["4"]["inputs"]["ckpt_name"] == "SDXL/m.ckpt"


def test_normalize_leaves_the_request_unchanged() -> None:
    wf = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "A\\b.ckpt"}}}
    normalize_paths(wf, _listed)
    assert wf["4"]["inputs"]["ckpt_name"] == "A\\b.ckpt"


def test_scope_outputs_prefixes_every_string_prefix() -> None:
    wf = {
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}},
        "10": {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": "/anim/x"}},
        "11": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["20", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": ""}},
        "13": {"class_type": "ImageInvert", "inputs": {}},
    }
    out = scope_outputs(wf, "job-1")
    assert out["9"]["inputs"]["filename_prefix"] == "job-1/ComfyUI"
    assert out["10"]["inputs"]["filename_prefix"] == "job-1/anim/x"
    assert out["11"]["inputs"]["filename_prefix"] == ["20", 0]
    assert out["12"]["inputs"]["filename_prefix"] == "job-1/ComfyUI"
    assert wf["9"]["inputs"]["filename_prefix"] == "ComfyUI"
