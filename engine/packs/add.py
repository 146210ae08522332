"""Add packs to the image (or remove them): manifest, image.in and lock, all or nothing.

:func:`run` reads what the user named (URLs, a ComfyUI-Manager snapshot, a ComfyUI
folder), pins each pack, reads its requirements at that commit, applies the policy of
:mod:`engine.packs.inspect`, and compiles the new image.in in a temporary copy of the
``comfyui/`` files with the same constraints and date. Only when that compile succeeded
are comfyui/custom_nodes.json, comfyui/image.in and comfyui/image.lock replaced; any
failure raises :class:`PackError` naming every problem found, with the files untouched.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.packs import PackError, conflicts, inspect, lock, manifest, sources
from engine.packs.lock import LockCompiler, LockEntry, Section

MANIFEST = Path("comfyui/custom_nodes.json")
# The snapshot's pins are never applied to what the lock already holds, nor to the torch
# set (a pod's torch build is the pod's GPU's, not the image's).
_NOT_FROM_PIPS = ("torch", "torchvision", "torchaudio", "triton", "xformers")


@dataclass(frozen=True)
class Request:
    """What the user asked for, from the command line."""

    urls: tuple[str, ...] = ()
    snapshot: Path | None = None
    folder: Path | None = None
    remove: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    update: bool = False
    """Move a pack already in the manifest to the commit asked for."""
    dry_run: bool = False
    purpose: str | None = None


@dataclass(frozen=True)
class Distribution:
    """A distribution the lock gained, lost or moved, and the sections that bring it."""

    name: str
    version: str
    previous: str | None
    packs: tuple[str, ...]


@dataclass
class Outcome:
    """What a run did (or, with ``dry_run``, would do)."""

    added: list[manifest.Pack] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    new: list[Distribution] = field(default_factory=list)
    dropped: list[Distribution] = field(default_factory=list)
    moved: list[Distribution] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written: bool = False


def run(
    request: Request, root: Path, compiler: LockCompiler, say: Callable[[str], None]
) -> Outcome:
    """Do what ``request`` asks on the repository at ``root``; see the module's docstring."""
    packs = manifest.load(root / MANIFEST)
    sections = lock.parse_inputs((root / lock.INPUTS).read_text(encoding="utf-8"))
    old_lock = (root / lock.LOCK).read_text(encoding="utf-8")
    constraints = (root / lock.CONSTRAINTS).read_text(encoding="utf-8")
    dockerfile = root / "Dockerfile"
    apt = inspect.image_apt_packages(dockerfile.read_text()) if dockerfile.is_file() else set()
    outcome = Outcome()
    with tempfile.TemporaryDirectory(prefix="add-custom-nodes-") as tmp:
        work = Path(tmp)
        found = _gather(request, work / "git", say)
        outcome.notes += found.skipped
        removing = _removals(request.remove, packs)
        adding, replacing = _against_manifest(found, packs, request.update, outcome)
        if found.refused:
            raise PackError(
                f"nothing was written: {len(found.refused)} pack(s) cannot be added as asked",
                [f"{r.name}: {r.reason}" for r in found.refused],
            )
        if not adding and not removing:
            say("Nothing to add or remove: the manifest already holds what was asked.")
            return outcome
        new_packs, new_sections = _plan(
            packs, sections, adding, replacing, removing, request.purpose, apt, outcome
        )
        say(
            f"Compiling the lock with {_what(adding, removing)} (uv, PyPI as of {lock.EXCLUDE_NEWER})"
        )
        new_lock = _compile(
            work / "repo", new_sections, constraints, old_lock, found.pips, compiler, outcome,
            [c.name for c in adding],
        )  # fmt: skip
        _diff(old_lock, new_lock, new_sections, outcome)
        outcome.warnings += inspect.system_needs([d.name for d in outcome.new], apt)
        _pips_report(found.pips, new_lock, outcome)
        outcome.removed = [p.name for p in removing]
        if request.dry_run:
            return outcome
        _replace(root / MANIFEST, manifest.render(new_packs))
        _replace(root / lock.INPUTS, lock.render_inputs(new_sections))
        _replace(root / lock.LOCK, new_lock)
        outcome.written = True
    return outcome


