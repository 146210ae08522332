"""scripts/prepare_image.py: the image's .pyc files and first-start caches, made at build.

No ComfyUI, torch, matplotlib or ultralytics needed: the trees are made here, and the
caches are baked in a throwaway venv whose "matplotlib" and "ultralytics" are stand-ins
that write what the real ones write, where the real ones write it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import venv
from pathlib import Path

import pytest

from tests.unit.test_manifests import load_script

prepare = load_script("prepare_image")

# The stand-ins: each writes its file where the real package does, as of matplotlib 3.10
# and ultralytics 8.3 (MPLCONFIGDIR/fontlist-v*.json; YOLO_CONFIG_DIR/Ultralytics/, used
# only when YOLO_CONFIG_DIR exists), and records the switches it saw.
FAKE_FONT_MANAGER = """\
import json, os
folder = os.environ["MPLCONFIGDIR"]
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "fontlist-v390.json"), "w") as f:
    f.write("{}")
"""
FAKE_ULTRALYTICS_UTILS = """\
import json, os
base = os.environ["YOLO_CONFIG_DIR"]
assert os.path.isdir(base), "ultralytics falls back to /tmp/Ultralytics here"
os.makedirs(os.path.join(base, "Ultralytics"), exist_ok=True)
with open(os.path.join(base, "Ultralytics", "settings.json"), "w") as f:
    seen = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL")}
    json.dump({**seen, "cwd": os.getcwd()}, f)
"""


def pyc_flags(source: Path) -> int:
    """The PEP 552 flags word (bytes 4-8) of ``source``'s level-0 .pyc."""
    cached = Path(importlib.util.cache_from_source(str(source), optimization=""))
    return int.from_bytes(cached.read_bytes()[4:8], "little")


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def make_comfyui(root: Path) -> Path:
    """A tree shaped like a ComfyUI checkout with one custom node pack."""
    return make_tree(
        root,
        {
            "execution.py": "X = 1\n",
            "comfy/__init__.py": "",
            "comfy/model_management.py": "def f():\n    return 2\n",
            "custom_nodes/SomePack/__init__.py": "NODE_CLASS_MAPPINGS = {}\n",
            "custom_nodes/SomePack/nodes/deep.py": "Y = 'y'\n",
        },
    )


