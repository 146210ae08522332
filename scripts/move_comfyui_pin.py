#!/usr/bin/env python3
"""Move the ComfyUI pin in one command, and report what the move changed and broke.

    scripts/move_comfyui_pin.py 0.3.65                      # a version, a tag or a commit
    scripts/move_comfyui_pin.py a125cd84 --source ~/src/ComfyUI --checkout /tmp/comfy-a125
    scripts/move_comfyui_pin.py 0.3.60 --custom-nodes ~/packs --python .venv-image/bin/python \\
        --report move.md

In order, each step in the report:

1. the ref is resolved to a commit and its version, in ``--source`` (a ComfyUI clone or a
   bare mirror on this machine, for a network without GitHub), else in a fetch of
   ``COMFYUI_REPO`` (comfyui/pin.env);
2. ``--checkout`` (default comfyui/ComfyUI, setup.sh's) is made to hold that commit: a git
   checkout is checked out there, an absent or empty folder gets the commit's files, a
   folder that already holds them is used as is (checked file by file);
3. comfyui/pin.env gets the version and commit; comfyui/image.in's ComfyUI section is
   rewritten from the commit's requirements.txt (the other sections stay);
4. comfyui/image.lock is compiled again (uv against PyPI; ``--no-lock`` skips it), keeping
   every version that still fits;
5. the engine boots at the new pin with the packs of ``--custom-nodes`` (``--python``: the
   image's environment, default .venv-image): the node types it has, the patches whose
   checks failed (engine/runtime/patches.py), the node files and packs that failed to
   import; that boot writes the node index beside the checkout;
6. the fixtures the tests use are recorded again (scripts/record_comfy_shapes.py,
   scripts/record_node_defs.py);
7. the suite runs in that environment against the new checkout (``--tests`` narrows it,
   ``--no-tests`` skips it).

The report (Markdown, printed and written to ``--report``) lists node types added and
removed, patches that no longer apply, node files and packs that failed to import, the
lock's changed versions, the fixtures that changed and the suite's result. Nothing is
committed: review ``git diff`` and commit the move. Exit status: 0 when every step
passed, 1 when one failed (the report says which), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # engine/packs holds the pieces; scripts/ is no package

from engine.packs import PackError  # noqa: E402
from engine.packs import comfyui_pin as pins  # noqa: E402
from engine.packs.lock import LOCK, UvCompiler, compile_lock, requirement_lines  # noqa: E402

INPUTS = ROOT / "comfyui" / "image.in"
NODE_DEFS = ROOT / "tests" / "fixtures" / "node_defs" / "object_info.json.gz"
FIXTURES = ROOT / "tests" / "fixtures"
DEFAULT_CHECKOUT = ROOT / "comfyui" / "ComfyUI"
DEFAULT_PYTHON = ROOT / ".venv-image" / "bin" / "python"
_TAIL_LINES = 6


class StepFailed(Exception):
    """A step of the move failed; the report says which and how."""


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        # The end of what it said: a Python tool's last lines name its exception.
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-_TAIL_LINES:]
        name = " ".join(Path(c).name if c.startswith("/") else c for c in cmd[:2])
        raise StepFailed(f"{name} exited {done.returncode}: " + "\n    ".join(said))
    return done.stdout


# -- 1, 2: the commit and its files --------------------------------------------------------


def source_git_dir(source: Path | None, scratch: Path) -> Path:
    """The repository refs are read from: ``source``, else a fetch of the pin's upstream."""
    if source is not None:
        return pins.git_dir_of(source.expanduser().resolve())
    url = pins.pin_values((ROOT / pins.PIN).read_text(encoding="utf-8"))["COMFYUI_REPO"]
    git_dir = scratch / "comfyui.git"
    _run(["git", "clone", "--quiet", "--bare", "--filter=blob:none", url, str(git_dir)])
    return git_dir


def prepare_checkout(git_dir: Path, pin: pins.Pin, checkout: Path) -> str:
    """Make ``checkout`` hold ``pin``'s files; what was done."""
    if (checkout / ".git").exists():
        _run(["git", "-C", str(checkout), "fetch", "--quiet", str(git_dir), pin.commit])
        _run(["git", "-C", str(checkout), "checkout", "--quiet", "--detach", pin.commit])
        return f"checked out {pin.commit[:12]} in {checkout}"
    if not checkout.exists() or not any(checkout.iterdir()):
        pins.export_tree(git_dir, pin.commit, checkout)
        return f"wrote the files of {pin.commit[:12]} into {checkout}"
    differing = pins.blob_matches(git_dir, pin.commit, checkout, pins.IDENTITY_FILES)
    if differing:
        raise PackError(
            f"{checkout} holds another ComfyUI ({', '.join(differing)} differ from {pin.commit[:12]})",
            ["Name an empty or absent folder with --checkout, or a git checkout"],
        )
    return f"{checkout} already holds {pin.commit[:12]} ({', '.join(pins.IDENTITY_FILES)} checked)"


