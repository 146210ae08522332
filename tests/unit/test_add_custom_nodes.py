"""scripts/add_custom_nodes.py (engine/packs): packs join the manifest, image.in and the lock.

Packs are real git repositories made here (git init, commit) and reached through https
URLs that this test's own git configuration rewrites to their file:// paths, as the image
build would reach GitHub. The compile is the fake of tests/fake_compiler.py (uv's layout
and error words over a small index); one test at the end runs the real uv against PyPI.
Every refusal leaves the three files byte-identical.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.packs import PackError, manifest
from engine.packs.add import Outcome, Request, report, run
from engine.packs.lock import (
    INPUTS,
    LOCK,
    UvCompiler,
    compile_lock,
    lock_entries,
    locked_versions,
    parse_inputs,
    render_inputs,
)
from tests.fake_compiler import FakeCompiler, Index
from tests.unit.test_manifests import installer, load_script

ROOT = Path(__file__).resolve().parents[2]
HOST = "https://git.test/packs"
EXISTING_COMMIT = "1" * 40

INDEX: Index = {
    "torch": {"2.8.0": ()},
    "numpy": {"1.26.4": (), "2.1.0": ()},
    "pillow": {"13.0.0": ()},
    "runpod": {"1.12.0": ("requests",)},
    "requests": {"2.32.0": ("idna",)},
    "idna": {"3.10": ()},
    "opencv-python": {"4.11.0.86": ("numpy",)},
    "gguf": {"0.17.1": ("numpy", "pyyaml"), "0.16.0": ("numpy",)},
    "pyyaml": {"6.0.2": ()},
    "sentencepiece": {"0.2.0": ()},
    "protobuf": {"5.29.0": (), "6.31.0": ()},
    "scikit-image": {"0.25.0": ("numpy", "imageio")},
    "imageio": {"2.37.0": ("numpy",)},
    "needs-numpy2": {"1.0": ("numpy>=2",)},
    "pycairo": {"1.27.0": ()},
}
CONSTRAINTS = """\
# The versions chosen on purpose.

# ReActor pins it, and insightface's compiled parts are built against the numpy 1.x ABI.
numpy==1.26.4
"""
IMAGE_IN = f"""\
# Inputs of the image's Python environment.

# == torch == the CUDA 12.8 builds (scripts/lock_image.py)
torch==2.8.0

# == ComfyUI == ComfyUI 0.3.64 {"a" * 40} requirements.txt
numpy>=1.25.0
Pillow

# == Existing-Pack == {EXISTING_COMMIT} requirements.txt
opencv-python
numpy==1.26.4

