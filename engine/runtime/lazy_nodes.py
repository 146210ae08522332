"""The boot's side of loading node files lazily: which of ComfyUI's node files and custom
node packs are imported at boot and which are registered by name, and the node index made
from what each import added.

ComfyUI's ``main.py`` imports every file of ``comfy_extras/`` (75 in 0.3.64) and of
``comfy_api_nodes/`` (21) at every start, for node types most jobs never use
(docs/benchmarks.md has the seconds). Here the first boot imports them all, as
ComfyUI does, and writes down which node types each file added: the *index*
(:mod:`engine.runtime.node_index`). Later boots with the same files register only the
names; a file is imported the first time one of its node types is asked for
(:mod:`engine.runtime.first_use`), through ComfyUI's node mappings, which become lazy
ones (:mod:`engine.runtime.lazy_mapping`).

Custom node packs may load lazily too, decided per pack from evidence taken when the
index is made (:mod:`engine.runtime.pack_evidence`): a pack's import may patch ComfyUI
or torch, which must happen at boot. A pack whose import changed nothing but its node
mappings, folder entries of ``folder_paths`` and environment variables is deferred;
those two are replayed at its place in the boot, so later steps see what an eager boot
makes. Any other change keeps it eager, and the boot log says which, as does a pack that
reaches another pack's modules its own way (:mod:`engine.runtime.pack_links`). A deferred
pack still claims its folder name at boot (a later folder of that name stays skipped,
``pack_imports``), and is imported on first use with ComfyUI's ``ignore`` set of
built-in names. Without a recorder (``LAZY_PACKS=false``) every pack loads at boot, as
ComfyUI does.

Kept eager (imported at boot as today), so that what a job sees never depends on
order: files that failed to import when the index was made (their warning shows at
every boot, as in ComfyUI), files that define a node type another file also defines
(the last one wins in ComfyUI), packs that defined no node type, and every file of a
group named eager (the API nodes when a Comfy.org key is configured).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from engine.runtime.first_use import FirstUseImports, LoadCustomNode
from engine.runtime.lazy_mapping import LazyMapping
from engine.runtime.node_index import (
    KEEP_AT_MOST,
    KEEP_UNUSED_DAYS,
    LAZY_GROUPS,
    PACKS,
    FileEntry,
    NodeIndex,
    index_path,
    prune,
    stamp,
)
from engine.runtime.pack_evidence import Evidence
from engine.runtime.pack_links import Misses, named_packs, provided_now, registered_modules

log = logging.getLogger(__name__)


class PackRecorder(Protocol):
    """Takes what a pack's import changed, and replays a deferred pack's (pack_evidence)."""

    def take(self) -> Any:
        """A snapshot, just before or after one pack's import."""
        ...

    def compare(self, before: Any, after: Any) -> Evidence:
        """What the import between two snapshots changed."""
        ...

    def replay(self, evidence: Evidence) -> bool:
        """Make a deferred pack's recorded folder and environment changes; False (nothing
        changed) when they cannot be replayed exactly here: the pack loads at boot."""
        ...


