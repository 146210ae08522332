"""Moving the ComfyUI pin: which commit a ref names, pin.env and image.in rewritten, the report.

Build-time code for ``scripts/move_comfyui_pin.py`` (which boots the engine, re-records
the fixtures and runs the suite around these pieces); nothing in the worker imports it.
A ref is read from a git repository on this machine (a clone, or a bare mirror) or from
the upstream URL in comfyui/pin.env: a commit (full or abbreviated), a tag, or a version
(``0.3.60``, ``v0.3.60``): the tag of that name, else the commit that set
``comfyui_version.py`` to it, for mirrors that carry no tags.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.packs import PackError
from engine.packs.gitcli import git
from engine.packs.lock import Section, locked_versions, parse_inputs, render_inputs

PIN = Path("comfyui/pin.env")
COMFYUI_SECTION = "ComfyUI"
_VERSION_RE = re.compile(r"""__version__\s*=\s*["']([^"']+)["']""")
_PLAIN_VERSION_RE = re.compile(r"^v?(\d+\.\d+\.\d+)$")
# Files whose content says which commit a tree holds (checked blob by blob, cheaply).
IDENTITY_FILES = ("comfyui_version.py", "execution.py", "nodes.py", "server.py", "requirements.txt")


@dataclass(frozen=True)
class Pin:
    """ComfyUI at one commit: what comfyui/pin.env records."""

    version: str
    commit: str


def _git(git_dir: Path, *args: str) -> str:
    done = git("--git-dir", str(git_dir), *args)
    if done.returncode != 0:
        raise PackError(f"git {' '.join(args)} failed in {git_dir}", [done.stderr.strip()])
    return done.stdout


def git_dir_of(repository: Path) -> Path:
    """The git directory of a clone (its ``.git``) or of a bare repository (itself)."""
    for candidate in (repository / ".git", repository):
        if (candidate / "objects").is_dir() and (candidate / "HEAD").is_file():
            return candidate
    raise PackError(
        f"{repository} is no git repository",
        ["Name a ComfyUI clone or bare mirror with --source, or leave it out to fetch"],
    )


def version_at(git_dir: Path, commit: str) -> str:
    """``comfyui_version.__version__`` at ``commit``."""
    text = _git(git_dir, "show", f"{commit}:comfyui_version.py")
    match = _VERSION_RE.search(text)
    if match is None:
        raise PackError(f"comfyui_version.py at {commit} holds no __version__")
    return match[1]


def resolve(git_dir: Path, ref: str) -> Pin:
    """The commit and version ``ref`` names in ``git_dir``."""
    for candidate in (ref, f"v{ref}", f"refs/tags/{ref}"):
        done = git(
            "--git-dir", str(git_dir), "rev-parse", "--verify", "-q", f"{candidate}^{{commit}}"
        )
        if done.returncode == 0:
            commit = done.stdout.strip()
            return Pin(version=version_at(git_dir, commit), commit=commit)
    plain = _PLAIN_VERSION_RE.match(ref)
    if plain is not None:
        # No tag here (mirrors may carry none): the commit that set the version string.
        version = plain[1]
        log = _git(
            git_dir,
            "log",
            "--all",
            "--format=%H",
            "-G",
            rf"__version__ = \"{re.escape(version)}\"",
            "--",
            "comfyui_version.py",
        ).split()
        for commit in reversed(log):  # the oldest commit that holds it: the release
            if version_at(git_dir, commit) == version:
                return Pin(version=version, commit=commit)
    raise PackError(
        f"{ref!r} names no commit, tag or ComfyUI version in {git_dir}",
        ["Give a commit hash, a tag (v0.3.60) or a version (0.3.60)"],
    )


def blob_matches(git_dir: Path, commit: str, tree: Path, paths: Iterable[str]) -> list[str]:
    """The ``paths`` whose file in ``tree`` differs from ``commit``'s (absent ones too)."""
    differing = []
    for path in paths:
        want = _git(git_dir, "rev-parse", f"{commit}:{path}").strip()
        file = tree / path
        if not file.is_file():
            differing.append(path)
            continue
        got = subprocess.run(
            ["git", "hash-object", str(file)], capture_output=True, text=True, check=True
        ).stdout.strip()
        if got != want:
            differing.append(path)
    return differing


def export_tree(git_dir: Path, commit: str, dest: Path) -> None:
    """Write ``commit``'s files into ``dest`` (which must not hold files yet)."""
    if dest.exists() and any(dest.iterdir()):
        raise PackError(f"{dest} is not empty: name an empty or absent folder with --checkout")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(
        ["git", "--git-dir", str(git_dir), "archive", "--format=tar", commit],
        stdout=subprocess.PIPE,
    )
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=False)
    if archive.stdout is not None:
        archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise PackError(f"could not write ComfyUI {commit} into {dest}")


