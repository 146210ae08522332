"""What a user names, turned into packs pinned to commits: a URL, a snapshot, a ComfyUI folder.

Each source gives :class:`Candidate` records: the pack's folder name, its https repository,
its commit, and a git directory where that commit can be read (a bare repository fetched
into a work folder, or the user's own checkout). Entries a source holds but the image
cannot take (a ComfyUI-Manager registry entry, a single-file node, a folder with no git
origin) come back as :class:`Refusal` with what to do, so one run names every one of them.

Only git is used, through its command line, with the user's own git configuration
(``url.<base>.insteadOf`` rewrites apply).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.packs import PackError
from engine.packs.gitcli import fetch, git, remote_refs

FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHORT_COMMIT = re.compile(r"^[0-9a-f]{7,39}$")
_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>(?!/)[^\s]+)$")
# A Comfy Registry id: one name, no scheme, host or path (comfyui-kjnodes, ComfyUI-GGUF).
_REGISTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# ComfyUI ships these in custom_nodes/; they are not packs.
_COMFY_OWN_FILES = {"example_node.py.example", "websocket_image_save.py"}
# The manager installs packs at run time, which this worker never does.
MANAGER = "comfyui-manager"


@dataclass(frozen=True)
class Candidate:
    """A pack to add: where it comes from and where its commit can be read."""

    name: str
    repo: str
    commit: str
    git_dir: Path
    origin: str
    """What the user named (a URL, ``snapshot FILE``, ``folder DIR``), for messages."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """An entry of a source that cannot become a pack as it is, and what to do."""

    name: str
    reason: str


@dataclass
class Found:
    """What a source yields: packs to add, entries refused, entries skipped with a word."""

    candidates: list[Candidate] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pips: dict[str, str] = field(default_factory=dict)
    """A snapshot's ``pips`` as name -> version (pinned ones only)."""


# -- URLs ----------------------------------------------------------------------------------


def https_url(url: str) -> str:
    """The https form the image build fetches; ssh forms of a host are rewritten."""
    url = url.strip()
    scp = _SCP_LIKE.match(url)
    if scp and "://" not in url:
        return f"https://{scp['host']}/{scp['path']}"
    parts = urlsplit(url)
    if parts.scheme in {"ssh", "git+ssh"} and parts.hostname:
        return f"https://{parts.hostname}{parts.path}"
    if parts.scheme == "https" and parts.netloc:
        return url
    if _REGISTRY_ID.fullmatch(url) and not Path(url).exists():  # not a local folder
        # What worker-comfyui's `comfy-node-install <id>` and ComfyUI-Manager take.
        raise PackError(
            f"{url}: a Comfy Registry id (what comfy-node-install takes), not a repository: "
            "the registry serves archives, not git commits, and this command resolves "
            "nothing online but git",
            [
                f"add it by its repository, which https://registry.comfy.org/nodes/{url} "
                "links: scripts/add_custom_nodes.py https://github.com/OWNER/NAME.git"
            ],
        )
    raise PackError(
        f"{url}: the image build fetches packs over https; give the pack's https clone URL",
        ["e.g. https://github.com/OWNER/NAME.git (push a local repository there first)"],
    )


def split_spec(spec: str) -> tuple[str, str | None]:
    """``URL@REV`` -> (URL, REV); an ``@`` before the URL's last ``/`` is a user name."""
    at = spec.rfind("@")
    if at > spec.rfind("/"):
        return spec[:at], spec[at + 1 :] or None
    return spec, None


def pack_name(url: str) -> str:
    """The folder name a URL's pack gets: its last path part, without ``.git``."""
    return url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


def from_url(spec: str, work: Path) -> Candidate:
    """A ``URL[@commit|@branch|@tag]`` the user typed, pinned and fetched."""
    raw_url, rev = split_spec(spec)
    url = https_url(raw_url)
    refs, head_branch = remote_refs(url)
    notes = []
    if rev is None:
        commit = refs.get("HEAD") or refs.get(f"refs/heads/{head_branch}", "")
        if not commit:
            raise PackError(f"{url} has no HEAD to pin", ["name a commit: URL@<commit>"])
        branch = f" (branch {head_branch})" if head_branch else ""
        notes.append(f"no commit given: pinned the current HEAD{branch}, {commit}")
    elif FULL_COMMIT.match(rev):
        commit = rev
    else:
        commit = _resolve_rev(url, rev, refs)
        if commit != rev:
            notes.append(f"pinned {rev} at {commit}")
    name = pack_name(url)
    git_dir = work / f"{name}.git"
    fetch(url, commit, git_dir)
    return Candidate(name, url, commit, git_dir, url, tuple(notes))


