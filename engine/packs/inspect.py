"""What a pack needs beyond the lock: its requirements, its setup scripts, system libraries.

The policy (docs/custom-nodes.md, "Adding packs to the image"):
- a pack's requirements come from its ``requirements.txt`` (what ComfyUI-Manager and
  ``comfy node install`` install), else from ``pyproject.toml``'s ``[project]
  dependencies``; each must be a PyPI release, since the lock pins every distribution
  by hash (a ``git+https://`` line or a pip option is refused, naming the line);
- ``install.py`` is never run, at build or at boot: it pip-installs outside the lock,
  downloads models or clones repositories, none of which a locked image may do unseen.
  The pack is taken with a warning that says what its script does and what to do instead;
- ``prestartup_script.py`` runs at every boot, as ComfyUI's main.py runs it: one that
  installs or clones is refused (it would install at run time), any other is named;
- system packages a pack names (``apt-get install`` in its README or scripts) or that a
  new distribution is known to need are named when the image's base stage lacks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engine.packs import lock
from engine.packs.gitcli import show, top_level
from engine.packs.manifest import PYPROJECT, REQUIREMENTS
from engine.packs.sources import Candidate

INSTALL_SCRIPTS = ("install.py", "install-manual.py", "install.sh")
PRESTARTUP = "prestartup_script.py"
_DOC_FILES = ("README.md", "README.rst", "README.txt", "README", *INSTALL_SCRIPTS)

# What a setup script does, told by what it calls.
_ACTIONS = {
    "pip-installs packages (the image takes every package from the lock)": re.compile(
        r"pip[\"']?\s*,\s*[\"']install|pip\s+install|-m\s+pip|pip_install|\bpip\.main"
    ),
    "downloads files (models belong in comfyui/models.json or on the network volume)": re.compile(
        r"urlretrieve|download_url|hf_hub_download|requests\.get|\bwget\b|\bcurl\b"
    ),
    "clones repositories (add each as a pack, or as a submodule of this one)": re.compile(
        r"git\s+clone|[\"']clone[\"']|clone_from"
    ),
}
_APT = re.compile(r"\bapt(?:-get)?[ \t]+(?:-\S+[ \t]+)*install[ \t]+([^\n\\&|;`]+)")
_APT_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")

# Distributions that load a system library (or run a program) the wheel does not carry,
# and the Ubuntu package that provides it.
SYSTEM_NEEDS = {
    "pycairo": "libcairo2",
    "cairosvg": "libcairo2",
    "cairocffi": "libcairo2",
    "pyaudio": "libportaudio2",
    "sounddevice": "libportaudio2",
    "python-magic": "libmagic1",
    "pyvips": "libvips42",
    "ffmpeg-python": "ffmpeg",  # runs the ffmpeg program from PATH
    "pydub": "ffmpeg",
    "open3d": "libgomp1",
}


@dataclass(frozen=True)
class Requirements:
    """A pack's requirement lines and the file they came from (None: it has none)."""

    file: str | None
    lines: tuple[str, ...]

    @property
    def manifest_value(self) -> bool | str:
        """The manifest's ``requirements`` value for them."""
        if not self.lines:
            return False
        return PYPROJECT if self.file == PYPROJECT else True


@dataclass
class Inspection:
    """One pack, read at its commit: its requirements, what blocks it, what to know."""

    requirements: Requirements
    problems: list[str] = field(default_factory=list)
    """Reasons the pack cannot be taken as it is; each says what to do."""
    warnings: list[str] = field(default_factory=list)


def image_apt_packages(dockerfile: str) -> set[str]:
    """Ubuntu packages in the image's base stage (the builder's compilers do not ship)."""
    base = dockerfile.split("FROM base AS builder", 1)[0]
    found: set[str] = set()
    for match in re.finditer(r"apt-get install[^\n]*(?:\\\n[^\n]*)*", base):
        words = match[0].replace("\\\n", " ").split()
        found |= {w for w in words[2:] if not w.startswith("-") and w != "&&"}
    return found


