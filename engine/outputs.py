"""ComfyUI's ui outputs -> the typed files the worker delivers.

Each output node reports a ui dict of its own shape: SaveImage ``{"images": [...]}``,
SaveAnimatedWEBP/PNG and SaveVideo the same plus ``"animated": (True,)``,
VideoHelperSuite's VHS_VideoCombine ``{"gifs": [...]}``, SaveAudio ``{"audio": [...]}``.
Rather than know every node, any list of dicts with a ``filename`` is a file. Every
problem with one file becomes a line for the response's ``errors[]``; the other files
are still returned.

Previews (items of type ``temp``: PreviewImage and friends) are the results of a
workflow that saves nothing else, so they are returned then; beside saved outputs they
are the editor's previews and stay out.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

from PIL import Image

from engine import real_paths, video
from engine.deadline import Deadline
from engine.errors import ItemError
from engine.request import FramesToVideo
from engine.runtime import Directories, UiOutputs
from engine.runtime.shapes import sort_node_ids
from engine.video import VideoInfo

log = logging.getLogger(__name__)

OutputKind = Literal["image", "animation", "video", "audio", "other"]

# A fixed table, not ``mimetypes``: that module also reads the host's /etc/mime.types,
# so the same file could get another type on another image.
MIME_TYPES: Mapping[str, str] = {
    "png": "image/png",
    "apng": "image/apng",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "svg": "image/svg+xml",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "avi": "video/x-msvideo",
    "mkv": "video/x-matroska",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "json": "application/json",
    "txt": "text/plain",
    "glb": "model/gltf-binary",
}
_DEFAULT_MIME = "application/octet-stream"

# Formats that may hold several frames; Pillow says whether this file does.
_MAYBE_ANIMATED = frozenset({"image/png", "image/apng", "image/webp", "image/gif"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks read before giving the file to Pillow: text chunks (the workflow's metadata) and
# the rest come before the image data, a handful in any PNG ComfyUI writes.
_PNG_MAX_HEADER_CHUNKS = 64

# ComfyUI names files <prefix>_<5-digit counter>_.<ext>; the joined video keeps the prefix.
_COUNTER_SUFFIX = re.compile(r"_?\d+_?$")


@dataclass(frozen=True)
class OutputFile:
    """One file an output node saved, located on disk and typed."""

    node_id: str
    filename: str
    subfolder: str
    path: Path
    mime_type: str
    kind: OutputKind
    video: VideoInfo | None = None


def mime_type_for(filename: str) -> str:
    """The MIME type for a file name, by its extension."""
    return MIME_TYPES.get(PurePosixPath(filename).suffix.lower().lstrip("."), _DEFAULT_MIME)


def collect_outputs(
    ui: UiOutputs,
    dirs: Directories,
    *,
    frames_to_video: FramesToVideo | None = None,
    scratch_dir: Path | None = None,
    max_pixels: int | None = None,
    deadline: Deadline | None = None,
) -> tuple[list[OutputFile], list[str]]:
    """Every file the output nodes reported, in a stable order, and the errors.

    Previews (``temp`` items) count only when no node reported any other file.
    Order: node ids as a person reads them (2 before 10), then the node's keys in the
    order it reported them, then list order. A file reported twice is returned once.
    With ``frames_to_video``, a node's two or more still images become one video,
    written into ``scratch_dir``; a frame over ``max_pixels`` (``OUTPUT_MAX_PIXELS``)
    leaves the frames as they are, with a line in the errors. Reading a video's frames
    checks ``deadline`` (the job's limit and cancel) as it goes, and raises its error.
    """
    if frames_to_video is not None and scratch_dir is None:
        raise ValueError("collect_outputs needs a scratch_dir to write joined videos into")
    files: list[OutputFile] = []
    errors: list[str] = []
    seen: set[Path] = set()
    video_names: set[str] = set()
    # Decided by what the nodes reported, not by what could be read: a saved file that
    # is missing gets its errors[] line, and previews do not stand in for it.
    previews = not any(
        _file_entries(node_ui, want_previews=False)
        for node_ui in ui.values()
        if isinstance(node_ui, Mapping)
    )
    for node_id in sort_node_ids(list(ui)):
        node_ui = ui[node_id]
        if not isinstance(node_ui, Mapping):
            continue
        node_files = _node_files(
            node_id, node_ui, dirs, seen, errors, previews=previews, deadline=deadline
        )
        if frames_to_video is not None and scratch_dir is not None:
            node_files = _join_stills(
                node_files, frames_to_video, scratch_dir, video_names, errors, max_pixels, deadline
            )
        files.extend(node_files)
    for line in errors:
        log.warning("output not collected as reported: %s", line)
    log.debug("collected %d output file(s)", len(files))
    return files, errors


def _node_files(
    node_id: str,
    node_ui: Mapping[str, Any],
    dirs: Directories,
    seen: set[Path],
    errors: list[str],
    *,
    previews: bool,
    deadline: Deadline | None = None,
) -> list[OutputFile]:
    """The files one node reported, each checked; problems are appended to ``errors``."""
    flagged_animated = _animated_flag(node_ui.get("animated"))
    found: list[OutputFile] = []
    for entry in _file_entries(node_ui, want_previews=previews):
        folder_type = str(entry.get("type") or "output")
        name = f"{entry['filename']} (node {node_id})"
        try:
            path = _locate(entry, folder_type, dirs)
            if path in seen:
                continue
            seen.add(path)
            file = _typed_file(node_id, entry, path, flagged_animated)
        except ItemError as exc:
            errors.append(f"{name}: {exc.reason}")
            continue
        if file.kind == "video":
            try:
                file = replace(file, video=video.probe(path, deadline))
            except ItemError as exc:
                # Still delivered: the user may be able to play what ffmpeg cannot read.
                errors.append(f"{name}: {exc.reason}")
        found.append(file)
    return found


def _file_entries(node_ui: Mapping[str, Any], *, want_previews: bool) -> list[Mapping[str, Any]]:
    """A node's ui entries that name a file; previews (``temp``) only if wanted."""
    entries: list[Mapping[str, Any]] = []
    for value in node_ui.values():
        if not isinstance(value, (list, tuple)):
            continue
        for entry in value:
            # Only dicts naming a file are files: text outputs are strings, and
            # ``animated: (True,)`` is a flag.
            if not isinstance(entry, Mapping) or not isinstance(entry.get("filename"), str):
                continue
            if entry.get("type") == "temp" and not want_previews:
                continue
            entries.append(entry)
    return entries


def _locate(entry: Mapping[str, Any], folder_type: str, dirs: Directories) -> Path:
    """``<folder for type>/<subfolder>/<filename>``, refusing anything outside that folder."""
    filename = str(entry["filename"])
    subfolder = str(entry.get("subfolder") or "")
    try:
        folder = dirs.for_type(folder_type)
    except ValueError as exc:
        raise ItemError(filename, str(exc)) from exc
    if not filename or "\x00" in filename or "\x00" in subfolder:
        raise ItemError(filename, "refused: not a usable file name")
    # realpath also follows symlinks, so a link out of the folder is refused too; an
    # absolute subfolder or name replaces the base in join, and is refused the same way.
    # Strings, not Path.resolve and is_relative_to: the same answer at a tenth of the cost.
    # ComfyUI's folders do not move: resolved once; below them, one lstat per part.
    base = real_paths.fixed(str(folder))
    path = real_paths.resolve(os.path.join(base, subfolder, filename), (base,))  # noqa: PTH118
    if not path.startswith(base.rstrip(os.sep) + os.sep):
        raise ItemError(
            filename,
            f"refused: subfolder {subfolder!r} and file name {filename!r} point outside "
            f"ComfyUI's {folder_type} folder",
        )
    return Path(path)


def _typed_file(
    node_id: str, entry: Mapping[str, Any], path: Path, flagged_animated: bool
) -> OutputFile:
    """An ``OutputFile`` for a located path; ``ItemError`` if it is missing or unreadable."""
    mime = mime_type_for(path.name)
    try:
        with path.open("rb") as file:  # opened once: readable, and typed from it
            kind = _kind(file, path, mime, flagged_animated)
    except FileNotFoundError:
        raise ItemError(path.name, "the node reported it, but the file does not exist") from None
    except OSError as exc:
        raise ItemError(path.name, f"cannot be read: {exc.strerror or exc}") from exc
    return OutputFile(
        node_id=node_id,
        filename=PurePosixPath(str(entry["filename"])).name,
        subfolder=str(entry.get("subfolder") or ""),
        path=path,
        mime_type=mime,
        kind=kind,
    )


def _kind(file: BinaryIO, path: Path, mime: str, flagged_animated: bool) -> OutputKind:
    major = mime.partition("/")[0]
    if major == "video":
        return "video"
    if major == "audio":
        return "audio"
    if major != "image":
        return "other"
    if mime not in _MAYBE_ANIMATED:
        return "image"
    try:
        frames = _png_frames(file)
        if frames is None:  # not a PNG, or an unusual one: Pillow tells
            file.seek(0)
            with Image.open(file) as image:
                frames = int(getattr(image, "n_frames", 1))
    except (OSError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
        # Still delivered as bytes; the node's own ``animated`` flag is the best guess.
        log.warning("Pillow cannot read %s; typing it from the node's animated flag", path.name)
        return "animation" if flagged_animated else "image"
    # The node's flag counts too: encoders merge identical frames, so SaveAnimatedWEBP of
    # a batch of equal images writes one frame, and it is still the node's animation.
    return "animation" if frames > 1 or flagged_animated else "image"


def _png_frames(file: BinaryIO) -> int | None:
    """A PNG's frame count from its chunk headers, as Pillow's ``n_frames`` reads it.

    An APNG says how many frames it holds in an ``acTL`` chunk before its first ``IDAT``;
    a still PNG has none. A few reads, without Pillow's format detection and header
    parsing (most outputs are PNGs). None when the file does not read as a PNG.
    """
    if file.read(8) != _PNG_SIGNATURE:
        return None
    for _ in range(_PNG_MAX_HEADER_CHUNKS):
        header = file.read(8)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        if kind == b"acTL":
            body = file.read(4)
            return struct.unpack(">I", body)[0] if len(body) == 4 else None
        if kind == b"IDAT":
            return 1
        file.seek(length + 4, io.SEEK_CUR)  # the chunk's data and its CRC
    return None


def _animated_flag(value: Any) -> bool:
    """ComfyUI's ``animated`` entry, ``(True,)``, as one bool for the node."""
    if isinstance(value, (list, tuple)):
        return any(v is True for v in value)
    return value is True


def _join_stills(
    files: list[OutputFile],
    request: FramesToVideo,
    scratch_dir: Path,
    used_names: set[str],
    errors: list[str],
    max_pixels: int | None = None,
    deadline: Deadline | None = None,
) -> list[OutputFile]:
    """Replace a node's still images by one video made of them (the stills kept if asked)."""
    stills = [f for f in files if f.kind == "image"]
    if len(stills) < 2:
        return files
    first = stills[0]
    prefix = _COUNTER_SUFFIX.sub("", PurePosixPath(first.filename).stem) or f"node{first.node_id}"
    filename = f"{prefix}_video.{request.format}"
    if filename in used_names:
        filename = f"{prefix}_{first.node_id}_video.{request.format}"
    used_names.add(filename)
    try:
        path = video.frames_to_video(
            [f.path for f in stills],
            scratch_dir / filename,
            request.fps,
            request.format,
            max_pixels=max_pixels,
            deadline=deadline,
        )
        info = video.probe(path, deadline)
    except ItemError as exc:
        # A frame's problem names the frame; the video's own names nothing more.
        why = exc.reason if exc.name == filename else str(exc)
        errors.append(
            f"{filename} (node {first.node_id}): could not join {len(stills)} frames "
            f"into a video, returning the frames instead: {why}"
        )
        return files
    joined = OutputFile(
        node_id=first.node_id,
        filename=filename,
        subfolder=first.subfolder,
        path=path,
        mime_type=mime_type_for(filename),
        kind="video",
        video=info,
    )
    result: list[OutputFile] = []
    for file in files:
        if file is first:
            result.append(joined)
        if file.kind != "image" or request.keep_frames:
            result.append(file)
    return result