def _what(adding: Sequence[sources.Candidate], removing: Sequence[manifest.Pack]) -> str:
    parts = []
    if adding:
        parts.append(", ".join(c.name for c in adding))
    if removing:
        parts.append("without " + ", ".join(p.name for p in removing))
    return "; ".join(parts)


def _gather(request: Request, work: Path, say: Callable[[str], None]) -> sources.Found:
    found = sources.Found()
    for spec in request.urls:
        say(f"Reading {spec}")
        try:
            found.candidates.append(sources.from_url(spec, work))
        except PackError as exc:
            found.refused.append(sources.Refusal(sources.pack_name(spec.split("@")[0]), str(exc)))
    for part in (
        sources.from_snapshot(request.snapshot, work, request.skip) if request.snapshot else None,
        sources.from_folder(request.folder, request.skip) if request.folder else None,
    ):
        if part is not None:
            found.candidates += part.candidates
            found.refused += part.refused
            found.skipped += part.skipped
            found.pips.update(part.pips)
    return found


def _removals(names: Sequence[str], packs: Sequence[manifest.Pack]) -> list[manifest.Pack]:
    by_name = {p.name.lower(): p for p in packs}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise PackError(
            f"nothing was written: no pack named {', '.join(unknown)} in {MANIFEST.as_posix()}",
            [f"the packs are: {', '.join(p.name for p in packs)}"],
        )
    return [by_name[n.lower()] for n in names]


def _canonical(url: str) -> str:
    return url.lower().rstrip("/").removesuffix(".git")


def _against_manifest(
    found: sources.Found, packs: Sequence[manifest.Pack], update: bool, outcome: Outcome
) -> tuple[list[sources.Candidate], dict[str, manifest.Pack]]:
    """The candidates to add, and the manifest entries they replace (by candidate name)."""
    by_name = {p.name.lower(): p for p in packs}
    by_repo = {_canonical(p.repo): p for p in packs}
    adding: dict[str, sources.Candidate] = {}
    replacing: dict[str, manifest.Pack] = {}
    for c in found.candidates:
        outcome.notes += [f"{c.name}: {note}" for note in c.notes]
        twin = adding.get(c.name.lower())
        if twin is not None:
            if twin.commit != c.commit:
                found.refused.append(
                    sources.Refusal(
                        c.name,
                        f"named twice, at {twin.commit[:12]} ({twin.origin}) and at "
                        f"{c.commit[:12]} ({c.origin}): name it once",
                    )
                )
            continue
        present = by_name.get(c.name.lower()) or by_repo.get(_canonical(c.repo))
        if present is None:
            adding[c.name.lower()] = c
            continue
        if _canonical(present.repo) != _canonical(c.repo):
            found.refused.append(
                sources.Refusal(
                    c.name,
                    f"the manifest already has a pack in the folder {present.name} from "
                    f"{present.repo}: remove it first (--remove {present.name})",
                )
            )
        elif present.commit == c.commit:
            outcome.notes.append(f"{c.name}: already in the manifest at {c.commit[:12]}")
        elif not update:
            found.refused.append(
                sources.Refusal(
                    c.name,
                    f"already in the manifest at {present.commit[:12]}, not at "
                    f"{c.commit[:12]}: run again with --update to move it there",
                )
            )
        else:
            adding[c.name.lower()] = c
            replacing[c.name.lower()] = present
    return list(adding.values()), replacing