# == worker == pyproject.toml [project] dependencies
runpod==1.12.0
"""
DOCKERFILE = """\
FROM x AS base
RUN apt-get update \\
    && apt-get install -y --no-install-recommends \\
        ca-certificates libgl1 libglib2.0-0 python3.12 \\
    && rm -rf /var/lib/apt/lists/*
FROM base AS builder
RUN apt-get install -y build-essential git
"""


@dataclass
class Repo:
    """A scratch copy of the repository's comfyui/ files, with a fake compiler."""

    root: Path
    compiler: FakeCompiler

    def files(self) -> dict[str, bytes]:
        return {
            p: (self.root / p).read_bytes()
            for p in ("comfyui/custom_nodes.json", INPUTS.as_posix(), LOCK.as_posix())
        }

    def run(self, **kwargs: object) -> Outcome:
        lines: list[str] = []
        outcome = run(Request(**kwargs), self.root, self.compiler, lines.append)  # type: ignore[arg-type]
        report(outcome, lines.append)
        self.printed = "\n".join(lines)
        return outcome

    def refuse(self, *fragments: str, **kwargs: object) -> str:
        """Run, expect a PackError naming every fragment, and the files unchanged."""
        before = self.files()
        with pytest.raises(PackError) as caught:
            self.run(**kwargs)
        text = str(caught.value)
        for fragment in fragments:
            assert fragment in text, text
        assert self.files() == before
        return text

    def manifest(self) -> list[manifest.Pack]:
        return manifest.load(self.root / "comfyui" / "custom_nodes.json")

    def sections(self) -> dict[str, tuple[str, ...]]:
        text = (self.root / INPUTS).read_text(encoding="utf-8")
        return {s.name: s.lines for s in parse_inputs(text)}

    def locked(self) -> dict[str, str]:
        return locked_versions((self.root / LOCK).read_text(encoding="utf-8"))


@pytest.fixture
def git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git configuration of this test's own: https://git.test/packs/* -> local repos."""
    config = tmp_path / "gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for key in ("GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(key, raising=False)
    return config


@pytest.fixture
def repo(tmp_path: Path, git_config: Path) -> Iterator[Repo]:
    root = tmp_path / "repo"
    (root / "comfyui").mkdir(parents=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    (root / "comfyui" / "image-constraints.txt").write_text(CONSTRAINTS)
    (root / INPUTS).write_text(render_inputs(parse_inputs(IMAGE_IN)))
    existing = manifest.Pack(
        "Existing-Pack", f"{HOST}/Existing-Pack.git", EXISTING_COMMIT, True, "already here"
    )
    (root / "comfyui" / "custom_nodes.json").write_text(manifest.render([existing]))
    compiler = FakeCompiler(INDEX)
    compile_lock(root, root / LOCK, compiler)
    compiler.calls.clear()
    yield Repo(root, compiler)


def _git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }  # fmt: skip
    import os

    out = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def make_pack(tmp_path: Path, git_config: Path, name: str, files: dict[str, str]) -> str:
    """A git repository with ``files`` in one commit, served as https://git.test/packs/NAME."""
    path = tmp_path / "remotes" / name
    path.mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=path)
    for rel, text in {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n", **files}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    _git("add", "-A", cwd=path)
    _git("commit", "-q", "-m", "first", cwd=path)
    for url in (f"{HOST}/{name}.git", f"{HOST}/{name}"):
        _git(
            "config",
            "--file",
            str(git_config),
            "--add",
            f"url.{path.as_uri()}.insteadOf",
            url,
            cwd=path,
        )
    return _git("rev-parse", "HEAD", cwd=path)


def commit_more(tmp_path: Path, name: str, files: dict[str, str]) -> str:
    path = tmp_path / "remotes" / name
    for rel, text in files.items():
        (path / rel).write_text(text)
    _git("add", "-A", cwd=path)
    _git("commit", "-q", "-m", "more", cwd=path)
    return _git("rev-parse", "HEAD", cwd=path)


GGUF = {"requirements.txt": "# main\ngguf>=0.13.0\n# optional\nsentencepiece\nprotobuf\n"}


# -- adding ------------------------------------------------------------------------------------


def test_a_url_at_a_commit_adds_the_pack_its_section_and_its_distributions(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    commit = make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    outcome = repo.run(urls=(f"{HOST}/ComfyUI-GGUF.git@{commit}",), purpose="GGUF loaders")
    assert outcome.written
    added = repo.manifest()[-1]
    assert (added.name, added.repo, added.commit, added.requirements, added.purpose) == (
        "ComfyUI-GGUF", f"{HOST}/ComfyUI-GGUF.git", commit, True, "GGUF loaders"
    )  # fmt: skip
    sections = repo.sections()
    assert list(sections) == ["torch", "ComfyUI", "Existing-Pack", "ComfyUI-GGUF", "worker"]
    assert sections["ComfyUI-GGUF"] == ("gguf>=0.13.0", "sentencepiece", "protobuf")
    assert f"# == ComfyUI-GGUF == {commit} requirements.txt" in (repo.root / INPUTS).read_text()
    # Each new distribution, and who brought it: pyyaml only through gguf.
    new = {d.name: (d.version, d.packs) for d in outcome.new}
    assert new == {
        "gguf": ("0.17.1", ("ComfyUI-GGUF",)),
        "protobuf": ("6.31.0", ("ComfyUI-GGUF",)),
        "pyyaml": ("6.0.2", ("ComfyUI-GGUF",)),
        "sentencepiece": ("0.2.0", ("ComfyUI-GGUF",)),
    }
    assert repo.locked()["numpy"] == "1.26.4"
    assert "+ pyyaml==6.0.2  <- ComfyUI-GGUF" in repo.printed
    # What the Dockerfile's installer reads accepts what was written.
    packs = installer.load_manifest(repo.root / "comfyui" / "custom_nodes.json")
    assert packs[-1].commit == commit


def test_a_url_without_a_commit_pins_the_current_head_and_says_so(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    head = commit_more(tmp_path, "ComfyUI-GGUF", {"nodes.py": "X = 1\n"})
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF",))
    assert repo.manifest()[-1].commit == head
    assert f"pinned the current HEAD (branch main), {head}" in repo.printed
    assert repo.manifest()[-1].purpose == f"added from {HOST}/ComfyUI-GGUF"


def test_a_branch_name_is_pinned_to_its_commit(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    first = make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF.git@main",))
    assert repo.manifest()[-1].commit == first
    assert f"pinned main at {first}" in repo.printed


def test_a_pack_without_requirements_changes_no_distribution(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "ComfyUI_IPAdapter_plus", {"utils.py": "pass\n"})
    before = repo.locked()
    outcome = repo.run(urls=(f"{HOST}/ComfyUI_IPAdapter_plus",))
    assert repo.manifest()[-1].requirements is False
    assert "ComfyUI_IPAdapter_plus" not in repo.sections()
    assert outcome.new == [] and repo.locked() == before
    assert "The lock's distributions are unchanged." in repo.printed


def test_pyproject_dependencies_are_read_when_there_is_no_requirements_file(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    pyproject = '[project]\nname = "x"\ndependencies = ["scikit-image", "numpy"]\n'
    commit = make_pack(tmp_path, git_config, "py-only", {"pyproject.toml": pyproject})
    repo.run(urls=(f"{HOST}/py-only",))
    assert repo.manifest()[-1].requirements == "pyproject.toml"
    assert repo.sections()["py-only"] == ("scikit-image", "numpy")
    assert f"# == py-only == {commit} pyproject.toml" in (repo.root / INPUTS).read_text()
    assert {"scikit-image", "imageio"} <= set(repo.locked())
    # scripts/lock_image.py reads the same file for that pack.
    lock_image = load_script("lock_image")
    assert lock_image.requirements_file("pyproject.toml") == "pyproject.toml"


def test_a_requirements_file_that_differs_from_pyproject_is_followed_with_a_warning(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    pyproject = '[project]\nname = "x"\ndependencies = ["gguf", "scikit-image"]\n'
    make_pack(
        tmp_path, git_config, "both", {"requirements.txt": "gguf\n", "pyproject.toml": pyproject}
    )
    repo.run(urls=(f"{HOST}/both",))
    assert repo.sections()["both"] == ("gguf",)
    assert "pyproject.toml also lists scikit-image, which requirements.txt does not" in repo.printed


def test_install_py_is_never_run_and_the_warning_says_what_it_does(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    script = "import subprocess\nsubprocess.run(['pip', 'install', '-r', 'requirements.txt'])\n"
    make_pack(tmp_path, git_config, "with-install", {**GGUF, "install.py": script})
    outcome = repo.run(urls=(f"{HOST}/with-install",))
    assert outcome.written
    assert (
        "install.py is not run (not at build, not at boot): it pip-installs packages"
        in repo.printed
    )


def test_a_system_library_the_image_lacks_is_named(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    readme = "Install:\n\n    sudo apt-get install -y libcairo2-dev ffmpeg\n"
    make_pack(
        tmp_path, git_config, "cairo-pack", {"requirements.txt": "pycairo\n", "README.md": readme}
    )
    repo.run(urls=(f"{HOST}/cairo-pack",))
    assert (
        "names system packages the image lacks: ffmpeg (README.md), libcairo2-dev (README.md)"
        in repo.printed
    )
    assert "pycairo needs the system package libcairo2, which the image lacks" in repo.printed


def test_remove_is_the_reverse(repo: Repo, tmp_path: Path, git_config: Path) -> None:
    before = repo.files()
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF",))
    outcome = repo.run(remove=("comfyui-gguf",))
    assert outcome.removed == ["ComfyUI-GGUF"]
    assert {d.name for d in outcome.dropped} == {"gguf", "protobuf", "pyyaml", "sentencepiece"}
    assert repo.files() == before


def test_the_same_pack_at_the_same_commit_is_nothing_to_do(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    commit = make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF@{commit}",))
    before, calls = repo.files(), len(repo.compiler.calls)
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF.git@{commit}",))
    assert repo.files() == before and len(repo.compiler.calls) == calls
    assert "already in the manifest" in repo.printed


def test_update_moves_a_pack_to_another_commit(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF",), purpose="kept purpose")
    newer = commit_more(tmp_path, "ComfyUI-GGUF", {"requirements.txt": "gguf\n"})
    repo.run(urls=(f"{HOST}/ComfyUI-GGUF@{newer}",), update=True)
    pack = repo.manifest()[-1]
    assert (pack.commit, pack.purpose) == (newer, "kept purpose")
    assert repo.sections()["ComfyUI-GGUF"] == ("gguf",)
    assert len(repo.manifest()) == 2


def test_a_dry_run_compiles_and_writes_nothing(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    before = repo.files()
    outcome = repo.run(urls=(f"{HOST}/ComfyUI-GGUF",), dry_run=True)
    assert [d.name for d in outcome.new] == ["gguf", "protobuf", "pyyaml", "sentencepiece"]
    assert repo.files() == before and "Dry run: nothing was written." in repo.printed


# -- snapshots and folders -------------------------------------------------------------------


def _snapshot(tmp_path: Path, git_config: Path) -> dict[str, object]:
    gguf = make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    skimage = make_pack(tmp_path, git_config, "ski-pack", {"requirements.txt": "scikit-image\n"})
    off = make_pack(tmp_path, git_config, "off-pack", {"requirements.txt": "gguf\n"})
    return {
        "comfyui": "a" * 40,
        "git_custom_nodes": {
            f"{HOST}/ComfyUI-GGUF": {"hash": gguf, "disabled": False},
            f"{HOST}/ski-pack.git": {"hash": skimage, "disabled": False},
            f"{HOST}/off-pack": {"hash": off, "disabled": True},
            "https://github.com/ltdrdata/ComfyUI-Manager": {"hash": "b" * 40, "disabled": False},
        },
        "cnr_custom_nodes": {"comfyui-kjnodes": "1.1.0"},
        "file_custom_nodes": [
            {"filename": "my_node.py", "disabled": False},
            {"filename": "websocket_image_save.py", "disabled": False},  # ComfyUI's own
        ],
        "pips": {"gguf==0.16.0": "", "torch==2.7.1": "", "cstr @ git+https://x/y": ""},
    }


def test_a_snapshot_names_its_registry_entries_with_what_to_do(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(_snapshot(tmp_path, git_config)))
    repo.refuse(
        "comfyui-kjnodes: registry pack comfyui-kjnodes 1.1.0",
        "--skip comfyui-kjnodes",
        snapshot=path,
    )


def test_a_snapshot_adds_its_git_entries_at_their_hashes_with_pips_as_constraints(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    data = _snapshot(tmp_path, git_config)
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(data))
    outcome = repo.run(snapshot=path, skip=("comfyui-kjnodes",))
    names = [p.name for p in repo.manifest()]
    assert names == ["Existing-Pack", "ComfyUI-GGUF", "ski-pack"]
    hashes = {p.name: p.commit for p in repo.manifest()}
    git_nodes = data["git_custom_nodes"]
    assert isinstance(git_nodes, dict)
    assert hashes["ComfyUI-GGUF"] == git_nodes[f"{HOST}/ComfyUI-GGUF"]["hash"]
    # The pod's gguf 0.16.0 was a constraint; the newest (0.17.1) would be taken otherwise.
    assert repo.locked()["gguf"] == "0.16.0"
    # ... and it leaves no trace: the last compile ran with the image's own constraints.
    assert repo.compiler.calls[-1] == CONSTRAINTS and "gguf==0.16.0" in repo.compiler.calls[0]
    assert "torch==2.7.1" not in repo.compiler.calls[0]  # the lock holds torch already
    printed = repo.printed
    assert "off-pack: skipped, disabled in the snapshot" in printed
    assert "ComfyUI-Manager: skipped, the worker installs nothing at run time" in printed
    assert "my_node.py: a single-file node is no pack the image can pin" in printed
    assert "websocket_image_save.py" not in printed
    assert outcome.written


def test_pips_that_conflict_are_reported_and_left_out(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    data = _snapshot(tmp_path, git_config)
    data["pips"] = {"gguf==0.1.0": ""}  # not in the index: cannot be kept
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(data))
    repo.run(snapshot=path, skip=("comfyui-kjnodes",))
    assert repo.locked()["gguf"] == "0.17.1"
    assert "the snapshot's pip versions could not all be kept" in repo.printed
    assert "gguf 0.1.0 -> 0.17.1" in repo.printed


def test_a_yaml_snapshot_is_read_too(repo: Repo, tmp_path: Path, git_config: Path) -> None:
    import yaml

    data = _snapshot(tmp_path, git_config)
    path = tmp_path / "snap.yaml"
    path.write_text(yaml.safe_dump({"custom_nodes": data}))
    repo.run(snapshot=path, skip=("comfyui-kjnodes",))
    assert [p.name for p in repo.manifest()][1:] == ["ComfyUI-GGUF", "ski-pack"]


def _comfyui_folder(tmp_path: Path, git_config: Path) -> Path:
    """A pod's ComfyUI: a clone with an https origin, one with an ssh origin, ComfyUI's files."""
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    make_pack(tmp_path, git_config, "ski-pack", {"requirements.txt": "scikit-image\n"})
    nodes = tmp_path / "ComfyUI" / "custom_nodes"
    nodes.mkdir(parents=True)
    _git("clone", "-q", f"{HOST}/ComfyUI-GGUF.git", str(nodes / "ComfyUI-GGUF"), cwd=tmp_path)
    _git("clone", "-q", f"{HOST}/ski-pack", str(nodes / "ski-pack"), cwd=tmp_path)
    _git("remote", "set-url", "origin", "git@git.test:packs/ski-pack.git", cwd=nodes / "ski-pack")
    (nodes / "example_node.py.example").write_text("")
    (nodes / "websocket_image_save.py").write_text("")
    return tmp_path / "ComfyUI"


def test_a_comfyui_folder_gives_each_checkout_at_its_head(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    folder = _comfyui_folder(tmp_path, git_config)
    repo.run(folder=folder)
    added = {p.name: p for p in repo.manifest()[1:]}
    assert set(added) == {"ComfyUI-GGUF", "ski-pack"}
    assert added["ski-pack"].repo == "https://git.test/packs/ski-pack.git"  # ssh origin rewritten
    head = _git("rev-parse", "HEAD", cwd=folder / "custom_nodes" / "ComfyUI-GGUF")
    assert added["ComfyUI-GGUF"].commit == head


def test_a_local_commit_nobody_can_fetch_is_warned_about(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    folder = _comfyui_folder(tmp_path, git_config)
    checkout = folder / "custom_nodes" / "ComfyUI-GGUF"
    (checkout / "mine.py").write_text("X = 2\n")
    _git("add", "mine.py", cwd=checkout)
    _git("commit", "-q", "-m", "local", cwd=checkout)
    repo.run(folder=folder, skip=("ski-pack",))
    assert "is on no origin branch this checkout knows: push it" in repo.printed


# -- bad input: a message naming what to do, and the files untouched ---------------------------


def test_a_url_that_is_not_a_git_repository(repo: Repo, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    repo.refuse("is not a git repository", "clone URL", urls=(f"{HOST}/nothing-here",))


def test_a_file_url_is_refused_for_the_image_build(repo: Repo, tmp_path: Path) -> None:
    repo.refuse("fetches packs over https", urls=((tmp_path / "x").as_uri(),))


def test_a_registry_id_says_to_give_its_repository(repo: Repo) -> None:
    """worker-comfyui's Dockerfiles name packs by registry id (`comfy-node-install
    comfyui-kjnodes`): the refusal says so and where the repository is linked."""
    text = repo.refuse(
        "comfyui-kjnodes: a Comfy Registry id",
        "https://registry.comfy.org/nodes/comfyui-kjnodes",
        urls=("comfyui-kjnodes",),
    )
    assert "push a local repository" not in text


def test_a_commit_that_does_not_exist(repo: Repo, tmp_path: Path, git_config: Path) -> None:
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    repo.refuse(
        f"commit {'c' * 40} does not exist in {HOST}/ComfyUI-GGUF",
        urls=(f"{HOST}/ComfyUI-GGUF@{'c' * 40}",),
    )
    repo.refuse("no branch or tag 'v9'", urls=(f"{HOST}/ComfyUI-GGUF@v9",))


def test_a_short_commit_id_asks_for_the_full_one(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    repo.refuse("give the full 40-hex id", urls=(f"{HOST}/ComfyUI-GGUF@abcdef1",))


@pytest.mark.parametrize(
    "content",
    [
        '{"nodes": [], "links": []}',  # a workflow, not a snapshot
        "custom_nodes:\n  - a\n",  # YAML of another shape
        "pip==24.0\nrequests==2.0\n",  # a pip freeze
    ],
)
def test_a_snapshot_in_another_format(repo: Repo, tmp_path: Path, content: str) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(content)
    repo.refuse("is not a ComfyUI-Manager snapshot", "Save snapshot", snapshot=path)


def test_a_pack_already_present_at_another_commit(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "Existing-Pack", {"requirements.txt": "opencv-python\n"})
    repo.refuse(
        f"Existing-Pack: already in the manifest at {EXISTING_COMMIT[:12]}",
        "--update",
        urls=(f"{HOST}/Existing-Pack.git",),
    )


def test_the_same_folder_name_from_another_repository(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    config = f"url.{(tmp_path / 'remotes' / 'Existing-Pack').as_uri()}.insteadOf"
    make_pack(tmp_path, git_config, "Existing-Pack", {})
    _git(
        "config",
        "--file",
        str(git_config),
        "--add",
        config,
        "https://other.test/x/Existing-Pack",
        cwd=tmp_path,
    )
    repo.refuse(
        "remove it first (--remove Existing-Pack)", urls=("https://other.test/x/Existing-Pack",)
    )


def test_a_requirement_that_is_not_on_the_index(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "typo-pack", {"requirements.txt": "gguf\nnot-a-real-package\n"})
    text = repo.refuse(
        "the lock cannot take typo-pack",
        "typo-pack requires not-a-real-package, which is not on PyPI",
        urls=(f"{HOST}/typo-pack",),
    )
    assert "uv said:" in text


def test_a_conflict_names_the_pack_its_requirement_the_pin_and_who_needs_it(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "numpy2-pack", {"requirements.txt": "gguf\nnumpy>=2\n"})
    repo.refuse(
        "numpy2-pack requires numpy>=2",
        "the pin it hits: numpy==1.26.4 in comfyui/image-constraints.txt, chosen because: "
        "ReActor pins it",
        "numpy is also required by: ComfyUI (numpy>=1.25.0), Existing-Pack (numpy==1.26.4)",
        urls=(f"{HOST}/numpy2-pack",),
    )


def test_a_pack_folder_without_a_git_origin(repo: Repo, tmp_path: Path, git_config: Path) -> None:
    folder = _comfyui_folder(tmp_path, git_config)
    (folder / "custom_nodes" / "hand-made").mkdir()
    (folder / "custom_nodes" / "hand-made" / "__init__.py").write_text("")
    no_origin = folder / "custom_nodes" / "no-origin"
    no_origin.mkdir()
    _git("init", "-q", cwd=no_origin)
    repo.refuse(
        "hand-made: ",
        "is not a git checkout, so it has no origin to pin",
        "no-origin: ",
        "has no git origin",
        "--skip no-origin",
        folder=folder,
    )


def test_a_git_requirement_has_no_wheel_the_lock_can_pin(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    reqs = "numpy\ngit+https://github.com/WASasquatch/cstr\n--extra-index-url https://x/simple\n"
    make_pack(tmp_path, git_config, "was-like", {"requirements.txt": reqs})
    repo.refuse(
        "'git+https://github.com/WASasquatch/cstr' is no PyPI release",
        "'--extra-index-url https://x/simple' is a pip option",
        "--skip was-like for a snapshot or folder entry",
        urls=(f"{HOST}/was-like",),
    )


def test_a_prestartup_script_that_installs_is_refused(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    script = (
        "import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'pip', 'install', 'x'])\n"
    )
    make_pack(tmp_path, git_config, "boot-installer", {"prestartup_script.py": script})
    repo.refuse(
        "prestartup_script.py runs at every boot and it pip-installs packages",
        urls=(f"{HOST}/boot-installer",),
    )


def test_a_harmless_prestartup_script_is_named(
    repo: Repo, tmp_path: Path, git_config: Path
) -> None:
    make_pack(tmp_path, git_config, "boot-quiet", {"prestartup_script.py": "import os\n"})
    repo.run(urls=(f"{HOST}/boot-quiet",))
    assert "prestartup_script.py runs at every boot, before ComfyUI loads" in repo.printed


def test_every_problem_is_named_in_one_run(repo: Repo, tmp_path: Path, git_config: Path) -> None:
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", GGUF)
    make_pack(tmp_path, git_config, "Existing-Pack", {})
    repo.refuse(
        "2 pack(s) cannot be added as asked",
        "Existing-Pack: already in the manifest",
        f"commit {'d' * 40} does not exist",
        urls=(f"{HOST}/Existing-Pack", f"{HOST}/ComfyUI-GGUF@{'d' * 40}"),
    )


def test_removing_a_pack_that_is_not_there(repo: Repo) -> None:
    repo.refuse("no pack named Nope", "the packs are: Existing-Pack", remove=("Nope",))


# -- the lock's graph, and the script ----------------------------------------------------------


def test_the_committed_lock_reads_as_a_graph() -> None:
    """Every pin of the real lock is an entry, with what asked for it."""
    text = (ROOT / LOCK).read_text(encoding="utf-8")
    entries = lock_entries(text)
    assert set(entries) == {n.replace("_", "-") for n in locked_versions(text)}
    assert entries["aiohttp"].via == ("-r comfyui/image.in", "aiohttp-retry", "runpod")
    assert all(e.via for e in entries.values())


def test_the_script_exits_2_without_a_pack_and_1_on_a_refusal(tmp_path: Path) -> None:
    script = load_script("add_custom_nodes")
    assert script.main([]) == 2
    assert script.main(["--remove", "no-such-pack", "--dry-run"]) == 1


# -- the real compile -------------------------------------------------------------------------


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_real_uv_compile_adds_a_pack_to_the_real_lock(tmp_path: Path, git_config: Path) -> None:
    """The repository's own comfyui/ files, a local pack needing gguf, uv against PyPI (as
    `scripts/lock_image.py --check` in CI): about 20 s with uv's cache warm."""
    if not _pypi_reachable():
        pytest.skip("PyPI cannot be reached: the real compile needs it (CI has it)")
    root = tmp_path / "real"
    shutil.copytree(ROOT / "comfyui", root / "comfyui", ignore=shutil.ignore_patterns("ComfyUI"))
    shutil.copy(ROOT / "Dockerfile", root / "Dockerfile")
    make_pack(tmp_path, git_config, "ComfyUI-GGUF", {"requirements.txt": "gguf>=0.13.0\n"})
    before = locked_versions((root / LOCK).read_text(encoding="utf-8"))
    outcome = run(Request(urls=(f"{HOST}/ComfyUI-GGUF",)), root, UvCompiler(), print)
    after = locked_versions((root / LOCK).read_text(encoding="utf-8"))
    assert {d.name for d in outcome.new} == set(after) - set(before)
    assert "gguf" in {d.name for d in outcome.new}
    assert all(after[n] == v for n, v in before.items())  # nothing the lock held moved
    assert next(d for d in outcome.new if d.name == "gguf").packs == ("ComfyUI-GGUF",)


def test_the_example_snapshot_is_one_the_command_reads() -> None:
    """examples/packs/manager-snapshot.json (docs/custom-nodes.md's proof set) is in the
    manager's format: five git entries at full hashes, one disabled, one registry entry."""
    from engine.packs.sources import read_snapshot

    data = read_snapshot(ROOT / "examples" / "packs" / "manager-snapshot.json")
    git_nodes = data["git_custom_nodes"]
    enabled = [url for url, entry in git_nodes.items() if not entry["disabled"]]
    assert len(enabled) == 5
    assert all(len(entry["hash"]) == 40 for entry in git_nodes.values())
    assert list(data["cnr_custom_nodes"]) == ["comfyui-kjnodes"]
