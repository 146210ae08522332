"""git, through its command line: what a pack's repository holds, fetched without prompts.

A commit is fetched alone and without file contents (a partial fetch); the files read
later come on demand. The user's own git configuration applies (``url.<base>.insteadOf``
rewrites included), credentials are never asked for: a wrong URL fails, it does not wait.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from engine.packs import PackError


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run git without a prompt for credentials (a wrong URL must fail, not wait)."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=_git_env(),
    )


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def show(git_dir: Path, commit: str, path: str) -> str | None:
    """A file's text at ``commit``, or None when the commit has no such file."""
    result = git("--git-dir", str(git_dir), "show", f"{commit}:{path}")
    return result.stdout if result.returncode == 0 else None


def top_level(git_dir: Path, commit: str) -> list[str]:
    """The names at the top of ``commit``'s tree."""
    result = git("--git-dir", str(git_dir), "ls-tree", "--name-only", commit)
    return result.stdout.splitlines() if result.returncode == 0 else []


def remote_refs(url: str) -> tuple[dict[str, str], str | None]:
    """``git ls-remote``: ref -> commit, and the branch HEAD points at (None if unknown)."""
    result = git("ls-remote", "--symref", url)
    if result.returncode != 0:
        raise PackError(
            f"{url} is not a git repository git can read ({_last_line(result)})",
            ["give the repository's clone URL, e.g. https://github.com/OWNER/NAME.git"],
        )
    refs: dict[str, str] = {}
    head_branch = None
    for line in result.stdout.splitlines():
        left, _, ref = line.partition("\t")
        if left.startswith("ref: "):
            head_branch = left[len("ref: ") :].removeprefix("refs/heads/")
        elif ref:
            refs[ref] = left
    if not refs:
        raise PackError(f"{url} has no commits to pin", ["push a commit, or name another URL"])
    return refs, head_branch


def fetch(url: str, commit: str, git_dir: Path) -> None:
    """Bring ``commit`` of ``url`` into the bare repository ``git_dir``, blobs on demand.

    A partial fetch (``--filter=blob:none``) takes the commit and its trees only; the few
    files read later (requirements, setup scripts) come on demand, so a pack with
    hundreds of MB of sample images costs kilobytes. A server that does not filter
    sends everything, which works too.
    """
    if not git_dir.exists():
        for args in (
            ("init", "--quiet", "--bare", str(git_dir)),
            ("--git-dir", str(git_dir), "remote", "add", "origin", url),
            ("--git-dir", str(git_dir), "config", "core.repositoryformatversion", "1"),
            ("--git-dir", str(git_dir), "config", "extensions.partialClone", "origin"),
            ("--git-dir", str(git_dir), "config", "remote.origin.promisor", "true"),
            ("--git-dir", str(git_dir), "config", "remote.origin.partialclonefilter", "blob:none"),
        ):
            made = git(*args)
            if made.returncode != 0:
                raise PackError(f"git {args[0]} for {url} failed: {_last_line(made)}")
    base = ("--git-dir", str(git_dir), "fetch", "--quiet", "--filter=blob:none", "origin")
    got = git(*base[:-1], "--depth", "1", "origin", commit)
    if got.returncode != 0:
        # A host that refuses fetching by commit id: take its branches and tags, look there.
        got = git(*base, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
    found = git("--git-dir", str(git_dir), "cat-file", "-e", f"{commit}^{{commit}}")
    if found.returncode == 0:
        return
    if got.returncode != 0:
        raise PackError(
            f"could not fetch {commit[:12]} from {url} ({_last_line(got)})",
            ["check that the URL and the commit are right and the host can be reached"],
        )
    raise PackError(
        f"commit {commit} does not exist in {url}",
        [
            "give a commit of that repository (git log in a clone), a branch or tag "
            "name, or no @... to pin its current HEAD"
        ],
    )