class LazyNodes(FirstUseImports):
    """Owns the index and the two lazy mappings of one ComfyUI ``nodes`` module.

    Use: :meth:`install` before ComfyUI's ``init_extra_nodes`` runs, inside
    :meth:`booting`; then :meth:`save` writes the index if it changed.
    """

    def __init__(
        self,
        nodes: Any,
        index: NodeIndex | None,
        key: str,
        *,
        eager_groups: Sequence[str] = (),
        packs: PackRecorder | None = None,
        evidence_from: NodeIndex | None = None,
        environment: str = "",
    ) -> None:
        super().__init__(nodes, NodeIndex(key=key, environment=environment))
        self._old = index if index is not None and index.key == key else None
        self._packs = packs
        """Set: custom node packs may load lazily, on their evidence (None: all at boot)."""
        same_environment = evidence_from is not None and evidence_from.environment == environment
        self._donor = evidence_from if self._old is None and same_environment else None
        """An index made for another set of packs (the image's, where a network volume
        adds packs): a pack it knows, unchanged, keeps its evidence without a snapshot.
        Only the evidence: with another set of packs nothing is deferred this boot. Not
        one made in another environment (``environment``, node_index.environment_key): a
        dependency installed or removed since may change what a pack's import does."""
        self._eager_groups = frozenset(eager_groups)
        self.deferred: list[str] = []
        """Files registered by name at boot instead of imported."""
        self._indexed_now: set[str] = set()
        """Packs whose entry this boot made (their evidence taken or borrowed)."""
        self._misses: dict[str, tuple[str, ...]] = {}
        """Pack -> the modules its import looked for in vain (``pack_links.Misses``)."""
        self._registered: dict[str, tuple[str, ...]] = {}
        """Pack -> the modules its import put into ``sys.modules`` that nothing else
        provides (``pack_links.registered_modules``)."""
        self._last_state: Any = None
        """The snapshot after the pack just imported with evidence: the next one's
        "before", as ComfyUI does nothing between two packs but time them (a snapshot
        walks ~1600 modules, ~0.12 s)."""

    # -- boot -------------------------------------------------------------------------

    def install(self) -> None:
        """Replace ComfyUI's two node mappings with lazy ones holding the same entries."""
        nodes = self._nodes
        for attr in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
            current = getattr(nodes, attr)
            if not isinstance(current, LazyMapping):
                setattr(nodes, attr, LazyMapping(dict(current), self))

    @contextmanager
    def booting(self) -> Iterator[None]:
        """While ComfyUI's ``init_extra_nodes`` runs: index or defer its own node files.

        ComfyUI calls ``nodes.load_custom_node`` for each node file; for the duration,
        that name answers with :meth:`_boot_load`.
        """
        self.install()
        original: LoadCustomNode = self._nodes.load_custom_node
        self._load = original
        self.names_only = True

        async def load_custom_node(
            module_path: str, ignore: Any = frozenset(), module_parent: str = "custom_nodes"
        ) -> bool:
            return await self._boot_load(original, module_path, ignore, module_parent)

        self._nodes.load_custom_node = load_custom_node
        try:
            yield
        finally:
            self._nodes.load_custom_node = original
            self.names_only = False
            self._mark_shared_names()
            self._mark_linked_packs()

    async def _boot_load(
        self, original: LoadCustomNode, path: str, ignore: Any, group: str
    ) -> bool:
        last_state, self._last_state = self._last_state, None
        if group not in LAZY_GROUPS and group != PACKS:
            return await original(path, ignore, module_parent=group)
        known = self._old.files.get(path) if self._old else None
        if known is not None and (known.group != group or not known.matches(path)):
            known = None
        if group == PACKS and self._packs is None:
            # Lazy packs off: loaded as ComfyUI does; their entries kept for a later boot.
            if known is not None:
                self._new.files[path] = known
            return await original(path, ignore, module_parent=group)
        if known is not None and known.lazy and group not in self._eager_groups:
            if group == PACKS and not self._defer_pack(original, path, ignore, known):
                return await original(path, ignore, module_parent=group)
            self._new.files[path] = known
            if known.names:
                for name in known.names:
                    self._pending[name] = path
            else:
                self._preludes.setdefault(group, []).append(path)
            self.deferred.append(path)
            return True
        # Imported now, as ComfyUI would; what it adds goes into the index. A pack's
        # evidence is taken only where the index has none for it (index-making boots).
        donor = self._donor.files.get(path) if self._donor and known is None else None
        if donor is not None and (donor.group != group or not donor.matches(path)):
            donor = None
        watch = self._packs if group == PACKS and known is None and donor is None else None
        before_state = None
        if watch is not None:
            before_state = last_state if last_state is not None else watch.take()
        classes = self._nodes.NODE_CLASS_MAPPINGS
        before = {k: id(v) for k, v in dict.items(classes)}
        if watch is not None:
            present = set(sys.modules)
            with Misses() as misses:
                ok = await original(path, ignore, module_parent=group)
            self._misses[path] = misses.names
            self._registered[path] = registered_modules(present)
        else:
            ok = await original(path, ignore, module_parent=group)
        added = tuple(k for k, v in dict.items(classes) if before.get(k) != id(v))
        overrides = any(k in before for k in added)
        stamped = stamp(path)
        if stamped is None:
            return ok
        recorded = known if known is not None else donor
        evidence = recorded.evidence if recorded is not None else Evidence()
        if watch is not None:
            self._last_state = watch.take()
            evidence = watch.compare(before_state, self._last_state)
        self._new.files[path] = FileEntry(
            group=group,
            size=stamped[0],
            mtime_ns=stamped[1],
            names=added,
            # A file that failed is imported at every boot, so its warning shows each time.
            lazy=bool(ok)
            and not overrides
            and (group != PACKS or (bool(added) and not evidence.eager_because)),
            evidence=evidence,
        )
        if group == PACKS:
            self._indexed_now.add(path)
        if group == PACKS and evidence.eager_because:
            why = "; ".join(evidence.eager_because)
            # The recorder's reasons say what the import did; pack_links' say it whole.
            why = why if why.startswith("its ") else f"its import {why}"
            log.info("custom node pack %s loads at boot: %s", Path(path).name, why)
        return ok

    def _defer_pack(self, load: LoadCustomNode, path: str, ignore: Any, entry: FileEntry) -> bool:
        """Register a pack for later instead of importing it; False: import it now."""
        claim = getattr(load, "claim", None)
        if claim is not None and claim(path) is not None:
            return False  # skipped on purpose (pack_imports says why when it is called)
        assert self._packs is not None
        if not self._packs.replay(entry.evidence):
            log.info(
                "custom node pack %s loads at boot: the environment differs from the one its "
                "import changed when the node index was made",
                Path(path).name,
            )
            return False
        self._ignore[path] = frozenset(ignore or ())
        return True

    def _mark_shared_names(self) -> None:
        """Files whose node types another file also defines load eagerly from now on."""
        owners: dict[str, list[str]] = {}
        for path, entry in self._new.files.items():
            for name in entry.names:
                owners.setdefault(name, []).append(path)
        shared = {p for paths in owners.values() if len(paths) > 1 for p in paths}
        for path in shared:
            entry = self._new.files[path]
            if entry.lazy:
                self._new.files[path] = FileEntry(
                    entry.group, entry.size, entry.mtime_ns, entry.names, lazy=False
                )
        if shared & set(self.deferred):
            # Cannot happen with an index this code wrote; load them now to stay exact.
            for path in sorted(shared & set(self.deferred)):
                self._load_file(path)

    def _mark_linked_packs(self) -> None:
        """Packs that reach another pack's modules their own way load at boot from now on
        (:mod:`engine.runtime.pack_links`): one whose module another pack's code names, and
        one whose import looked for a module that a pack loaded after it provides. Decided
        on a boot that indexes a pack; an index read whole keeps its marks."""
        if self._packs is None or not self._indexed_now:
            return
        packs: dict[str, Path] = {}
        for path, indexed in self._new.files.items():
            if indexed.group == PACKS:  # the first folder of a name loads (pack_imports)
                packs.setdefault(_module_name(path), Path(path))
        registered = {_module_name(p): names for p, names in self._registered.items() if names}
        reasons: dict[str, str] = {}
        for target, referrer in named_packs(packs, registered).items():
            reasons[str(packs[target])] = f"its module is looked up by name in {referrer}'s code"
        for path, names in self._misses.items():
            found = provided_now(names)
            if found is not None and path not in reasons:
                reasons[path] = (
                    f"its import looked for module {found}, which a pack loaded after it provides"
                )
        for path, why in reasons.items():
            entry = self._new.files.get(path)
            if entry is None or not entry.lazy:
                continue
            self._new.files[path] = FileEntry(
                entry.group,
                entry.size,
                entry.mtime_ns,
                entry.names,
                lazy=False,
                evidence=Evidence(entry.evidence.folders, entry.evidence.environ, (why,)),
            )
            log.info("custom node pack %s loads at boot: %s", Path(path).name, why)
            if any(self._pending.get(n) == path for n in entry.names):
                # Deferred on an older index: loaded now, to stay exact.
                self.deferred.remove(path)
                self._load_file(path)

    def save(self, folder: Path) -> Path | None:
        """Write the index into ``folder`` if it differs from the one read, then prune the
        folder (:func:`~engine.runtime.node_index.prune`); the path written."""
        if self._old is not None and self._old.files == self._new.files:
            return None
        path = index_path(folder, self._new.key)
        try:
            self._new.write(path)
        except OSError as exc:
            log.warning("could not write the node index %s: %s", path, exc)
            return None
        # Only a write adds a file, so only a write prunes: the folder stays bounded, and
        # a boot that read its index pays nothing but mark_used's stat.
        removed = prune(folder, path)
        if removed:
            log.info(
                "node index: removed %d file(s) unused for %d days or beyond the newest %d",
                len(removed),
                KEEP_UNUSED_DAYS,
                KEEP_AT_MOST,
            )
        return path

    def deferred_packs(self) -> list[str]:
        """Custom node packs registered by name at boot instead of imported."""
        return [p for p in self.deferred if self._new.files[p].group == PACKS]


def _module_name(path: str) -> str:
    """A pack's folder name (a one-file pack: the file's name without ``.py``)."""
    name = Path(path).name
    return name[:-3] if name.endswith(".py") else name