# -- the repository's files --------------------------------------------------------------


def pin_values(text: str) -> dict[str, str]:
    """comfyui/pin.env's ``KEY=value`` lines (the upstream URL, version, commit)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def read_pin(text: str) -> Pin:
    """comfyui/pin.env's version and commit."""
    values = pin_values(text)
    return Pin(version=values["COMFYUI_VERSION"], commit=values["COMFYUI_COMMIT"])


def write_pin(text: str, pin: Pin) -> str:
    """``text`` (pin.env) with its version and commit lines set to ``pin``; comments kept."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith("COMFYUI_VERSION="):
            line = f"COMFYUI_VERSION={pin.version}\n"
        elif line.startswith("COMFYUI_COMMIT="):
            line = f"COMFYUI_COMMIT={pin.commit}\n"
        out.append(line)
    return "".join(out)


def with_comfyui_section(inputs: str, pin: Pin, requirements: Sequence[str]) -> str:
    """image.in with its ComfyUI section made from ``requirements`` at ``pin``; the other
    sections (torch, the packs, the worker) as they were."""
    sections = parse_inputs(inputs)
    if not any(s.name == COMFYUI_SECTION for s in sections):
        raise PackError("comfyui/image.in has no ComfyUI section")
    source = f"ComfyUI {pin.version} {pin.commit} requirements.txt"
    return render_inputs(
        [
            Section(COMFYUI_SECTION, source, tuple(requirements))
            if s.name == COMFYUI_SECTION
            else s
            for s in sections
        ]
    )


def lock_changes(before: str, after: str) -> list[str]:
    """What a new lock changed: ``name a -> b``, ``+name b``, ``-name a``; sorted."""
    old, new = locked_versions(before), locked_versions(after)
    changes = [
        f"{n} {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]
    ]
    changes += [f"+{n} {new[n]}" for n in sorted(new.keys() - old.keys())]
    changes += [f"-{n} {old[n]}" for n in sorted(old.keys() - new.keys())]
    return changes


# -- the report ----------------------------------------------------------------------------


@dataclass
class MoveReport:
    """What one move changed and found; :meth:`render` writes it for a person."""

    before: Pin
    after: Pin
    steps: list[str] = field(default_factory=list)
    """Each step done, in order, with its outcome."""
    node_types_before: frozenset[str] = frozenset()
    node_types_after: frozenset[str] = frozenset()
    patches_skipped: dict[str, str] = field(default_factory=dict)
    patches_applied: list[str] = field(default_factory=list)
    failed_imports: list[str] = field(default_factory=list)
    lock: list[str] | None = None
    """``lock_changes``; ``None`` when the lock was not compiled."""
    fixtures: list[str] = field(default_factory=list)
    suite: str | None = None
    suite_ok: bool | None = None

    @property
    def added(self) -> list[str]:
        """Node types the new pin has and the old did not."""
        return sorted(self.node_types_after - self.node_types_before)

    @property
    def removed(self) -> list[str]:
        """Node types the old pin had and the new does not."""
        return sorted(self.node_types_before - self.node_types_after)

    def render(self) -> str:
        """The report as Markdown."""
        b, a = self.before, self.after
        out = [
            f"# ComfyUI pin moved: {b.version} ({b.commit[:12]}) -> {a.version} ({a.commit[:12]})",
            "",
            "## Steps",
            *[f"- {step}" for step in self.steps],
            "",
            f"## Node types: {len(self.added)} added, {len(self.removed)} removed "
            f"({len(self.node_types_before)} -> {len(self.node_types_after)}, packs included)",
            f"- added: {', '.join(self.added) or 'none'}",
            f"- removed: {', '.join(self.removed) or 'none'}",
            "",
            "## Patches (engine/runtime/patches.py)",
            f"- no longer apply: {_listing(self.patches_skipped)}",
            f"- in force: {', '.join(self.patches_applied) or 'none'}",
            "",
            "## Node files and packs that failed to import",
            *([f"- {line}" for line in self.failed_imports] or ["- none"]),
            "",
            "## Lock (comfyui/image.lock)",
            *(
                ["- not compiled (--no-lock)"]
                if self.lock is None
                else [f"- {line}" for line in self.lock] or ["- unchanged"]
            ),
            "",
            "## Fixtures re-recorded (tests/fixtures)",
            *([f"- {line}" for line in self.fixtures] or ["- unchanged"]),
            "",
            "## The suite in the image environment",
            f"- {self.suite or 'not run (--no-tests)'}"
            + ("" if self.suite_ok is None else (" (passed)" if self.suite_ok else " (FAILED)")),
        ]
        return "\n".join(out) + "\n"


def _listing(skipped: Mapping[str, str]) -> str:
    if not skipped:
        return "none"
    return "; ".join(f"{name} (this ComfyUI has no {what})" for name, what in skipped.items())
