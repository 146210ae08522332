"""The node index folder kept bounded: a read marks its file used, a write prunes the rest.

Time is given explicitly (``now``) and every file's mtime set with ``os.utime``: no test
waits for a clock. ``test_lazy_nodes.py`` covers the index's content and keys.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from engine.runtime import node_index
from engine.runtime.node_index import (
    KEEP_AT_MOST,
    KEEP_UNUSED_DAYS,
    MARK_USED_AFTER_S,
    NodeIndex,
    find,
    index_path,
    mark_used,
    newest_of,
    prune,
)

NOW = 2_000_000_000.0
DAY = 86400.0


def _index(folder: Path, key: str, age_days: float, environment: str = "env") -> Path:
    """An index file for ``key`` last used ``age_days`` before :data:`NOW`."""
    path = index_path(folder, key)
    NodeIndex(key=key, environment=environment).write(path)
    _age(path, age_days)
    return path


def _age(path: Path, age_days: float) -> None:
    when = NOW - age_days * DAY
    os.utime(path, (when, when))


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_write_removes_files_unused_for_longer_than_the_limit(tmp_path: Path) -> None:
    current = _index(tmp_path, "current", 0)
    recent = _index(tmp_path, "recent", KEEP_UNUSED_DAYS - 1)
    stale = _index(tmp_path, "stale", KEEP_UNUSED_DAYS + 1)
    removed = prune(tmp_path, current, now=NOW)
    assert removed == [stale]
    assert _names(tmp_path) == {current.name, recent.name}


def test_the_file_just_written_stays_however_old_its_mtime(tmp_path: Path) -> None:
    """A checkout copied with its old mtimes: the index that boot wrote is never removed."""
    current = _index(tmp_path, "current", KEEP_UNUSED_DAYS * 3)
    assert prune(tmp_path, current, now=NOW) == []
    assert current.exists()


def test_at_most_the_newest_files_stay_the_current_one_among_them(tmp_path: Path) -> None:
    current = _index(tmp_path, "current", 20)  # the oldest: still kept
    others = [_index(tmp_path, f"k{n:02d}", n) for n in range(KEEP_AT_MOST + 3)]
    removed = prune(tmp_path, current, now=NOW)
    kept = others[: KEEP_AT_MOST - 1]
    assert sorted(removed) == sorted(others[KEEP_AT_MOST - 1 :])
    assert _names(tmp_path) == {current.name, *(p.name for p in kept)}


def test_older_layouts_age_out_and_other_files_are_left_alone(tmp_path: Path) -> None:
    current = _index(tmp_path, "current", 0)
    old_layouts = [
        tmp_path / "node-index-0123456789abcdef.json",
        tmp_path / "node-index-v2-ab.json",
    ]
    for path in old_layouts:
        path.write_text("{}")
        _age(path, KEEP_UNUSED_DAYS + 5)
    young_layout = tmp_path / "node-index-v3-cd.json"
    young_layout.write_text("{}")
    _age(young_layout, 1)  # a worker of another version still uses it
    unrelated = [tmp_path / "notes.json", tmp_path / "node-index-x.txt"]
    for path in unrelated:
        path.write_text("x")
        _age(path, 400)
    folder_named_like_one = tmp_path / "node-index-dir.json"
    folder_named_like_one.mkdir()
    os.utime(folder_named_like_one, (0, 0))
    assert sorted(prune(tmp_path, current, now=NOW)) == sorted(old_layouts)
    assert _names(tmp_path) == {
        current.name,
        young_layout.name,
        *(p.name for p in unrelated),
        folder_named_like_one.name,
    }


def test_a_killed_writers_temporary_file_goes_a_live_ones_stays(tmp_path: Path) -> None:
    current = _index(tmp_path, "current", 0)
    left = tmp_path / f".{current.name}.123.456.tmp"
    writing = tmp_path / f".{index_path(tmp_path, 'other').name}.789.1.tmp"
    for path in (left, writing):
        path.write_text("{")
    _age(left, 2)
    _age(writing, 0)
    assert prune(tmp_path, current, now=NOW) == [left]
    assert writing.exists()


def test_a_file_marked_used_or_removed_by_another_worker_during_a_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the listing and the removal another worker marks one file used and removes
    another: the marked one stays, the removed one is no error and not reported."""
    current = _index(tmp_path, "current", 0)
    marked = _index(tmp_path, "marked", KEEP_UNUSED_DAYS + 1)
    gone = _index(tmp_path, "gone", KEEP_UNUSED_DAYS + 2)
    stale = _index(tmp_path, "stale", KEEP_UNUSED_DAYS + 3)
    listing = node_index._index_files

    def racing(folder: Path) -> list[tuple[Path, float]]:
        found = listing(folder)
        mark_used(marked, now=NOW)
        gone.unlink()
        return found

    monkeypatch.setattr(node_index, "_index_files", racing)
    assert prune(tmp_path, current, now=NOW) == [stale]
    assert _names(tmp_path) == {current.name, marked.name}


def test_a_missing_or_unlistable_folder_prunes_nothing(tmp_path: Path) -> None:
    assert prune(tmp_path / "absent", tmp_path / "absent" / "x.json", now=NOW) == []


def test_a_read_marks_an_old_file_used_and_leaves_a_fresh_one_alone(tmp_path: Path) -> None:
    old = _index(tmp_path, "old", 3)
    fresh = _index(tmp_path, "fresh", 0.5)
    fresh_mtime = fresh.stat().st_mtime_ns
    assert find([tmp_path], "old", now=NOW) is not None
    assert old.stat().st_mtime == NOW
    # Within a day of its last mark: read without a write to the folder.
    assert MARK_USED_AFTER_S > 0.5 * DAY
    assert find([tmp_path], "fresh", now=NOW) is not None
    assert fresh.stat().st_mtime_ns == fresh_mtime


def test_a_marked_file_outlives_a_prune_it_would_have_lost(tmp_path: Path) -> None:
    current = _index(tmp_path, "current", 0)
    used = _index(tmp_path, "used", KEEP_UNUSED_DAYS + 1)
    assert find([tmp_path], "used", now=NOW) is not None
    assert prune(tmp_path, current, now=NOW) == []
    assert used.exists()


def test_a_read_only_checkout_still_reads_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _index(tmp_path, "k", 3)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(node_index.os, "utime", refuse)
    index = find([tmp_path], "k", now=NOW)
    assert index is not None and index.key == "k"
    assert path.stat().st_mtime == NOW - 3 * DAY


def test_marking_a_file_another_worker_removed_is_no_error(tmp_path: Path) -> None:
    mark_used(tmp_path / "node-index-v6-gone.json", now=NOW)
    assert not (tmp_path / "node-index-v6-gone.json").exists()


def test_the_index_is_read_from_the_first_folder_that_holds_it(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _index(second, "k", 0, environment="second")
    found = find([first, second], "k", now=NOW)
    assert found is not None and found.environment == "second"
    _index(first, "k", 0, environment="first")
    found = find([first, second], "k", now=NOW)
    assert found is not None and found.environment == "first"
    assert find([first, second], "other", now=NOW) is None


def test_the_evidence_donor_is_the_newest_index_of_this_environment(tmp_path: Path) -> None:
    """Another image's endpoint on the same volume used its index last: not a donor."""
    _index(tmp_path, "mine-old", 5, environment="mine")
    _index(tmp_path, "mine", 2, environment="mine")
    _index(tmp_path, "theirs", 0, environment="theirs")
    donor = newest_of([tmp_path], "mine")
    assert donor is not None and donor.key == "mine"
    assert newest_of([tmp_path], "nobody's") is None
