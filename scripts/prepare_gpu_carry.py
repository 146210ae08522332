#!/usr/bin/env python3
"""Prepare what a GPU host without network needs to run ``scripts/gpu_check.py``.

    COMFYUI_PATH=<checkout> python scripts/prepare_gpu_carry.py            # into .gpu-carry/

The host is assumed to hold Python 3.12, a recent torch and the usual scientific stack
of a torch image (numpy, scipy, Pillow, torchvision, transformers, tokenizers,
safetensors, aiohttp, PyYAML, psutil, tqdm, einops, httpx, pytest); ``gpu_check.py``
checks each import first and names the wheel to add with ``--wheel`` when one is
missing. Written into ``--out`` (git-ignored ``.gpu-carry/`` by default):

- ``wheels/``: cp312 manylinux x86_64 wheels of what the worker and ComfyUI import and
  such an image lacks (:data:`CARRIED`), at the versions of ``comfyui/image.lock``
  (``pip download --only-binary :all: --no-deps``); imageio-ffmpeg is built from its
  sdist, without the ffmpeg binary its platform wheels bundle (~30 MB): the check
  imports it and never runs ffmpeg;
- ``ComfyUI.tar.xz``: the checkout without ``.git``, bytecode, custom node packs and
  model files;
- ``manifest.json``: what is there and its size, ComfyUI's version and commit.

It fails when the folder and the repository's tracked files together pass 64 MiB, the
most a device call carries. pip needs a package index here (not on the host).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # engine/packs reads the lock; scripts/ is no package

from engine.packs import lock as image_lock  # noqa: E402

LOCK = REPO / image_lock.LOCK
DEFAULT_OUT = REPO / ".gpu-carry"
LIMIT_BYTES = 64 * 1024 * 1024
"""What one device call carries: the working tree and the carried paths together."""

CARRIED = (
    # ComfyUI imports av at boot (comfy_api's video types); so does engine/media.py.
    "av",
    # engine/s3.py (imported by the worker whether or not a bucket is set).
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    # engine/request.py and comfy_api.
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    # ComfyUI's samplers (comfy/k_diffusion/sampling.py).
    "torchsde",
    "trampoline",
    # UpscaleModelLoader (comfy_extras/nodes_upscale_model.py), and ComfyUI's pyproject
    # reader. kornia (Canny, Morphology nodes; 7 MB with kornia-rs) does not fit.
    "spandrel",
    "pydantic-settings",
    "python-dotenv",
    # engine/png_writer.py: SaveImage's PNGs by ISA-L (without it, zlib: slower PNGs).
    "isal",
)
"""Distributions carried as wheels, pinned by comfyui/image.lock."""
FROM_SDIST = ("imageio-ffmpeg",)
"""Built here from the sdist: the pure-Python package without its bundled ffmpeg."""
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# Left out of the ComfyUI archive: history, bytecode, packs (the check loads none),
# model files and the worker's node index (both machine-made).
_SKIP_DIRS = {".git", "__pycache__", ".worker-node-index"}
_SKIP_UNDER = ("custom_nodes/", "models/", "input/", "output/", "temp/", "user/")


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of the lock."""
    return image_lock.locked_versions(lock.read_text(encoding="utf-8"))


def pinned(names: tuple[str, ...], versions: dict[str, str], extra: list[str]) -> list[str]:
    """``name==version`` for each name, from the lock; ``extra`` as given."""
    missing = [n for n in names if n not in versions]
    if missing:
        sys.exit(f"error: comfyui/image.lock pins no {', '.join(missing)}")
    return [f"{n}=={versions[n]}" for n in names] + list(extra)