# -- 3, 4: the repository's files ------------------------------------------------------------


def write_pin_and_inputs(pin: pins.Pin, checkout: Path) -> str:
    pin_file = ROOT / pins.PIN
    pin_file.write_text(pins.write_pin(pin_file.read_text(encoding="utf-8"), pin), encoding="utf-8")
    requirements = requirement_lines((checkout / "requirements.txt").read_text(encoding="utf-8"))
    text = pins.with_comfyui_section(INPUTS.read_text(encoding="utf-8"), pin, requirements)
    INPUTS.write_text(text, encoding="utf-8")
    return f"comfyui/pin.env and image.in's ComfyUI section ({len(requirements)} requirements)"


def compile_the_lock() -> list[str]:
    before = (ROOT / LOCK).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="move-pin-lock-") as tmp:
        # Compiled in a copy of comfyui/: the committed lock is replaced only on success.
        copy = Path(tmp)
        (copy / "comfyui").mkdir()
        for name in ("image.in", "image-constraints.txt", "image.lock"):
            shutil.copy2(ROOT / "comfyui" / name, copy / "comfyui" / name)
        compile_lock(copy, copy / LOCK, UvCompiler())
        after = (copy / LOCK).read_text(encoding="utf-8")
    (ROOT / LOCK).write_text(after, encoding="utf-8")
    return pins.lock_changes(before, after)


# -- 5: the boot ---------------------------------------------------------------------------


def _engine_env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY", "WORKER_"))}
    env["COMFYUI_PATH"] = str(checkout)
    env["PYTHONPATH"] = str(ROOT)
    return env


def probe(checkout: Path, custom_nodes: Path | None) -> dict[str, Any]:
    """In the engine's environment: boot at ``checkout`` and say what it found (JSON)."""
    import logging

    from engine.runtime import pack_imports
    from engine.runtime.comfy import ComfyRuntime
    from engine.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    index_dir = checkout / ".worker-node-index"
    # By inode: a write replaces the file (node_index.NodeIndex.write), while a boot
    # that only read one moves its mtime (node_index.mark_used).
    before = {p: p.stat().st_ino for p in index_dir.glob("*.json")} if index_dir.is_dir() else {}
    with tempfile.TemporaryDirectory(prefix="move-pin-boot-") as tmp:
        extra = None
        if custom_nodes is not None:
            extra = Path(tmp) / "extra_model_paths.yaml"
            extra.write_text(json.dumps({"packs": {"custom_nodes": str(custom_nodes.resolve())}}))
        runtime = ComfyRuntime(
            Settings(
                comfyui_path=checkout,
                work_dir=Path(tmp) / "work",
                extra_model_paths=extra,
                comfy_log_level="WARNING",
            )
        )
        runtime.boot()
        node_types = sorted(runtime.node_definitions())
        patches = runtime.patches
        assert patches is not None
        written = sorted(
            str(p)
            for p in (index_dir.glob("*.json") if index_dir.is_dir() else [])
            if before.get(p) != p.stat().st_ino
        )
        return {
            "node_types": node_types,
            "patches_applied": list(patches.applied),
            "patches_skipped": dict(patches.skipped),
            "failed_imports": [p.describe() for p in pack_imports.RECORD.failed],
            "node_index": written,
        }


def boot_report(python: Path, checkout: Path, custom_nodes: Path | None) -> dict[str, Any]:
    cmd = [str(python), str(Path(__file__).resolve()), "--probe", "--checkout", str(checkout)]
    if custom_nodes is not None:
        cmd += ["--custom-nodes", str(custom_nodes)]
    out = _run(cmd, env=_engine_env(checkout), timeout=1800)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def recorded_node_types() -> frozenset[str]:
    """The node types of the committed node definitions (recorded at the old pin)."""
    with gzip.open(NODE_DEFS, "rt", encoding="utf-8") as file:
        return frozenset(json.load(file)["node_definitions"])


# -- 6, 7: fixtures and the suite --------------------------------------------------------------


def record_fixtures(python: Path, checkout: Path, custom_nodes: Path | None) -> None:
    packs = ["--custom-nodes", str(custom_nodes)] if custom_nodes is not None else []
    for script in ("record_comfy_shapes.py", "record_node_defs.py"):
        _run(
            [str(python), f"scripts/{script}", "--comfyui", str(checkout), *packs],
            env=_engine_env(checkout),
            timeout=1800,
        )


