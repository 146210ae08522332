"""Every problem of a workflow in one answer, from the real engine.

Unknown node types (and the pack that failed to import, when one may hold them),
missing model files with where the worker looked, bad values, links to missing nodes
or outputs, cycles and chains too deep for ComfyUI's recursion: one
``WorkflowValidationError``, one detail line each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.errors import WorkflowValidationError
from engine.graph_checks import MAX_CHAIN_DEPTH
from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS, empty_image, node

pytestmark = ENGINE_MARKS

REPO = Path(__file__).resolve().parents[2]
RGTHREE_LATENT = "SDXL Empty Latent Image (rgthree)"

# A pack that raises at import, as one whose requirements were not installed does. Its
# node type's name is a literal in its code, so the worker can say which pack held it.
_BROKEN_PACK = """\
NODE_TYPES = ["WorkerTestBrokenNode"]
import worker_test_dependency_that_is_not_installed  # noqa: F401  (raises at import)
"""

# Boots a ComfyUI with no node pack but the broken one (ComfyUI's own switch: every pack
# in its custom_nodes folders is skipped but those whitelisted), OUTPUT_METADATA=false,
# then prints what two jobs answered and what a saved PNG carries.
_SCRIPT = """
import json, sys
from pathlib import Path
comfyui, work, extra, sdxl = (Path(p) for p in sys.argv[1:5])
sys.path.insert(0, str(comfyui))
from comfy.cli_args import args
args.disable_all_custom_nodes = True
args.whitelist_custom_nodes = ["worker_test_broken_pack"]
from engine.errors import WorkflowValidationError
from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.pack_imports import RECORD
from engine.settings import Settings
runtime = ComfyRuntime(Settings(
    comfyui_path=comfyui, work_dir=work, extra_model_paths=extra,
    comfy_log_level="WARNING", output_metadata=False))
runtime.boot()
facts = {"failed": [[p.path.name, p.error] for p in RECORD.failed if p.group == "custom_nodes"]}
def details(name, workflow):
    try:
        runtime.run(JobSpec(prompt_id=name, workflow=workflow))
    except WorkflowValidationError as exc:
        return exc.details
    return None