def download_wheels(specs: list[str], sdists: list[str], folder: Path) -> None:
    """The wheels of ``specs`` for the host, and ``sdists`` built into pure wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms,
         "--dest", str(folder), *specs],
        check=True,
    )  # fmt: skip
    if sdists:
        names = ",".join(spec.split("==")[0] for spec in sdists)
        subprocess.run(
            [*pip, "wheel", "--quiet", "--no-deps", "--no-binary", names,
             "--wheel-dir", str(folder), *sdists],
            check=True,
        )  # fmt: skip


def _keep(relative: str) -> bool:
    parts = relative.split("/")
    if any(part in _SKIP_DIRS for part in parts) or relative.endswith((".pyc", ".pyo")):
        return False
    # The folders stay (ComfyUI lists them), their contents go.
    return not any(
        relative.startswith(prefix) and relative != prefix[:-1] for prefix in _SKIP_UNDER
    )


def archive_comfyui(checkout: Path, target: Path) -> int:
    """``checkout`` as ``ComfyUI/...`` in an xz tarball; the number of files in it."""
    files = 0
    with tarfile.open(target, "w:xz", preset=9) as archive:
        for path in sorted(checkout.rglob("*")):
            relative = path.relative_to(checkout).as_posix()
            if not _keep(relative) or path.is_symlink():
                continue
            if path.is_dir():
                archive.add(path, arcname=f"ComfyUI/{relative}", recursive=False)
            elif path.is_file():
                archive.add(path, arcname=f"ComfyUI/{relative}")
                files += 1
    return files


def comfyui_identity(checkout: Path) -> dict[str, str]:
    """The checkout's version (comfyui_version.py) and commit (git, else the pin)."""
    text = (checkout / "comfyui_version.py").read_text(encoding="utf-8")
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pin = (REPO / "comfyui" / "pin.env").read_text(encoding="utf-8")
        found = re.search(r"^COMFYUI_COMMIT=(\S+)", pin, re.MULTILINE)
        commit = f"{found.group(1)} (comfyui/pin.env)" if found else "unknown"
    return {"version": match.group(1) if match else "unknown", "commit": commit}


def tracked_bytes() -> int:
    """The repository's tracked files, as they travel beside the carry."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    total = 0
    for name in filter(None, listing.split(b"\0")):
        path = REPO / name.decode()
        if path.is_file():
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    """Every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--comfyui", type=Path, help="the ComfyUI checkout (default: $COMFYUI_PATH)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="the carry folder (.gpu-carry)"
    )
    parser.add_argument(
        "--wheel",
        action="append",
        default=[],
        metavar="NAME==VERSION",
        help="one more wheel to carry (a module the host turned out to lack); repeatable",
    )
    args = parser.parse_args(argv)
    import os

    checkout = args.comfyui or (
        Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None
    )
    if checkout is None or not (checkout / "execution.py").is_file():
        parser.error("pass --comfyui or set COMFYUI_PATH to a ComfyUI checkout")
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    versions = locked_versions()
    specs = pinned(CARRIED, versions, args.wheel)
    sdists = pinned(FROM_SDIST, versions, [])
    with tempfile.TemporaryDirectory(prefix="gpu-carry-") as tmp:
        download_wheels(specs, sdists, Path(tmp))
        (out / "wheels").mkdir()
        for wheel in sorted(Path(tmp).glob("*.whl")):
            shutil.move(str(wheel), out / "wheels" / wheel.name)
    files = archive_comfyui(checkout.resolve(), out / "ComfyUI.tar.xz")
    wheels = {p.name: p.stat().st_size for p in sorted((out / "wheels").glob("*.whl"))}
    manifest = {
        "comfyui": {**comfyui_identity(checkout.resolve()), "files": files},
        "wheels": wheels,
        "carry_bytes": 0,
        "repo_tracked_bytes": tracked_bytes(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    manifest["carry_bytes"] = folder_bytes(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = manifest["carry_bytes"] + manifest["repo_tracked_bytes"]
    mib = 1024 * 1024
    for name, size in sorted(wheels.items(), key=lambda kv: -kv[1]):
        print(f"{size / mib:7.2f} MiB  wheels/{name}")
    print(
        f"{(out / 'ComfyUI.tar.xz').stat().st_size / mib:7.2f} MiB  ComfyUI.tar.xz ({files} files)"
    )
    print(
        f"{manifest['carry_bytes'] / mib:.2f} MiB carried + {manifest['repo_tracked_bytes'] / mib:.2f} "
        f"MiB of tracked files = {total / mib:.2f} MiB (limit {LIMIT_BYTES / mib:.0f} MiB)"
    )
    if total > LIMIT_BYTES:
        print("error: over the limit: carry fewer wheels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
