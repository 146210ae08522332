"""comfyui/custom_nodes.json: the image's packs, each pinned to a commit, read and written.

The same rules as ``scripts/install_custom_nodes.py`` (which the Dockerfile runs with the
standard library only, so it keeps its own reader): a folder name, an https git URL, a
full commit id, whether the pack brings requirements, and why it is there.
``requirements`` is ``true`` (its requirements.txt), ``false``, or ``"pyproject.toml"`` for
a pack that lists its dependencies only there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.packs import PackError

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PYPROJECT = "pyproject.toml"
REQUIREMENTS = "requirements.txt"


@dataclass(frozen=True)
class Pack:
    """One manifest entry."""

    name: str
    repo: str
    commit: str
    requirements: bool | str
    purpose: str


def requirements_file(value: object) -> str:
    """The file a manifest's ``requirements`` value names (``true``: requirements.txt)."""
    return PYPROJECT if value == PYPROJECT else REQUIREMENTS


def parse_pack(raw: object, index: int) -> Pack:
    """Validate one manifest object; the error names the entry and the field."""
    if not isinstance(raw, dict):
        raise PackError(f"manifest entry {index}: expected an object")
    label = f"manifest entry {index} ({raw.get('name', '?')!s})"
    missing = [k for k in ("name", "repo", "commit", "requirements", "purpose") if k not in raw]
    if missing:
        raise PackError(f"{label}: missing {', '.join(missing)}")
    name, repo, commit, reqs, purpose = (
        raw["name"], raw["repo"], raw["commit"], raw["requirements"], raw["purpose"]
    )  # fmt: skip
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PackError(f"{label}: name must be a folder name, got {name!r}")
    if not isinstance(repo, str) or urlsplit(repo).scheme != "https" or not urlsplit(repo).netloc:
        raise PackError(f"{label}: repo must be an https:// git URL, got {repo!r}")
    if not isinstance(commit, str) or not COMMIT_RE.match(commit):
        raise PackError(f"{label}: commit must be a full 40-hex commit id, got {commit!r}")
    if not isinstance(reqs, bool) and reqs != PYPROJECT:
        raise PackError(f"{label}: requirements must be true, false or {PYPROJECT!r}")
    if not isinstance(purpose, str) or not purpose.strip():
        raise PackError(f"{label}: purpose must say why the pack is here")
    return Pack(name, repo, commit, reqs, purpose)


def load(path: Path) -> list[Pack]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, list):
        raise PackError(f"{path} must be a JSON list of packs")
    packs = [parse_pack(item, i) for i, item in enumerate(raw)]
    names = [p.name.lower() for p in packs]
    if len(set(names)) != len(names):
        raise PackError(f"{path}: two packs share a folder name")
    return packs


def render(packs: Sequence[Pack]) -> str:
    """The manifest's text, as the committed file is formatted."""
    return json.dumps([asdict(p) for p in packs], indent=2, ensure_ascii=False) + "\n"
