#!/usr/bin/env python3
"""Install the custom nodes of ``comfyui/custom_nodes.json`` into a ComfyUI checkout.

    python scripts/install_custom_nodes.py --comfyui /comfyui
    python scripts/install_custom_nodes.py --comfyui comfyui/ComfyUI --python .venv/bin/python
    python scripts/install_custom_nodes.py --comfyui /comfyui --no-requirements
    python scripts/install_custom_nodes.py --comfyui comfyui/ComfyUI --from ../packs --no-requirements

Used by the Dockerfile and by scripts/setup.sh, so the image and a developer's checkout
get the same packs at the same commits.

Each pack is fetched at its pinned commit only (``git fetch --depth 1 <commit>``: GitHub
serves any reachable commit by id), checked out detached, and its HEAD verified. A pack
already at its commit is left alone; one at another commit is moved if its tree is clean
and refused if it has local changes (they would be lost).

The packs' requirements are installed in ONE ``pip install -r a -r b ...``: pip then
resolves them together, instead of each pack's install silently up- or downgrading what
the one before needed (ReActor pins numpy, opencv's newest releases want numpy 2).
``--constraint`` files keep torch and friends where the image put them.

``--from DIR`` takes each pack from ``DIR/<name>`` instead of git (for machines that
cannot reach upstream): the folder is linked into ``custom_nodes/``, after checking that
a git checkout there is at the pinned commit (a plain folder is taken as it is, with a
warning). The image installs the packs' requirements from comfyui/image.lock, so it
passes ``--no-requirements``.

Packs' own ``install.py`` scripts are not run: ReActor's downloads models (that is
``scripts/download_models.py``'s job, with hashes) and pip-installs outside the resolve.

Standard library only. Exit status: 0 done, 1 a git or pip step failed, 2 bad manifest or
arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "comfyui" / "custom_nodes.json"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Both wheels install the same `onnxruntime` package; with both present the CPU build's
# files can win and ReActor / PuLID silently lose the CUDA provider.
ORT_CPU, ORT_GPU = "onnxruntime", "onnxruntime-gpu"
PYPROJECT = "pyproject.toml"


class InstallError(Exception):
    """A git or pip step failed; the message names the pack and the command."""


class ManifestError(ValueError):
    """The manifest is unreadable or an entry breaks its format."""


@dataclass(frozen=True)
class NodePack:
    name: str
    repo: str
    commit: str
    requirements: bool | str
    """true: requirements.txt; "pyproject.toml": its [project] dependencies; false: none."""
    purpose: str


def parse_pack(raw: object, index: int) -> NodePack:
    """Validate one manifest object; the error names the entry and the field."""
    if not isinstance(raw, dict):
        raise ManifestError(f"entry {index}: expected an object")
    label = f"entry {index} ({raw.get('name', '?')!s})"
    missing = [k for k in ("name", "repo", "commit", "requirements", "purpose") if k not in raw]
    if missing:
        raise ManifestError(f"{label}: missing {', '.join(missing)}")
    name, repo, commit = raw["name"], raw["repo"], raw["commit"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ManifestError(f"{label}: name must be a folder name, got {name!r}")
    if not isinstance(repo, str) or urlsplit(repo).scheme != "https" or not urlsplit(repo).netloc:
        raise ManifestError(f"{label}: repo must be an https:// git URL, got {repo!r}")
    if not isinstance(commit, str) or not COMMIT_RE.match(commit):
        raise ManifestError(f"{label}: commit must be a full 40-hex commit id, got {commit!r}")
    if not isinstance(raw["requirements"], bool) and raw["requirements"] != PYPROJECT:
        raise ManifestError(f"{label}: requirements must be true, false or {PYPROJECT!r}")
    if not isinstance(raw["purpose"], str) or not raw["purpose"].strip():
        raise ManifestError(f"{label}: purpose must say why the pack is here")
    return NodePack(name, repo, commit, raw["requirements"], raw["purpose"])


def load_manifest(path: Path) -> list[NodePack]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, list):
        raise ManifestError(f"{path} must be a JSON list of packs")
    packs = [parse_pack(item, i) for i, item in enumerate(raw)]
    names = [p.name for p in packs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: two packs share a folder name")
    return packs


def run(cmd: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run a command; stdout is returned, a failure names ``what`` and shows stderr."""
    result = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise InstallError(f"{what}: `{' '.join(cmd)}` exited {result.returncode}\n{tail}")
    return result.stdout


