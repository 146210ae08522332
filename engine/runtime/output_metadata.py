"""Output nodes embed the workflow as the user sent it, not the worker's rewrite of it.

ComfyUI's save nodes (SaveImage's PNG text chunks, SaveAnimatedWEBP's EXIF, SaveVideo's
and VideoHelperSuite's container metadata) embed two things: the prompt being run, which
ComfyUI hands every node that declares the hidden ``PROMPT`` input (V3: ``Hidden.prompt``),
and ``extra_data["extra_pnginfo"]``, where ComfyUI's editor puts its graph (``workflow``).
The prompt the worker runs is its own rewrite: per-job folders in file names and prefixes
(``job-in-<hash>/a.png``, ``job-<id>/ComfyUI``), a marker input on previews, and ComfyUI's
cache writes ``is_changed`` hashes into it. Dropped into ComfyUI, such a file restores a
workflow that names files nobody has.

The runtime puts the user's prompt (the API format as sent, or converted from the editor
graph they sent) into ``extra_data`` under :data:`SENT_PROMPT`, and the graph itself under
``extra_pnginfo.workflow`` as the editor would. :func:`install` wraps ComfyUI's
``execution.get_input_data`` so that an output node's hidden prompt is that one; every
other node (a pack's node that reads other nodes' values from the prompt) still gets the
prompt that runs. Without :data:`SENT_PROMPT` (``OUTPUT_METADATA=false``, a warm-up)
nothing changes.

``OUTPUT_METADATA=false`` is ComfyUI's ``--disable-metadata``, which each save node checks
itself. Some do not (:data:`EMBED_ANYWAY`): ComfyUI 0.3.64's SaveWEBM writes the prompt
into its container and SaveSVGNode into its file whatever the flag says, and so does
VideoHelperSuite's VHS_VideoCombine (its MP4's ``comment`` tag and first-frame PNG), one
of the packs the image installs. With the job's :data:`METADATA_OFF` those get no prompt
(``None``, which each skips), so nothing is embedded at all, as the contract says. Other
nodes keep theirs: another pack's output node may read the prompt for more than
metadata, and each honours the flag or not on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

SENT_PROMPT = "worker_sent_prompt"
"""The key of ``extra_data`` holding the prompt as the user sent it."""
METADATA_OFF = "worker_metadata_off"
"""The key of ``extra_data`` set (True) when the job's files embed nothing."""
EMBED_ANYWAY = frozenset({"SaveWEBM", "SaveSVGNode", "VHS_VideoCombine"})
"""Save nodes that embed the hidden prompt under ``--disable-metadata`` too, and read it
for nothing else: ComfyUI 0.3.64's (``comfy_extras/nodes_video.py``, ``nodes_images.py``)
and VideoHelperSuite's at the image's pin (``videohelpersuite/nodes.py``)."""

_WRAPPED = "_output_metadata"


def install(execution: Any) -> bool:
    """Wrap ``execution.get_input_data``; whether it did (False when already wrapped)."""
    original = execution.get_input_data
    if getattr(original, _WRAPPED, False):
        return False
    wrapper = functools.wraps(original)(_sent_prompt_for_outputs(original))
    setattr(wrapper, _WRAPPED, True)
    execution.get_input_data = wrapper
    return True


def _sent_prompt_for_outputs(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_input_data(
        inputs: Any,
        class_def: Any,
        unique_id: Any,
        outputs: Any = None,
        dynprompt: Any = None,
        extra_data: Any = None,
    ) -> Any:
        extra = {} if extra_data is None else extra_data
        result = original(inputs, class_def, unique_id, outputs, dynprompt, extra)
        if (
            not isinstance(extra, dict)
            or dynprompt is None
            or getattr(class_def, "OUTPUT_NODE", False) is not True
        ):
            return result
        sent = extra.get(SENT_PROMPT)
        if sent is None and (
            extra.get(METADATA_OFF) is not True
            or _class_type(dynprompt, unique_id) not in EMBED_ANYWAY
        ):
            return result
        running = dynprompt.get_original_prompt()
        input_data_all, _missing, hidden_v3 = result
        # ComfyUI handed this node the running prompt itself (the same object): swap it.
        for name, values in input_data_all.items():
            if isinstance(values, list) and len(values) == 1 and values[0] is running:
                input_data_all[name] = [sent]
        if isinstance(hidden_v3, dict):
            for key, value in hidden_v3.items():
                if value is running:
                    hidden_v3[key] = sent
        return result

    return get_input_data


def _class_type(dynprompt: Any, unique_id: Any) -> Any:
    """The node's type as the running prompt names it (None when it cannot be told)."""
    try:
        return dynprompt.get_node(unique_id).get("class_type")
    except Exception:  # ComfyUI's NodeNotFoundError, or a shape it no longer has
        return None
