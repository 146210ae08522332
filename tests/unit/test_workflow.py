"""Windows-path normalisation and per-job input and output scoping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import WorkflowValidationError
from engine.workflow import (
    for_metadata,
    normalize_paths,
    scope_inputs,
    scope_outputs,
    unsent_files,
)


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


@pytest.mark.parametrize(
    "prefix", ["../leak", "a/../../leak", "..", "/../x", "renders/../../../tmp/x"]
)
def test_a_prefix_that_climbs_out_of_the_job_folder_is_refused(prefix: str) -> None:
    """``..`` above the job's folder: refused (not moved), naming node, input and value."""
    wf = {
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fine"}},
    }
    with pytest.raises(WorkflowValidationError) as caught:
        scope_outputs(wf, "job-1")
    (line,) = caught.value.details
    assert line.startswith(f"Node 9 (SaveImage) input 'filename_prefix': {prefix!r}"), line
    assert "climbs out of the job's output folder" in line


def test_a_prefix_with_dots_that_stays_inside_is_kept() -> None:
    wf = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a/../b..c/x"}}}
    assert scope_outputs(wf, "job-1")["9"]["inputs"]["filename_prefix"] == "job-1/a/../b..c/x"


@pytest.mark.parametrize(
    ("node", "value"),
    [
        ("LoadImage", "leak_00001_.png [output]"),
        ("LoadImage", "ComfyUI_temp_abcde_00001_.png [temp]"),
        ("LoadImageOutput", "sub/x.png [output]"),
        ("LoadVideo", "clip.mp4 [output]"),
        ("SomePackLoader", "face.webp [output]"),
    ],
)
def test_a_file_of_the_output_or_temp_folder_is_refused(node: str, value: str) -> None:
    """Those folders hold other jobs' files: no job reads them by an annotated name."""
    name = "file" if node == "LoadVideo" else "face" if node == "SomePackLoader" else "image"
    wf = {"5": {"class_type": node, "inputs": {name: value}}}
    with pytest.raises(WorkflowValidationError) as caught:
        scope_outputs(wf, "job-1")
    (line,) = caught.value.details
    assert line.startswith(f"Node 5 ({node}) input '{name}': {value!r} names a file"), line
    assert "input.images" in line


def test_prompt_text_and_input_files_with_brackets_are_left_alone() -> None:
    wf = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle [output]"}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "a.png [input]"}},
    }
    assert scope_outputs(wf, "job-1") == wf


def _loaders(class_type: str) -> frozenset[str]:
    """What the runtime lists: combos of ComfyUI's loaders and one custom node's."""
    return {
        "LoadImage": frozenset({"image", "upload"}),
        "LoadVideo": frozenset({"file"}),
        "CustomFaceLoader": frozenset({"face_file"}),
        "KSampler": frozenset({"sampler_name"}),  # an enum: listed too
    }.get(class_type, frozenset())


def test_scope_inputs_points_every_reference_to_a_sent_file_at_the_job_folder() -> None:
    """Each loader input naming a sent file is rewritten; so is an annotated name."""
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png", "upload": "image"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "masks/m.png [input]"}},
        "3": {"class_type": "LoadVideo", "inputs": {"file": "clip"}},
        "4": {"class_type": "VHS_LoadVideo", "inputs": {"video": "clip.mp4"}},
        "5": {"class_type": "LoadAudio", "inputs": {"audio": "voice.wav"}},
        "6": {"class_type": "CustomFaceLoader", "inputs": {"face_file": "face.npy"}},
        "7": {"class_type": "CustomNode", "inputs": {"anything": "a.png"}},
    }
    sent = frozenset({"a.png", "masks/m.png", "clip", "clip.mp4", "voice.wav", "face.npy"})
    out = scope_inputs(wf, sent, "job-in-0123456789abcdef", _loaders)
    got = {node_id: node["inputs"] for node_id, node in out.items()}
    folder = "job-in-0123456789abcdef"
    assert got["1"] == {"image": f"{folder}/a.png", "upload": "image"}
    assert got["2"]["image"] == f"{folder}/masks/m.png [input]"
    assert got["3"]["file"] == f"{folder}/clip"
    assert got["4"]["video"] == f"{folder}/clip.mp4"
    assert got["5"]["audio"] == f"{folder}/voice.wav"
    assert got["6"]["face_file"] == f"{folder}/face.npy"
    assert got["7"]["anything"] == f"{folder}/a.png"  # ends like a media file
    assert wf["1"]["inputs"]["image"] == "a.png"  # the request stays as sent


def test_scope_inputs_leaves_baked_files_prompts_prefixes_and_links_alone() -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "baked.png"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "face", "clip": ["4", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "a.png [output]"}},
        "5": {"class_type": "KSampler", "inputs": {"sampler_name": "euler"}},
    }
    out = scope_inputs(wf, frozenset({"a.png", "face", "euler"}), "job-in-x", _loaders)
    assert out == wf
    assert scope_inputs(wf, frozenset(), "job-in-x", _loaders) is wf


def test_unsent_files_names_loaders_whose_file_is_neither_sent_nor_baked(tmp_path: Path) -> None:
    (tmp_path / "baked.png").write_bytes(b"png")
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "killme.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "baked.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "job-in-x/a.png"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "gone.png"}},
        "5": {"class_type": "LoadVideo", "inputs": {"file": "missing"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "b.png [output]"}},
    }
    assert unsent_files(wf, "job-in-x", tmp_path, _loaders) == {
        ("1", "image"): "killme.png",
        ("5", "file"): "missing",
    }


def test_for_metadata_cuts_url_credentials_and_shares_the_rest() -> None:
    """What output files embed: the workflow as sent, less the secrets a URL can carry."""
    wf = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {
                "ckpt_name": "https://user:pw@host.example/m.safetensors?token=s3cr3t#sha256=ab"
            },
        },
        "5": {
            "class_type": "LoraLoader",
            "inputs": {"lora_name": "https://host.example/l.safetensors"},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "see https://x.example/?q=1 ok"}},
    }
    out = for_metadata(wf)
    assert out["4"]["inputs"]["ckpt_name"] == "https://host.example/m.safetensors#sha256=ab"
    assert out["5"] is wf["5"] and out["6"] is wf["6"]  # nothing to cut: shared
    assert "s3cr3t" in json.dumps(wf) and "s3cr3t" not in json.dumps(out)
    assert for_metadata({"nodes": [{"widgets_values": ["https://h.example/a?x=1"]}]}) == {
        "nodes": [{"widgets_values": ["https://h.example/a"]}]
    }