facts["sdxl"] = details("sdxl", json.loads(sdxl.read_text()))
facts["broken"] = details("broken", {
    "1": {"class_type": "WorkerTestBrokenNode", "inputs": {}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}},
})
result = runtime.run(JobSpec(prompt_id="png", workflow={
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "meta/m"}},
}))
(item,) = result.outputs["2"]["images"]
facts["png"] = str(runtime.directories.output / item["subfolder"] / item["filename"])
# SaveWEBM embeds the prompt whatever --disable-metadata says (output_metadata.EMBED_ANYWAY).
result = runtime.run(JobSpec(prompt_id="webm", workflow={
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0}},
    "2": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "meta/w",
          "codec": "vp9", "fps": 8.0, "crf": 32.0}},
}))
(item,) = result.outputs["2"]["images"]
facts["webm"] = str(runtime.directories.output / item["subfolder"] / item["filename"])
print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def packless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a worker booted without rgthree (nor any pack but a broken one) answers."""
    root = tmp_path_factory.mktemp("packless")
    custom_nodes = root / "custom_nodes"
    (custom_nodes / "worker_test_broken_pack").mkdir(parents=True)
    (custom_nodes / "worker_test_broken_pack" / "__init__.py").write_text(_BROKEN_PACK)
    models = root / "models"
    (models / "checkpoints").mkdir(parents=True)
    extra = root / "extra_model_paths.yaml"
    extra.write_text(
        json.dumps(
            {
                "packless": {
                    "base_path": str(models),
                    "checkpoints": "checkpoints",
                    "custom_nodes": str(custom_nodes),
                }
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(COMFYUI_PATH), str(root / "work"), str(extra)]
    args.append(str(REPO / "examples" / "sdxl_txt2img.json"))
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    facts: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    facts["models"] = str(models / "checkpoints")
    return facts


def test_the_guides_example_names_the_missing_pack_and_checkpoint_at_once(
    packless: dict[str, Any],
) -> None:
    """Without rgthree and without its checkpoint: both named in one error."""
    details = packless["sdxl"]
    assert details is not None, "the example ran instead of failing"
    (pack_line,) = [d for d in details if RGTHREE_LATENT in d]
    assert pack_line.startswith(f"Node type '{RGTHREE_LATENT}' is not installed (used by node 5)")
    (model_line,) = [d for d in details if "sd_xl_base_1.0.safetensors" in d]
    assert model_line.startswith("Node 4 (CheckpointLoaderSimple) input 'ckpt_name'")
    assert "file not found; looked in: " in model_line and packless["models"] in model_line
    # Nodes downstream of the missing type (3, 8, 9) are not blamed for it.
    assert len(details) == 2, details


def test_a_type_whose_pack_failed_to_import_names_the_pack_and_its_error(
    packless: dict[str, Any],
) -> None:
    error = "ModuleNotFoundError: No module named 'worker_test_dependency_that_is_not_installed'"
    assert packless["failed"] == [["worker_test_broken_pack", error]]
    (line,) = packless["broken"]
    assert line.startswith(
        "Node type 'WorkerTestBrokenNode' is not available (used by node 1): the node pack "
        f"that provides it failed to import at boot: worker_test_broken_pack ({error})"
    )


def test_output_metadata_false_leaves_the_workflow_out_of_pngs(
    packless: dict[str, Any], runtime: ComfyRuntime, prefix: str
) -> None:
    """OUTPUT_METADATA=false: no prompt in the PNG; the default keeps it."""
    with Image.open(packless["png"]) as image:
        assert "prompt" not in image.info and "workflow" not in image.info
    workflow = {
        "1": empty_image(8, 8),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    (item,) = runtime.run(JobSpec(prompt_id="meta-on", workflow=workflow)).outputs["2"]["images"]
    with Image.open(runtime.directories.output / item["subfolder"] / item["filename"]) as image:
        assert "prompt" in image.info


def test_output_metadata_false_leaves_the_prompt_out_of_savewebms_file_too(
    packless: dict[str, Any], runtime: ComfyRuntime, prefix: str
) -> None:
    """ComfyUI's SaveWEBM ignores --disable-metadata; with OUTPUT_METADATA=false its file
    carries no prompt all the same. With the default it does."""
    import av

    def tags(path: Path) -> set[str]:
        with av.open(str(path)) as container:
            return {key.lower() for key in container.metadata}

    assert "prompt" not in tags(Path(packless["webm"]))
    workflow = {
        "1": node("EmptyImage", width=16, height=16, batch_size=2, color=0),
        "2": node(
            "SaveWEBM", images=["1", 0], filename_prefix=prefix, codec="vp9", fps=8.0, crf=32.0
        ),
    }
    (item,) = runtime.run(JobSpec(prompt_id="webm-on", workflow=workflow)).outputs["2"]["images"]
    assert "prompt" in tags(runtime.directories.output / item["subfolder"] / item["filename"])


def refused(runtime: ComfyRuntime, workflow: dict[str, Any]) -> list[str]:
    with pytest.raises(WorkflowValidationError) as caught:
        runtime.run(JobSpec(prompt_id="refused", workflow=workflow))
    return caught.value.details


def test_unknown_type_bad_link_cycle_and_bad_value_in_one_answer(
    runtime: ComfyRuntime, prefix: str
) -> None:
    workflow = {
        "1": node("EmptyImage", width=-5, height=8, batch_size=1, color=0),  # bad value
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
        "3": node("NoSuchNodeType", image=["1", 0]),  # unknown type
        "4": node("SaveImage", images=["3", 0], filename_prefix=prefix),
        "5": node("ImageInvert", image=["99", 0]),  # a link to a missing node
        "6": node("SaveImage", images=["5", 0], filename_prefix=prefix),
        "7": node("ImageInvert", image=["8", 0]),  # 7 <-> 8: a cycle
        "8": node("ImageInvert", image=["7", 0]),
        "9": node("SaveImage", images=["8", 0], filename_prefix=prefix),
        "10": node("SaveImage", images=["1", 4], filename_prefix=prefix),  # no output 4
    }
    details = refused(runtime, workflow)
    assert details[0].startswith("Node type 'NoSuchNodeType' is not installed (used by node 3)")
    assert details[1:4] == [
        "Node 5 (ImageInvert) input 'image': links to node 99, which is not in the workflow: "
        "link it to an existing node, or remove the link",
        "Node 10 (SaveImage) input 'images': links to output 4 of Node 1 (EmptyImage), "
        "which has 1 output",
        "Nodes 7 (ImageInvert), 8 (ImageInvert) form a cycle: a node cannot take an input "
        "that depends on its own output; remove one of the links",
    ]
    assert details[4].startswith("Node 1 (EmptyImage) input 'width': ")
    assert len(details) == 5, details


def test_a_chain_deeper_than_comfyui_recursion_fails_saying_so(runtime: ComfyRuntime) -> None:
    """5000 nodes in a chain: not a RecursionError 4029 nodes in, but "too deep"."""
    workflow: dict[str, Any] = {"0": empty_image(8, 8)}
    for i in range(1, 4999):
        workflow[str(i)] = node("ImageInvert", image=[str(i - 1), 0])
    workflow["4999"] = node("SaveImage", images=["4998", 0], filename_prefix="deep/x")
    (detail,) = refused(runtime, workflow)
    assert detail.startswith(
        "The graph is too deep: Node 4999 (SaveImage) ends a chain of 5,000 linked nodes"
    )


def test_a_chain_at_the_bound_validates(runtime: ComfyRuntime) -> None:
    """The bound is one ComfyUI's validation walks on the job thread: a chain of
    MAX_CHAIN_DEPTH nodes fails only on the bad value at its far end, found by ComfyUI's
    recursion MAX_CHAIN_DEPTH nodes deep (no run: 800 nodes take about 30 s on 2 cores)."""
    workflow: dict[str, Any] = {"0": node("EmptyImage", width=-1, height=8, batch_size=1, color=0)}
    for i in range(1, MAX_CHAIN_DEPTH - 1):
        workflow[str(i)] = node("ImageInvert", image=[str(i - 1), 0])
    last = MAX_CHAIN_DEPTH - 1
    workflow[str(last)] = node("SaveImage", images=[str(last - 1), 0], filename_prefix="bound/x")
    (detail,) = refused(runtime, workflow)
    assert detail.startswith("Node 0 (EmptyImage) input 'width': ")