def _resolve_rev(url: str, rev: str, refs: dict[str, str]) -> str:
    for ref in (f"refs/tags/{rev}^{{}}", f"refs/tags/{rev}", f"refs/heads/{rev}", rev):
        if ref in refs:
            return refs[ref]
    if SHORT_COMMIT.match(rev):
        tips = {c for c in refs.values() if c.startswith(rev)}
        if len(tips) == 1:
            return tips.pop()
        raise PackError(
            f"{rev} is a short commit id; {url} can be fetched by a full one only",
            [f"give the full 40-hex id (git rev-parse {rev} in a clone of {url})"],
        )
    raise PackError(
        f"{url} has no branch or tag {rev!r}",
        ["give a full commit id, a branch or tag name, or no @... to pin its current HEAD"],
    )


# -- ComfyUI-Manager snapshots --------------------------------------------------------------


def read_snapshot(path: Path) -> dict[str, Any]:
    """A ComfyUI-Manager snapshot (``.json``, or ``.yaml`` under ``custom_nodes:``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackError(f"cannot read {path}: {exc.strerror}") from exc
    data: object
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml  # the manager's own .yaml form; PyYAML comes with the dev tools
        except ImportError as exc:
            raise PackError(f"{path} is not JSON; reading YAML needs PyYAML installed") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
    if isinstance(data, dict) and isinstance(data.get("custom_nodes"), dict):
        data = data["custom_nodes"]  # the .yaml form wraps the snapshot
    keys = {"git_custom_nodes", "cnr_custom_nodes"}
    if not isinstance(data, dict) or not keys & data.keys():
        raise PackError(
            f"{path} is not a ComfyUI-Manager snapshot (no git_custom_nodes or cnr_custom_nodes)",
            [
                "save one in ComfyUI-Manager (Snapshot Manager -> Save snapshot; the file is "
                "in ComfyUI/user/default/ComfyUI-Manager/snapshots/), or with "
                "`comfy node save-snapshot`, or name the packs by URL",
            ],
        )
    return data


def from_snapshot(path: Path, work: Path, skip: Sequence[str]) -> Found:
    """The git entries of a snapshot at their hashes; the rest named with what to do."""
    data = read_snapshot(path)
    found = Found()
    skip_set = {s.lower() for s in skip}
    git_nodes = data.get("git_custom_nodes") or {}
    if not isinstance(git_nodes, dict):
        raise PackError(f"{path}: git_custom_nodes must map URLs to {{hash, disabled}}")
    for url, entry in git_nodes.items():
        name = pack_name(str(url))
        if name.lower() in skip_set:
            found.skipped.append(f"{name}: skipped (--skip)")
            continue
        if name.lower() == MANAGER:
            found.skipped.append(f"{name}: skipped, the worker installs nothing at run time")
            continue
        if isinstance(entry, dict) and entry.get("disabled"):
            found.skipped.append(f"{name}: skipped, disabled in the snapshot")
            continue
        commit = entry.get("hash") if isinstance(entry, dict) else None
        if not isinstance(commit, str) or not FULL_COMMIT.match(commit):
            found.refused.append(
                Refusal(name, f"{url} has no commit hash in the snapshot: add it by URL@commit")
            )
            continue
        try:
            repo = https_url(str(url))
            fetch(repo, commit, work / f"{name}.git")
        except PackError as exc:
            found.refused.append(Refusal(name, str(exc)))
            continue
        found.candidates.append(
            Candidate(name, repo, commit, work / f"{name}.git", f"snapshot {path.name}")
        )
    cnr = data.get("cnr_custom_nodes") or {}
    for node_id, version in cnr.items() if isinstance(cnr, dict) else []:
        if str(node_id).lower() in skip_set:
            found.skipped.append(f"{node_id}: skipped (--skip)")
            continue
        found.refused.append(
            Refusal(
                str(node_id),
                f"registry pack {node_id} {version}: the Comfy Registry serves archives, not "
                "git commits, and this command resolves nothing online but git. Add it by its "
                f"repository (the registry page https://registry.comfy.org/nodes/{node_id} "
                "links it) as URL@<the commit of that version>, or leave it out with "
                f"--skip {node_id}",
            )
        )
    for item in data.get("file_custom_nodes") or []:
        if isinstance(item, dict) and item.get("filename") in _COMFY_OWN_FILES:
            continue  # ComfyUI's own example files, listed by the manager like any other
        if isinstance(item, dict) and not item.get("disabled"):
            found.skipped.append(
                f"{item.get('filename')}: a single-file node is no pack the image can pin; "
                "put it in a git repository and add that"
            )
    pips = data.get("pips") or {}
    for spec in pips if isinstance(pips, dict) else []:
        name, sep, version = str(spec).partition("==")
        if sep and version and " @ " not in str(spec):
            found.pips[name.strip()] = version.strip()
    return found


# -- a ComfyUI folder -------------------------------------------------------------------------


def from_folder(folder: Path, skip: Sequence[str]) -> Found:
    """Each git checkout in a ComfyUI's ``custom_nodes/``, at its HEAD, read in place."""
    custom_nodes = folder / "custom_nodes" if (folder / "custom_nodes").is_dir() else folder
    if not custom_nodes.is_dir():
        raise PackError(
            f"{folder} is neither a ComfyUI folder nor its custom_nodes folder",
            ["name the ComfyUI folder a pod uses, e.g. /workspace/ComfyUI"],
        )
    found = Found()
    skip_set = {s.lower() for s in skip}
    for entry in sorted(custom_nodes.iterdir(), key=lambda p: p.name.lower()):
        name = entry.name
        if name.startswith((".", "__")) or name in _COMFY_OWN_FILES:
            continue
        if name.lower() in skip_set:
            found.skipped.append(f"{name}: skipped (--skip)")
            continue
        if name.endswith(".disabled"):
            found.skipped.append(f"{name}: skipped, disabled")
            continue
        if not entry.is_dir():
            if name.endswith(".py"):
                found.skipped.append(
                    f"{name}: a single-file node is no pack the image can pin; "
                    "put it in a git repository and add that"
                )
            continue
        if name.lower() == MANAGER:
            found.skipped.append(f"{name}: skipped, the worker installs nothing at run time")
            continue
        found_one = _checkout(entry)
        if isinstance(found_one, Refusal):
            found.refused.append(found_one)
        else:
            found.candidates.append(found_one)
    return found