def changed_fixtures() -> list[str]:
    """The fixture files that differ from the last commit."""
    status = _run(["git", "status", "--porcelain", "--", str(FIXTURES.relative_to(ROOT))])
    return [line[3:] + (" (new)" if line.startswith("??") else "") for line in status.splitlines()]


def run_suite(
    python: Path, checkout: Path, custom_nodes: Path | None, args: list[str]
) -> tuple[str, bool]:
    env = _engine_env(checkout)
    env["VENV"] = str(python.parent.parent)
    if custom_nodes is not None:
        env["COMFYUI_TEST_CUSTOM_NODES"] = str(custom_nodes)
    done = subprocess.run(
        ["scripts/test", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    failed = [line for line in lines if line.startswith(("FAILED tests/", "ERROR tests/"))]
    where = f"VENV={python.parent.parent} scripts/test -q {' '.join(args)}".strip()
    text = f"`{where}`: {summary}" + "".join(f"\n  - {line}" for line in failed[:20])
    return text, done.returncode == 0


# -- the command ---------------------------------------------------------------------------


def move(args: argparse.Namespace) -> tuple[pins.MoveReport, bool]:
    before = pins.read_pin((ROOT / pins.PIN).read_text(encoding="utf-8"))
    ok = True
    with tempfile.TemporaryDirectory(prefix="move-pin-") as scratch:
        git_dir = source_git_dir(args.source, Path(scratch))
        after = pins.resolve(git_dir, args.ref)
        report = pins.MoveReport(before=before, after=after)
        report.steps.append(f"resolved {args.ref!r} to ComfyUI {after.version} {after.commit}")
        checkout = args.checkout.expanduser().resolve()
        report.steps.append(prepare_checkout(git_dir, after, checkout))
    report.node_types_before = recorded_node_types()
    report.steps.append(write_pin_and_inputs(after, checkout))

    def step(name: str, action: Any) -> Any:
        nonlocal ok
        try:
            result = action()
        except (StepFailed, PackError, subprocess.TimeoutExpired) as exc:
            ok = False
            report.steps.append(f"{name}: FAILED: {exc}")
            return None
        report.steps.append(f"{name}: done")
        return result

    if not args.no_lock:
        report.lock = step("comfyui/image.lock compiled again", compile_the_lock)
    booted = step(
        "booted at the new pin", lambda: boot_report(args.python, checkout, args.custom_nodes)
    )
    if booted is not None:
        report.node_types_after = frozenset(booted["node_types"])
        report.patches_applied = booted["patches_applied"]
        report.patches_skipped = booted["patches_skipped"]
        report.failed_imports = booted["failed_imports"]
        index = booted["node_index"]
        report.steps.append(f"node index: {', '.join(Path(p).name for p in index) or 'unchanged'}")
        ok = ok and not report.patches_skipped
    step(
        "fixtures recorded again", lambda: record_fixtures(args.python, checkout, args.custom_nodes)
    )
    # Also after a failed recording: what it wrote before it stopped.
    report.fixtures = changed_fixtures()
    if not args.no_tests:
        report.suite, report.suite_ok = run_suite(
            args.python, checkout, args.custom_nodes, args.tests.split() if args.tests else []
        )
        ok = ok and report.suite_ok
    return report, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("ref", nargs="?", help="a commit, a tag or a version (0.3.60)")
    parser.add_argument("--source", type=Path, help="a ComfyUI clone or bare mirror (else: fetch)")
    parser.add_argument("--checkout", type=Path, default=DEFAULT_CHECKOUT, help="ComfyUI folder")
    parser.add_argument("--custom-nodes", type=Path, help="a folder of the image's packs")
    parser.add_argument("--python", type=Path, default=DEFAULT_PYTHON, help="the image's Python")
    parser.add_argument("--no-lock", action="store_true", help="leave comfyui/image.lock as it is")
    parser.add_argument("--no-tests", action="store_true", help="do not run the suite")
    parser.add_argument("--tests", help="arguments for scripts/test (default: the whole suite)")
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.probe:
        print(json.dumps(probe(args.checkout, args.custom_nodes)))
        return 0
    if not args.ref:
        parser.error("name the commit, tag or version to move to")
    if not args.python.is_file():
        parser.error(f"no Python at {args.python}: scripts/setup.sh --image-env, or --python")
    try:
        report, ok = move(args)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report.render()
    print(text)
    if args.report is not None:
        args.report.write_text(text, encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
