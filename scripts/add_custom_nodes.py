#!/usr/bin/env python3
"""Add custom node packs to the image, or remove them: manifest, image.in and lock in one step.

    scripts/add_custom_nodes.py https://github.com/city96/ComfyUI-GGUF.git@<commit>
    scripts/add_custom_nodes.py https://github.com/city96/ComfyUI-GGUF   # pins its HEAD now
    scripts/add_custom_nodes.py --snapshot 2026-12-01_10-00-00_snapshot.json
    scripts/add_custom_nodes.py --from-comfyui /workspace/ComfyUI
    scripts/add_custom_nodes.py --remove ComfyUI-GGUF

Each pack is pinned to a commit, read at that commit (requirements.txt, else
pyproject.toml's dependencies; its setup scripts), and the lock is compiled again with
its requirements under comfyui/image-constraints.txt and the lock's date, in a scratch
copy. Only when that succeeded are comfyui/custom_nodes.json, comfyui/image.in and
comfyui/image.lock replaced; then it prints each new distribution and the pack that
brought it. Any problem (not a repository, no such commit, a snapshot it cannot read, a
pack already there at another commit, a requirement that cannot resolve, a pack folder
without a git origin, a pack the image cannot take as it is) is named with what to do,
and nothing is written. docs/custom-nodes.md, "Adding packs to the image", has the policy.

Needs git and uv (scripts/setup.sh installs uv) and PyPI. Exit status: 0 done (or
nothing to do), 1 nothing written because of a problem above, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the logic lives in engine/packs; scripts/ is no package

from engine.packs import PackError  # noqa: E402
from engine.packs.add import Request, report, run  # noqa: E402
from engine.packs.lock import UvCompiler  # noqa: E402

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "urls", nargs="*", metavar="URL[@COMMIT]",
        help="a pack's git URL, optionally @commit (or @branch / @tag); without one, its HEAD",
    )  # fmt: skip
    parser.add_argument("--snapshot", type=Path, help="a ComfyUI-Manager snapshot (.json or .yaml)")
    parser.add_argument(
        "--from-comfyui", dest="folder", type=Path,
        help="a ComfyUI folder (or its custom_nodes/): each git checkout at its HEAD",
    )  # fmt: skip
    parser.add_argument(
        "--remove", action="append", default=[], metavar="NAME", help="remove a pack"
    )
    parser.add_argument(
        "--skip", action="append", default=[], metavar="NAME",
        help="leave out one entry of the snapshot or folder",
    )  # fmt: skip
    parser.add_argument(
        "--update", action="store_true",
        help="move a pack the manifest already has to the commit given",
    )  # fmt: skip
    parser.add_argument("--purpose", help="the manifest's purpose for the pack(s) added")
    parser.add_argument("--dry-run", action="store_true", help="compile and report; write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.urls or args.snapshot or args.folder or args.remove):
        parser.print_usage(sys.stderr)
        print("error: name a pack (URL), --snapshot, --from-comfyui or --remove", file=sys.stderr)
        return EXIT_USAGE
    request = Request(
        urls=tuple(args.urls),
        snapshot=args.snapshot,
        folder=args.folder,
        remove=tuple(args.remove),
        skip=tuple(args.skip),
        update=args.update,
        dry_run=args.dry_run,
        purpose=args.purpose,
    )
    try:
        outcome = run(request, ROOT, UvCompiler(), lambda line: print(line, flush=True))
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    report(outcome, print)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