def git_head(path: Path) -> str | None:
    """The checked-out commit, or None for no checkout (or one that has no commit yet)."""
    if not (path / ".git").exists():
        return None
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
        cwd=path,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def checkout(pack: NodePack, custom_nodes: Path) -> str:
    """Put ``pack`` at its commit under ``custom_nodes``; returns what was done."""
    target = custom_nodes / pack.name
    if target.exists() and not (target / ".git").exists():
        raise InstallError(
            f"{pack.name}: {target} exists and is not a git checkout; remove it to install "
            f"the pinned {pack.commit[:12]}"
        )
    head = git_head(target)
    if head == pack.commit:
        return "already at its commit"
    fresh = not target.exists()
    try:
        _move_to_commit(pack, target, head)
    except InstallError:
        if fresh:  # never leave a half-made checkout for the next run to trip on
            shutil.rmtree(target, ignore_errors=True)
        raise
    return "installed" if head is None else f"moved from {head[:12]}"


def _move_to_commit(pack: NodePack, target: Path, head: str | None) -> None:
    if not (target / ".git").exists():
        target.mkdir(parents=True)
        run(["git", "init", "--quiet"], cwd=target, what=f"{pack.name}: git init")
        run(["git", "remote", "add", "origin", pack.repo], cwd=target, what=f"{pack.name}: remote")
    else:
        dirty = run(["git", "status", "--porcelain"], cwd=target, what=f"{pack.name}: status")
        if head is not None and dirty.strip():
            raise InstallError(
                f"{pack.name}: {target} is at {head[:12]} with local changes; commit or discard "
                f"them before it is moved to {pack.commit[:12]}"
            )
        # `git config` sets origin whether or not the checkout has one yet.
        for key, value in (
            ("remote.origin.url", pack.repo),
            ("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"),
        ):
            run(["git", "config", key, value], cwd=target, what=f"{pack.name}: remote")
    try:
        run(
            ["git", "fetch", "--quiet", "--depth", "1", "origin", pack.commit],
            cwd=target,
            what=f"{pack.name}: fetch {pack.commit[:12]}",
        )
    except InstallError:
        # A host that refuses fetching by commit id: take the history and find it there.
        run(["git", "fetch", "--quiet", "origin"], cwd=target, what=f"{pack.name}: fetch")
    run(
        ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", pack.commit],
        cwd=target,
        what=f"{pack.name}: checkout {pack.commit[:12]}",
    )
    if (target / ".gitmodules").exists():
        run(
            ["git", "submodule", "update", "--quiet", "--init", "--recursive", "--depth", "1"],
            cwd=target,
            what=f"{pack.name}: submodules",
        )
    if git_head(target) != pack.commit:
        raise InstallError(f"{pack.name}: HEAD is not {pack.commit} after checkout")


def link_from(pack: NodePack, source_dir: Path, custom_nodes: Path) -> str:
    """Link ``source_dir/<name>`` into ``custom_nodes``; returns what was done."""
    source = (source_dir / pack.name).resolve()
    if not source.is_dir():
        raise InstallError(f"{pack.name}: --from has no folder {source_dir / pack.name}")
    head = git_head(source)
    if head is not None and head != pack.commit:
        raise InstallError(
            f"{pack.name}: {source} is at {head[:12]}, the manifest pins {pack.commit[:12]}"
        )
    target = custom_nodes / pack.name
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        raise InstallError(
            f"{pack.name}: {target} exists and is not a link; remove it to use {source}"
        )
    custom_nodes.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)
    if head is None:
        return f"linked from {source} (not a git checkout: its commit is not checked)"
    return f"linked from {source}"