def _plan(
    packs: Sequence[manifest.Pack],
    sections: Sequence[Section],
    adding: Sequence[sources.Candidate],
    replacing: dict[str, manifest.Pack],
    removing: Sequence[manifest.Pack],
    purpose: str | None,
    apt: set[str],
    outcome: Outcome,
) -> tuple[list[manifest.Pack], list[Section]]:
    """The new manifest and image.in, after each new pack passed the policy."""
    problems: list[str] = []
    made: dict[str, tuple[manifest.Pack, Section | None]] = {}
    for c in adding:
        seen = inspect.inspect(c, apt)
        problems += [f"{c.name}: {p}" for p in seen.problems]
        outcome.warnings += [f"{c.name}: {w}" for w in seen.warnings]
        old = replacing.get(c.name.lower())
        why = old.purpose if old else (purpose or f"added from {c.origin}")
        pack = manifest.Pack(c.name, c.repo, c.commit, seen.requirements.manifest_value, why)
        section = None
        if seen.requirements.lines:
            source = f"{c.commit} {seen.requirements.file}"
            section = Section(c.name, source, seen.requirements.lines)
        made[c.name.lower()] = (pack, section)
    if problems:
        raise PackError(
            f"nothing was written: {len({p.split(':')[0] for p in problems})} pack(s) cannot "
            "be taken as they are",
            problems,
        )
    gone = {p.name.lower() for p in removing}
    new_packs = [made[p.name.lower()][0] if p.name.lower() in made else p for p in packs]
    new_packs = [p for p in new_packs if p.name.lower() not in gone]
    known = {p.name.lower() for p in packs}
    new_packs += [pack for key, (pack, _) in made.items() if key not in known]
    outcome.added = [made[key][0] for key in made]
    # image.in: the sections that are no pack's (torch, ComfyUI) first, then one per pack
    # in the manifest's order, then the worker's, as scripts/lock_image.py lays it out.
    committed = {s.name.lower(): s for s in sections}
    all_packs = known | made.keys()
    head = [s for s in sections if s.name.lower() not in all_packs and s.name != "worker"]
    body = []
    for p in new_packs:
        key = p.name.lower()
        section = made[key][1] if key in made else committed.get(key)
        if section is not None:
            body.append(section)
    tail = [s for s in sections if s.name == "worker"]
    return new_packs, head + body + tail


def _compile(
    root: Path,
    sections: Sequence[Section],
    constraints: str,
    old_lock: str,
    pips: dict[str, str],
    compiler: LockCompiler,
    outcome: Outcome,
    new_packs: Sequence[str],
) -> str:
    """The new lock, compiled in ``root`` (a scratch copy); PackError explains a failure."""
    (root / "comfyui").mkdir(parents=True)
    (root / lock.INPUTS).write_text(lock.render_inputs(sections), encoding="utf-8")
    (root / lock.CONSTRAINTS).write_text(constraints, encoding="utf-8")
    output = root / lock.LOCK
    output.write_text(old_lock, encoding="utf-8")
    held = lock.locked_versions(old_lock)
    wanted = {
        n: v
        for n, v in pips.items()
        if lock.normalize(n) not in held and lock.normalize(n) not in _NOT_FROM_PIPS
    }
    if wanted:
        # The pod's versions as constraints for what the lock does not hold yet; then a
        # compile with the image's own constraints over that result, which keeps those
        # versions (uv prefers what the output file pins) and leaves no trace of them.
        extra = "".join(f"{n}=={v}\n" for n, v in sorted(wanted.items()))
        (root / lock.CONSTRAINTS).write_text(constraints + "\n" + extra, encoding="utf-8")
        try:
            lock.compile_lock(root, output, compiler)
        except lock.CompileError as exc:
            outcome.warnings.append(
                "the snapshot's pip versions could not all be kept (uv: "
                f"{_cause(exc.output)}); the lock resolved the new packs without them"
            )
            output.write_text(old_lock, encoding="utf-8")
        (root / lock.CONSTRAINTS).write_text(constraints, encoding="utf-8")
    try:
        lock.compile_lock(root, output, compiler)
    except lock.CompileError as exc:
        raise conflicts.explain(exc.output, sections, constraints, new_packs) from exc
    return output.read_text(encoding="utf-8")