def inspect(candidate: Candidate, image_apt: set[str]) -> Inspection:
    """Read the pack at its commit and apply the policy above."""
    names = set(top_level(candidate.git_dir, candidate.commit))

    def read(path: str) -> str | None:
        return show(candidate.git_dir, candidate.commit, path)

    result = Inspection(_requirements(names, read))
    result.warnings += requirement_differences(candidate, result.requirements)
    fix = (
        "fork the pack with a fix, pick another commit, or leave it out (drop its URL; "
        f"--skip {candidate.name} for a snapshot or folder entry)"
    )
    for line in result.requirements.lines:
        if line.startswith("-"):
            result.problems.append(
                f"{result.requirements.file}: {line!r} is a pip option; the lock reads plain "
                f"requirements from PyPI only: {fix}"
            )
        elif lock.requirement_name(line) is None:
            result.problems.append(
                f"{result.requirements.file}: {line!r} is no PyPI release (no wheel or sdist "
                "the lock can pin by hash for Python 3.12 on x86_64): ask the pack to depend "
                f"on a PyPI release, or {fix}"
            )
    for script in INSTALL_SCRIPTS:
        if script in names:
            does = _actions(read(script) or "")
            what = "; ".join(does) if does else "nothing this command recognises"
            result.warnings.append(
                f"{script} is not run (not at build, not at boot): it {what}. Its "
                f"requirements file is in the lock; anything else it does, do at build time"
            )
    if PRESTARTUP in names:
        does = _actions(read(PRESTARTUP) or "")
        installs = [d for d in does if not d.startswith("downloads")]
        if installs:
            result.problems.append(
                f"{PRESTARTUP} runs at every boot and it {'; '.join(installs)}: the worker "
                f"installs nothing at run time: {fix}"
            )
        else:
            result.warnings.append(
                f"{PRESTARTUP} runs at every boot, before ComfyUI loads (as ComfyUI's main.py "
                f"runs it){': it ' + '; '.join(does) if does else ''}"
            )
    mentioned: dict[str, str] = {}
    for doc in _DOC_FILES:
        if doc in names:
            for match in _APT.finditer(read(doc) or ""):
                for pkg in match[1].split():
                    if _APT_PACKAGE.match(pkg):
                        mentioned.setdefault(pkg, doc)
    missing = sorted(p for p in mentioned if p not in image_apt)
    if missing:
        where = ", ".join(f"{p} ({mentioned[p]})" for p in missing)
        result.warnings.append(
            f"names system packages the image lacks: {where}. If the pack needs them, add "
            "them to the Dockerfile's base stage apt-get line"
        )
    if ".gitmodules" in names:
        result.warnings.append(
            "has git submodules: the image build fetches them, so their URLs must be reachable"
        )
    return result


def _requirements(names: set[str], read: Callable[[str], str | None]) -> Requirements:
    req_text = read(REQUIREMENTS) if REQUIREMENTS in names else None
    if req_text is not None:
        return Requirements(REQUIREMENTS, lock.requirement_lines(req_text))
    pyproject = read(PYPROJECT) if PYPROJECT in names else None
    from_pyproject = lock.pyproject_dependencies(pyproject) if pyproject else ()
    if from_pyproject:
        return Requirements(PYPROJECT, from_pyproject)
    return Requirements(None, ())


def requirement_differences(candidate: Candidate, requirements: Requirements) -> list[str]:
    """Where requirements.txt and pyproject.toml's dependencies disagree (by name)."""
    if requirements.file != REQUIREMENTS:
        return []
    pyproject = show(candidate.git_dir, candidate.commit, PYPROJECT)
    deps = lock.pyproject_dependencies(pyproject) if pyproject else ()
    if not deps:
        return []
    in_req = {lock.requirement_name(line) for line in requirements.lines} - {None}
    in_py = {lock.requirement_name(line) for line in deps} - {None}
    only = sorted(n for n in in_py - in_req if n)
    if not only:
        return []
    return [
        f"pyproject.toml also lists {', '.join(only)}, which requirements.txt does not: the "
        "lock follows requirements.txt (what ComfyUI-Manager installs); add them to it in a "
        "fork if the pack imports them"
    ]


def _actions(text: str) -> list[str]:
    return [what for what, pattern in _ACTIONS.items() if pattern.search(text)]


def system_needs(new_distributions: Iterable[str], image_apt: set[str]) -> list[str]:
    """New distributions known to need a system package the image does not install."""
    out = []
    for name in sorted(new_distributions):
        need = SYSTEM_NEEDS.get(lock.normalize(name))
        if need and need not in image_apt:
            out.append(
                f"{name} needs the system package {need}, which the image lacks: add it to "
                "the Dockerfile's base stage apt-get line"
            )
    return out