def make_venv(root: Path, fakes: bool) -> Path:
    """A real venv (no pip), with the matplotlib/ultralytics stand-ins if ``fakes``."""
    venv.create(root, with_pip=False, symlinks=True)
    packages = next(root.glob("lib/python3*/site-packages"))
    make_tree(packages, {"somelib/__init__.py": "Z = 3\n"})
    if fakes:
        make_tree(
            packages,
            {
                "matplotlib/__init__.py": "",
                "matplotlib/font_manager.py": FAKE_FONT_MANAGER,
                "ultralytics/__init__.py": "",
                "ultralytics/utils/__init__.py": FAKE_ULTRALYTICS_UTILS,
            },
        )
    return root


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cache variables from the host: the script compares them with --cache-dir."""
    for name in ("MPLCONFIGDIR", "YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL"):
        monkeypatch.delenv(name, raising=False)


class TestCompile:
    def test_every_source_gets_an_unchecked_hash_pyc(self, tmp_path: Path) -> None:
        """Flags 0b01: hash-based, source never checked (the image's sources never change)."""
        tree = make_comfyui(tmp_path / "ComfyUI")
        report = prepare.compile_tree(tree, workers=1)
        sources = sorted(tree.rglob("*.py"))
        assert len(sources) == 5
        assert all(pyc_flags(s) == 0b01 for s in sources)
        assert report.sources == 5
        assert report.states == {prepare.PycState.UNCHECKED_HASH: 5}
        assert report.failed == []

    def test_a_current_timestamp_pyc_is_kept(self, tmp_path: Path) -> None:
        """pip's .pyc files stay: rewriting them would only duplicate them in a new layer."""
        tree = make_tree(tmp_path / "site", {"a.py": "A = 1\n", "b.py": "B = 2\n"})
        py_compile.compile(str(tree / "a.py"), doraise=True)  # pip's default: timestamp
        before = Path(importlib.util.cache_from_source(str(tree / "a.py"))).read_bytes()
        report = prepare.compile_tree(tree, workers=1)
        after = Path(importlib.util.cache_from_source(str(tree / "a.py"))).read_bytes()
        assert after == before and pyc_flags(tree / "a.py") == 0
        assert pyc_flags(tree / "b.py") == 0b01
        assert report.states == {
            prepare.PycState.TIMESTAMP: 1,
            prepare.PycState.UNCHECKED_HASH: 1,
        }

    def test_a_stale_timestamp_pyc_is_replaced(self, tmp_path: Path) -> None:
        """A copy that moved mtimes makes pip's .pyc stale: it is rewritten, hash-based."""
        tree = make_tree(tmp_path / "site", {"a.py": "A = 1\n"})
        py_compile.compile(str(tree / "a.py"), doraise=True)
        os.utime(tree / "a.py", (1_000_000_000, 1_000_000_000))
        assert prepare.pyc_state(tree / "a.py") is prepare.PycState.STALE
        prepare.compile_tree(tree, workers=1)
        assert prepare.pyc_state(tree / "a.py") is prepare.PycState.UNCHECKED_HASH

    def test_a_file_that_does_not_compile_is_reported(self, tmp_path: Path) -> None:
        tree = make_tree(tmp_path / "t", {"ok.py": "A = 1\n", "bad.py": "def (:\n"})
        report = prepare.compile_tree(tree, workers=1)
        assert report.failed == [tree / "bad.py"]
        assert "1 failed" in report.summary()

    def test_pyc_state_reads_each_kind_of_header(self, tmp_path: Path) -> None:
        tree = make_tree(tmp_path / "t", {"a.py": "A = 1\n"})
        source = tree / "a.py"
        assert prepare.pyc_state(source) is prepare.PycState.MISSING
        mode = py_compile.PycInvalidationMode
        py_compile.compile(str(source), doraise=True, invalidation_mode=mode.CHECKED_HASH)
        assert prepare.pyc_state(source) is prepare.PycState.CHECKED_HASH
        py_compile.compile(str(source), doraise=True, invalidation_mode=mode.TIMESTAMP)
        assert prepare.pyc_state(source) is prepare.PycState.TIMESTAMP


class TestMain:
    def test_comfyui_and_app_compiled(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        comfyui = make_comfyui(tmp_path / "ComfyUI")
        app = make_tree(tmp_path / "app", {"handler.py": "", "engine/__init__.py": ""})
        code = prepare.main(["--comfyui", str(comfyui), "--app", str(app), "--workers", "1"])
        assert code == prepare.EXIT_OK
        assert all(pyc_flags(s) == 0b01 for s in [*comfyui.rglob("*.py"), *app.rglob("*.py")])
        out = capsys.readouterr().out
        assert f"compiled {comfyui}: 5 .py files, 5 with an unchecked-hash .pyc" in out
        assert f"compiled {app}: 2 .py files" in out

    def test_a_broken_file_of_the_app_fails_the_build(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        app = make_tree(tmp_path / "app", {"handler.py": "", "engine/x.py": "def (:\n"})
        assert prepare.main(["--app", str(app), "--workers", "1"]) == prepare.EXIT_FAILED
        captured = capsys.readouterr()
        assert f"no .pyc: {app / 'engine' / 'x.py'}" in captured.out
        assert "do not compile" in captured.err

    @pytest.mark.parametrize("option", ["--comfyui", "--app", "--venv"])
    def test_a_missing_path_is_an_error(
        self, tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        missing = tmp_path / "nowhere"
        assert prepare.main([option, str(missing)]) == prepare.EXIT_USAGE
        assert f"error: {option} {missing}: no such folder" in capsys.readouterr().err

    def test_the_wrong_folder_is_an_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A checkout one level off (/comfyui/ComfyUI) is caught, not compiled as empty."""
        assert prepare.main(["--comfyui", str(tmp_path)]) == prepare.EXIT_USAGE
        assert "no execution.py there" in capsys.readouterr().err

    def test_nothing_to_do_is_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert prepare.main([]) == prepare.EXIT_USAGE
        assert "nothing to do" in capsys.readouterr().err

    def test_a_venv_of_another_python_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Its .pyc files would carry this Python's tag, which the worker's never reads."""
        other = make_tree(tmp_path / "venv", {"lib/python3.0/site-packages/x.py": ""})
        (other / "pyvenv.cfg").write_text("version = 3.0.0\n", encoding="utf-8")
        assert prepare.main(["--venv", str(other)]) == prepare.EXIT_USAGE
        assert "is for python3.0" in capsys.readouterr().err


class TestCaches:
    def test_venv_compiled_and_caches_baked_with_its_python(
        self, tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        env_dir = make_venv(tmp_path / "venv", fakes=True)
        cache = tmp_path / "cache"
        argv = ["--venv", str(env_dir), "--cache-dir", str(cache), "--workers", "1"]
        assert prepare.main(argv) == prepare.EXIT_OK
        packages = next(env_dir.glob("lib/python3*/site-packages"))
        assert pyc_flags(packages / "somelib" / "__init__.py") == 0b01
        assert (cache / "matplotlib" / "fontlist-v390.json").is_file()
        settings = cache / "ultralytics" / "Ultralytics" / "settings.json"
        assert json.loads(settings.read_text()) == {
            "YOLO_OFFLINE": "true",
            "YOLO_AUTOINSTALL": "false",
            # ultralytics keeps its working folder as datasets_dir: the cache's, not the build's.
            "cwd": str(cache / "ultralytics"),
        }
        out = capsys.readouterr().out
        assert f"MPLCONFIGDIR={cache / 'matplotlib'}" in out
        assert f"YOLO_CONFIG_DIR={cache / 'ultralytics'}" in out

    def test_a_package_not_installed_is_skipped(
        self, tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        env_dir = make_venv(tmp_path / "venv", fakes=False)
        argv = ["--venv", str(env_dir), "--cache-dir", str(tmp_path / "c"), "--workers", "1"]
        assert prepare.main(argv) == prepare.EXIT_OK
        out = capsys.readouterr().out
        assert "matplotlib font cache: skipped, matplotlib.font_manager is not installed" in out
        assert "Ultralytics settings: skipped" in out

    def test_a_failing_import_fails_the_build(
        self, tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        env_dir = make_venv(tmp_path / "venv", fakes=True)
        packages = next(env_dir.glob("lib/python3*/site-packages"))
        (packages / "matplotlib" / "font_manager.py").write_text("raise RuntimeError('no')\n")
        argv = ["--venv", str(env_dir), "--cache-dir", str(tmp_path / "c"), "--workers", "1"]
        assert prepare.main(argv) == prepare.EXIT_FAILED
        assert "`import matplotlib.font_manager` failed" in capsys.readouterr().err

    def test_env_that_disagrees_with_cache_dir_is_refused(
        self,
        tmp_path: Path,
        clean_env: None,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The Dockerfile's ENV and --cache-dir must name the same folders."""
        monkeypatch.setenv("MPLCONFIGDIR", "/somewhere/else")
        assert prepare.main(["--cache-dir", str(tmp_path / "c")]) == prepare.EXIT_USAGE
        assert "MPLCONFIGDIR is '/somewhere/else' here" in capsys.readouterr().err

    def test_env_that_agrees_is_accepted(
        self, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = (tmp_path / "c").resolve()
        monkeypatch.setenv("MPLCONFIGDIR", str(cache / "matplotlib"))
        monkeypatch.setenv("YOLO_OFFLINE", "True")  # ultralytics lower-cases it
        prepare.check_env(cache, os.environ)