def _checkout(path: Path) -> Candidate | Refusal:
    name = path.name
    fix = f"push it to a git host and add it by URL@commit, or leave it out with --skip {name}"
    inside = git("rev-parse", "--show-toplevel", cwd=path)
    if inside.returncode != 0 or Path(inside.stdout.strip()).resolve() != path.resolve():
        return Refusal(name, f"{path} is not a git checkout, so it has no origin to pin: {fix}")
    # The URL as configured: `git remote get-url` would apply url.*.insteadOf rewrites.
    origin = git("config", "--get", "remote.origin.url", cwd=path)
    if origin.returncode != 0 or not origin.stdout.strip():
        return Refusal(name, f"{path} has no git origin to fetch it from: {fix}")
    head = git("rev-parse", "--verify", "--quiet", "HEAD", cwd=path).stdout.strip()
    if not FULL_COMMIT.match(head):
        return Refusal(name, f"{path} has no commit checked out: {fix}")
    try:
        repo = https_url(origin.stdout.strip())
    except PackError as exc:
        return Refusal(name, f"{path}: {exc}")
    notes = []
    if git("status", "--porcelain", "--untracked-files=no", cwd=path).stdout.strip():
        notes.append("has local changes: the image takes the commit, not the changes")
    if not git("branch", "--remotes", "--contains", head, cwd=path).stdout.strip():
        notes.append(
            f"{head[:12]} is on no origin branch this checkout knows: push it, or the "
            "image build cannot fetch it"
        )
    git_dir = Path(git("rev-parse", "--absolute-git-dir", cwd=path).stdout.strip())
    return Candidate(name, repo, head, git_dir, f"folder {path.parent}", tuple(notes))
