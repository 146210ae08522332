"""Where a custom node pack folder came from, and which of its requirements a missing module is.

Plain Python for the boot's pack diagnosis and ``scripts/workflow_needs.py``: a pack
folder laid out by a pod (``git clone`` into ``custom_nodes/``) carries its origin and
commit in ``.git``; those two are what ``scripts/add_custom_nodes.py`` needs to bake the
pack into the image. Read from the files, not with ``git``: the worker's image need not
run git at boot, and a volume's checkout may belong to another user (git then refuses
it as "dubious ownership").
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ADD_COMMAND = "scripts/add_custom_nodes.py"
"""The command that bakes a pack into the image (manifest + lock), run in a checkout."""
ADD_COMMAND_HINT = f"{ADD_COMMAND} <repository URL>@<commit>"
NEEDS_COMMAND = "scripts/workflow_needs.py"
"""The command that lists what a workflow needs: node packs and model files."""


def not_installed(class_type: str, node_ids: Sequence[str]) -> str:
    """The detail line for a node type no pack in the image provides."""
    used_by = ("nodes " if len(node_ids) > 1 else "node ") + ", ".join(node_ids)
    return (
        f"Node type '{class_type}' is not installed (used by {used_by}): install the custom "
        f"node pack that provides it ({ADD_COMMAND_HINT}; {NEEDS_COMMAND} names the packs a "
        "workflow needs), or fix class_type"
    )


_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# Import names that differ from the distribution that installs them, for the
# requirements custom node packs list most. Matched after normalising both sides.
_DISTRIBUTIONS_OF_MODULE = {
    "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
    "pil": ("pillow",),
    "skimage": ("scikit-image",),
    "sklearn": ("scikit-learn",),
    "yaml": ("pyyaml",),
    "mediapipe": ("mediapipe",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "google.protobuf": ("protobuf",),
    "fvcore": ("fvcore",),
    "git": ("gitpython",),
    "dateutil": ("python-dateutil",),
    "attr": ("attrs",),
    "bs4": ("beautifulsoup4",),
    "dotenv": ("python-dotenv",),
    "jwt": ("pyjwt",),
    "magic": ("python-magic",),
    "segment_anything": ("segment-anything", "segment_anything"),
    "ultralytics": ("ultralytics",),
    "timm": ("timm",),
    "piexif": ("piexif",),
    "imageio_ffmpeg": ("imageio-ffmpeg",),
    "insightface": ("insightface",),
    "rembg": ("rembg",),
    "numba": ("numba",),
    "gguf": ("gguf",),
}
_MAX_REQUIREMENTS_BYTES = 256 * 1024
_MAX_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True)
class PackOrigin:
    """A pack checkout's remote and the commit it is at."""

    url: str
    commit: str

    def add_command(self) -> str:
        """The command that bakes this pack, at this commit, into the image."""
        return f"{ADD_COMMAND} {self.url}@{self.commit}"


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Pillow`` = ``pillow``, ``a_b`` = ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _git_dir(folder: Path) -> Path | None:
    dot_git = folder / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
        try:
            text = dot_git.read_text(encoding="utf-8", errors="replace")[:_MAX_CONFIG_BYTES]
        except OSError:
            return None
        if text.startswith("gitdir:"):
            target = Path(text[len("gitdir:") :].strip())
            target = target if target.is_absolute() else folder / target
            return target if target.is_dir() else None
    return None


def _common_dir(git_dir: Path) -> Path:
    """Where a repository keeps its refs and config: a worktree's are in the main one's.

    A ``commondir`` that cannot be read or resolved (unreadable, not text, a link loop)
    leaves the worktree's own folder: the pack is then of unknown origin, not a crash of
    whatever asked (the boot's pack report, ``scripts/add_custom_nodes.py``)."""
    commondir = git_dir / "commondir"
    try:
        if commondir.is_file():
            text = commondir.read_text(encoding="utf-8", errors="replace")[:_MAX_CONFIG_BYTES]
            return (git_dir / text.strip()).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop (3.12), a NUL in the text
        pass
    return git_dir


def _head_commit(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if _HEX40.match(head):
        return head
    if not head.startswith("ref:"):
        return None
    ref = head[len("ref:") :].strip()
    common = _common_dir(git_dir)
    for base in (git_dir, common):
        try:
            value = (base / ref).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if _HEX40.match(value):
            return value
    try:
        packed = (common / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref and _HEX40.match(sha):
            return sha
    return None


def _origin_url(git_dir: Path) -> str | None:
    config_file = _common_dir(git_dir) / "config"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(
            config_file.read_text(encoding="utf-8", errors="replace")[:_MAX_CONFIG_BYTES]
        )
    except (OSError, configparser.Error):
        return None
    section = 'remote "origin"'
    if parser.has_section(section) and parser.has_option(section, "url"):
        return parser.get(section, "url").strip() or None
    return None


def read_origin(folder: Path) -> PackOrigin | None:
    """The origin URL and HEAD commit of a pack checkout; None when either is unknown."""
    git_dir = _git_dir(folder)
    if git_dir is None:
        return None
    url, commit = _origin_url(git_dir), _head_commit(git_dir)
    if url is None or commit is None:
        return None
    return PackOrigin(url=_public_url(url), commit=commit)


def _public_url(url: str) -> str:
    """``git@github.com:o/r.git`` -> ``https://github.com/o/r.git``; credentials dropped."""
    match = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", url)
    if match:
        return f"https://{match[1]}/{match[2]}"
    return re.sub(r"^(https?://)[^/@]*@", r"\1", url)


def requirement_lines(folder: Path) -> list[str]:
    """The requirement lines of a pack's ``requirements.txt`` (none if it has none)."""
    path = folder / "requirements.txt"
    try:
        if path.stat().st_size > _MAX_REQUIREMENTS_BYTES:
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def requirement_for_module(module: str, requirements: Iterable[str]) -> str | None:
    """The requirement line that installs ``module`` (``cv2`` -> ``opencv-python>=4``), if any."""
    top = module.split(".")[0]
    wanted = {normalise(top), *map(normalise, _DISTRIBUTIONS_OF_MODULE.get(module.lower(), ()))}
    wanted |= set(map(normalise, _DISTRIBUTIONS_OF_MODULE.get(top.lower(), ())))
    for line in requirements:
        match = _REQUIREMENT_NAME.match(line)
        if match and normalise(match[1]) in wanted:
            return line
    return None