def requirement_files(packs: Sequence[NodePack], custom_nodes: Path, work: Path) -> list[Path]:
    """One requirements file per pack that has requirements (pyproject's written to ``work``)."""
    files = []
    for pack in packs:
        if not pack.requirements:
            continue
        name = PYPROJECT if pack.requirements == PYPROJECT else "requirements.txt"
        path = custom_nodes / pack.name / name
        if not path.is_file():
            raise InstallError(
                f"{pack.name}: the manifest says its requirements are in {path}, which does not exist"
            )
        if name == PYPROJECT:
            # pip cannot read a pyproject's dependencies as a requirements file.
            project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
            listed = work / f"{pack.name}-requirements.txt"
            listed.write_text("".join(f"{d}\n" for d in project.get("dependencies", [])))
            path = listed
        files.append(path)
    return files


def installed_versions(python: str) -> dict[str, str]:
    out = run([python, "-m", "pip", "list", "--format=json"], what="pip list")
    return {item["name"].lower(): item["version"] for item in json.loads(out)}


def pip_install(python: str, files: Sequence[Path], constraints: Sequence[Path]) -> None:
    cmd = [python, "-m", "pip", "install", "--no-input"]
    for f in files:
        cmd += ["-r", str(f)]
    for c in constraints:
        cmd += ["-c", str(c)]
    print(f"pip: one resolve over {len(files)} requirement file(s)", flush=True)
    # Output streams through: a long resolve with no sign of life looks like a hang.
    if subprocess.run(cmd, check=False).returncode != 0:
        raise InstallError(f"pip install of the packs' requirements failed: {' '.join(cmd)}")


def keep_one_onnxruntime(python: str) -> None:
    """With both onnxruntime wheels installed, keep the GPU one (it also runs on CPU)."""
    versions = installed_versions(python)
    if ORT_CPU not in versions or ORT_GPU not in versions:
        return
    print(
        f"onnxruntime: removing the CPU wheel, keeping {ORT_GPU}=={versions[ORT_GPU]}", flush=True
    )
    run([python, "-m", "pip", "uninstall", "--yes", ORT_CPU], what=f"uninstall {ORT_CPU}")
    # Uninstalling deleted files the two wheels share: lay the GPU wheel's files down again.
    run(
        [python, "-m", "pip", "install", "--no-input", "--no-deps", "--force-reinstall",
         f"{ORT_GPU}=={versions[ORT_GPU]}"],
        what=f"reinstall {ORT_GPU}",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI checkout")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter whose pip installs the requirements"
    )
    parser.add_argument(
        "--constraint", type=Path, action="append", default=[], help="pip constraints file"
    )
    parser.add_argument("--no-requirements", action="store_true", help="check out only")
    parser.add_argument(
        "--from",
        dest="source_dir",
        type=Path,
        help="take each pack from DIR/<name> (linked) instead of git",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        packs = load_manifest(args.manifest)
        if not (args.comfyui / "main.py").is_file():
            raise ManifestError(f"{args.comfyui} is not a ComfyUI checkout (no main.py)")
        missing = [c for c in args.constraint if not c.is_file()]
        if missing:
            raise ManifestError(f"constraints file not found: {', '.join(map(str, missing))}")
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    custom_nodes = args.comfyui / "custom_nodes"
    if args.dry_run:
        for pack in packs:
            req = "with requirements" if pack.requirements else "no requirements"
            print(f"{pack.name}: {pack.repo} @ {pack.commit} ({req}) -> {custom_nodes / pack.name}")
        return EXIT_OK
    try:
        for pack in packs:
            done = (
                link_from(pack, args.source_dir, custom_nodes)
                if args.source_dir
                else checkout(pack, custom_nodes)
            )
            print(f"{pack.name}: {done} ({pack.commit[:12]})", flush=True)
        if not args.no_requirements:
            with tempfile.TemporaryDirectory() as work:
                files = requirement_files(packs, custom_nodes, Path(work))
                if files:
                    pip_install(args.python, files, args.constraint)
                    keep_one_onnxruntime(args.python)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = "linked" if args.source_dir else "at their pinned commits"
    print(f"{len(packs)} custom node pack(s) {where} under {custom_nodes}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
