"""The commands the docs print run as printed: every ``bash`` block of the pages a newcomer
follows is read, each command that can run in CI (help, listings, dry runs) is run from
the repository root, and every other one must be on a list that says why CI cannot run it
(a GPU, ComfyUI, Docker, the network, an endpoint). The model sets' sizes in the
deployment guide are the ones the downloader lists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [
    "README.md",
    "docs/deployment.md",
    "docs/troubleshooting.md",
    "docs/custom-nodes.md",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs" / "zh-CN").glob("*.md")),
]

# A command CI runs: it only prints (help, a listing, a dry run) and needs no GPU,
# ComfyUI, network or endpoint.
_RUNS_IN_CI = re.compile(r"(^|\s)(--help|-h|--list|--dry-run)(\s|$)")

# Every other command, by what it starts with or holds, and why CI does not run it.
NOT_IN_CI: list[tuple[str, str]] = [
    (r"^scripts/setup\.sh", "installs torch and ComfyUI (CI runs its own setup)"),
    (r"^(VENV=\S+ )?scripts/test\b", "the test suite itself"),
    (r"^scripts/check\b", "CI's own lint step"),
    (r"handler\.py", "boots ComfyUI"),
    (r"scripts/run_job\.py (?!--help)", "boots ComfyUI"),
    (r"scripts/measure_chain_depth\.py", "needs a ComfyUI checkout"),
    (
        r"scripts/lock_image\.py( --upgrade| --inputs|$)",
        "resolves against PyPI and writes the lock",
    ),
    (r"scripts/lock_image\.py --check", "CI runs it as its own step (.ci/run)"),
    (
        r"scripts/add_custom_nodes\.py (?!--help)",
        "fetches packs with git and compiles the lock against PyPI",
    ),
    (r"scripts/workflow_needs\.py (?!--help)", "boots ComfyUI with its packs"),
    (r"comfy-worker-client .*--url ", "talks to a running worker"),
    (r"^comfy-worker-client ", "talks to a RunPod endpoint"),
    (r"^docker ", "builds and pushes the image"),
    (r"^git clone ", "clones over the network"),
    (r"^curl ", "calls a RunPod endpoint"),
    (r"^wget ", "downloads a model"),
    (r"^pip install ", "installs from the network into an environment"),
    (r"^export ", "sets a variable for the commands after it"),
    (r"^mkdir ", "makes a folder on a pod's volume"),
    (r"download_models\.py .*--dest /workspace/models$", "downloads models"),
    (r"download_models\.py --set .*--allow-unverified", "downloads models"),
]


def commands(page: str) -> list[str]:
    """The commands of ``page``'s bash blocks: continuations joined, comments dropped."""
    found: list[str] = []
    inside, pending = False, ""
    for raw in (REPO / page).read_text().splitlines():
        line = raw.strip()
        if line.startswith("```"):
            inside = not inside and line in {"```bash", "```sh"}
            continue
        if not inside or not line or line.startswith("#"):
            continue
        line = re.sub(r"\s+#\s.*$", "", line)  # "cmd   # what it does"
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        found.append((pending + line).strip().removesuffix("&").strip())
        pending = ""
    return found


def documented() -> list[tuple[str, str]]:
    return [(page, command) for page in PAGES for command in commands(page)]


def as_run_here(command: str) -> str:
    """The command with the dev environment's Python for ``.venv/bin/python`` (this test
    runs in that environment, wherever it lives), and the client's entry point run by
    that Python from the checkout (``pip install ./client`` puts it on PATH; the test
    does not install)."""
    python = shlex.quote(sys.executable)
    command = command.replace(".venv/bin/python", python)
    return re.sub(
        r"^(\.venv/bin/)?comfy-worker-client\b", f"{python} -m comfy_worker_client", command
    )


def test_the_pages_print_commands() -> None:
    assert len(documented()) >= 20


def test_every_command_is_run_here_or_says_why_not() -> None:
    unknown = [
        f"{page}: {command}"
        for page, command in documented()
        if not _RUNS_IN_CI.search(command)
        and not any(re.search(pattern, command) for pattern, _ in NOT_IN_CI)
    ]
    assert unknown == [], (
        "documented commands this test neither runs nor lists (NOT_IN_CI, with the reason "
        "CI cannot run them):\n" + "\n".join(unknown)
    )


def test_every_script_a_command_names_exists_and_runs_as_named() -> None:
    """``scripts/x.py`` printed as a command of its own must be executable with a shebang;
    every script a command names must exist."""
    problems = []
    for page, command in documented():
        words = shlex.split(command)
        for i, word in enumerate(words):
            if not word.startswith("scripts/"):
                continue
            path = REPO / word
            if not path.is_file():
                problems.append(f"{page}: {word} does not exist ({command})")
                continue
            first = i == 0 or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[i - 1]) is not None
            if first:
                if not os.access(path, os.X_OK):
                    problems.append(f"{page}: {word} is run directly but has no run bit")
                if not path.read_text().startswith("#!"):
                    problems.append(f"{page}: {word} is run directly but has no shebang")
    assert problems == [], "\n".join(problems)


_CI_COMMANDS = sorted({c for _, c in documented() if _RUNS_IN_CI.search(c)})


@pytest.mark.parametrize("command", _CI_COMMANDS)
def test_the_command_runs_as_printed(command: str) -> None:
    # The checkout's client, as scripts/setup.sh installs it beside the worker.
    env = {**os.environ, "PYTHONPATH": str(REPO / "client" / "src")}
    done = subprocess.run(
        ["bash", "-c", as_run_here(command)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{command} printed nothing"


def listed(*sets: str) -> str:
    """The last line of ``download_models.py --list`` for ``sets``: "N files, S GiB"."""
    args = [a for s in sets for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "scripts/download_models.py", "--list", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_the_model_sets_sizes_are_what_the_downloader_lists() -> None:
    page = (REPO / "docs" / "deployment.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\d.]+ GiB) \|$", page, flags=re.MULTILINE)
    assert {name for name, _ in rows} >= {"sdxl", "wan22", "wan22_14b", "pulid", "reactor"}
    wrong = [
        f"{name}: the table says {size}, --list says {listed(name)}"
        for name, size in rows
        if not listed(name).endswith(f", {size}")
    ]
    assert wrong == []
    files, total = re.fullmatch(r"(\d+) files, ([\d.]+ GiB)", listed()).groups()  # type: ignore[union-attr]
    assert f"{total} in {files} files" in page


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_docs_leads_somewhere() -> None:
    """A link to a page or a section that is not there is a step a newcomer cannot take."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue  # https:, mailto:
            path, _, anchor = link.partition("#")
            target = (page.parent / path) if path else page
            where = f"{page.relative_to(REPO)}: ({link})"
            if not target.exists():
                broken.append(f"{where} names no file")
            elif anchor and target.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.*)$", target.read_text())
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{where} names no heading of {path or 'this page'}")
    assert broken == [], "\n".join(broken)


_FIGURE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|MiB|GiB|KiB|MB|GB|x|%)(?![\w])")


def test_no_figure_is_one_measured_by_hand() -> None:
    """Every figure comes with the command that made it: a paragraph that says it was
    measured by hand, or that its script was not kept, gives no figure."""
    offending = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for paragraph in re.split(r"\n\s*\n|\n(?=- )", page.read_text()):
            flat = " ".join(paragraph.split())
            if re.search(r"by hand|not kept|no script", flat) and _FIGURE.search(flat):
                offending.append(f"{page.relative_to(REPO)}: {flat[:160]}")
    assert offending == [], "\n".join(offending)