def _cause(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    causes = [ln.removeprefix("cause: ") for ln in lines if ln.startswith("cause:")]
    return (causes or lines or ["no output"])[0]


def _diff(old_lock: str, new_lock: str, sections: Sequence[Section], outcome: Outcome) -> None:
    old, new = lock.lock_entries(old_lock), lock.lock_entries(new_lock)
    for name in sorted(new.keys() - old.keys()):
        who = tuple(sorted(_bringers(name, new, sections)))
        outcome.new.append(Distribution(new[name].name, new[name].version, None, who))
    for name in sorted(old.keys() - new.keys()):
        outcome.dropped.append(Distribution(old[name].name, old[name].version, None, ()))
    for name in sorted(old.keys() & new.keys()):
        if old[name].version != new[name].version:
            who = tuple(sorted(_bringers(name, new, sections)))
            outcome.moved.append(
                Distribution(new[name].name, new[name].version, old[name].version, who)
            )


def _bringers(name: str, entries: dict[str, LockEntry], sections: Sequence[Section]) -> set[str]:
    """The image.in sections whose requirements lead to ``name`` (uv's ``# via`` graph)."""
    out: set[str] = set()
    seen = {name}
    todo = [name]
    while todo:
        current = todo.pop()
        entry = entries.get(current)
        if entry is None:
            continue
        for via in entry.via:
            if via == lock.VIA_INPUTS:
                out |= {
                    s.name
                    for s in sections
                    if any(lock.requirement_name(line) == current for line in s.lines)
                }
            elif not via.startswith("-"):
                parent = lock.normalize(via)
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
    return out


def _pips_report(pips: dict[str, str], new_lock: str, outcome: Outcome) -> None:
    locked = lock.locked_versions(new_lock)
    differ = []
    for d in outcome.new:
        pod = next(
            (v for n, v in pips.items() if lock.normalize(n) == lock.normalize(d.name)), None
        )
        if pod is not None and pod != locked.get(d.name.lower(), d.version):
            differ.append(f"{d.name} {pod} -> {d.version}")
    if differ:
        outcome.notes.append(
            "the lock takes other versions than the snapshot's pod had: " + ", ".join(differ)
        )


def _replace(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, then rename over it (never a half-written file)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text, encoding="utf-8")
    if path.exists():
        shutil.copymode(path, tmp)
    tmp.replace(path)


def report(outcome: Outcome, say: Callable[[str], None]) -> None:
    """What was done, for a person: packs, each new distribution and who brought it."""
    for note in outcome.notes:
        say(f"note: {note}")
    for pack in outcome.added:
        say(f"+ pack {pack.name} {pack.commit} ({pack.repo})")
    for name in outcome.removed:
        say(f"- pack {name}")
    if outcome.new:
        say(f"{len(outcome.new)} new distribution(s) in the lock:")
        for d in outcome.new:
            say(f"  + {d.name}=={d.version}  <- {', '.join(d.packs) or '?'}")
    for d in outcome.moved:
        say(f"  ~ {d.name} {d.previous} -> {d.version}  <- {', '.join(d.packs) or '?'}")
    if outcome.dropped:
        say(f"{len(outcome.dropped)} distribution(s) no longer needed:")
        for d in outcome.dropped:
            say(f"  - {d.name}=={d.version}")
    if not (outcome.new or outcome.moved or outcome.dropped):
        say("The lock's distributions are unchanged.")
    for warning in outcome.warnings:
        say(f"warning: {warning}")
    if outcome.written:
        say(
            "Wrote comfyui/custom_nodes.json, comfyui/image.in and comfyui/image.lock. Next: "
            "rebuild the image (or scripts/setup.sh --image-env) and run a job that uses the "
            "new nodes."
        )
    elif outcome.added or outcome.removed:
        say("Dry run: nothing was written.")
