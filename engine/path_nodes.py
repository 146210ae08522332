"""Pack nodes whose inputs are raw file-system paths or URLs: refused before a job runs.

ComfyUI's loaders name files through ``folder_paths``, which the runtime holds to the
job's own files (``engine.runtime.output_scope``), and the worker fetches URLs through
its address guard (``engine.guarded_http``). A few nodes of the image's packs do neither:
they open whatever path the workflow types or wires (another job's output folder, listed
whole by a folder loader; the worker's own files), hand a URL straight to FFmpeg, past
the guard (cloud metadata at 169.254.169.254), or save into any folder of the machine.
Their value may be made while the graph runs, so the node is refused whatever the
value, with the node that does the same within the job's files named instead. A save
node's folder input is accepted only as its default, ``output``, which goes through
``folder_paths`` like every other save. ``ALLOW_PATH_NODES=true`` runs them all, for an
endpoint whose callers may see each other's files and reach the worker's network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import WorkflowValidationError

RAW_PATH_INPUTS: Mapping[str, tuple[str, str]] = {
    # ComfyUI-VideoHelperSuite 08e8df15: the "(Path)" loaders read any path or URL
    # (a URL through yt-dlp or FFmpeg, redirects and all).
    "VHS_LoadVideoPath": ("video", "VHS_LoadVideo"),
    "VHS_LoadVideoFFmpegPath": ("video", "VHS_LoadVideoFFmpeg"),
    "VHS_LoadImagePath": ("image", "LoadImage"),
    "VHS_LoadImagesPath": ("directory", "LoadImage"),
    "VHS_LoadAudio": ("audio_file", "VHS_LoadAudioUpload or LoadAudio"),
    # ComfyUI-KJNodes 3fcd22f2: folder loaders list and read any folder (the output
    # folder, every job's files in it); the camera pose file is any text file.
    "LoadImagesFromFolderKJ": ("folder", "LoadImage"),
    "LoadVideosFromFolder": ("video", "VHS_LoadVideo"),
    "CameraPoseVisualizer": ("pose_file_path", ""),
}
"""class_type -> (the input that takes a raw path, what to use instead)."""

SAVE_FOLDER_INPUTS: Mapping[str, tuple[str, str]] = {
    # ComfyUI-KJNodes 3fcd22f2: any other value is a folder written to as it is.
    "SaveImageKJ": ("output_folder", "output"),
    "SaveStringKJ": ("output_folder", "output"),
}
"""class_type -> (the input naming the folder it saves to, the one value accepted)."""


def check_path_nodes(workflow: Mapping[str, Any]) -> None:
    """Raise one :class:`WorkflowValidationError` naming every node of the API-format
    ``workflow`` that would read or write a raw path (see the module's note)."""
    problems: list[str] = []
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            continue
        class_type = node.get("class_type")
        inputs = node.get("inputs")
        inputs = inputs if isinstance(inputs, Mapping) else {}
        if not isinstance(class_type, str):
            continue
        where = f"Node {node_id} ({class_type})"
        if class_type in RAW_PATH_INPUTS:
            name, instead = RAW_PATH_INPUTS[class_type]
            if inputs.get(name, "") == "":  # the camera pose file's default: none
                continue
            use = (
                f"send the file in input.images and load it with {instead}"
                if instead
                else "leave it empty"
            )
            problems.append(
                f"{where} input '{name}': this node opens any path or URL on the worker, "
                "outside the job's own files and the download guard, so the worker refuses "
                f"it (ALLOW_PATH_NODES=true allows it); {use}"
            )
        elif class_type in SAVE_FOLDER_INPUTS:
            name, accepted = SAVE_FOLDER_INPUTS[class_type]
            value = inputs.get(name, accepted)
            if value != accepted:
                problems.append(
                    f"{where} input '{name}': {value!r} would save outside the job's output "
                    f"folder; leave it '{accepted}' (filename_prefix names sub-folders)"
                )
    if problems:
        raise WorkflowValidationError(problems)
