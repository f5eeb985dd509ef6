"""The in-memory key index: each key's revisions, in generations (etcd's treeIndex).

A key's life is a list of generations. A generation starts with the put that
(re)creates the key and ends with its tombstone; the last generation is the
open one, empty while the key is deleted. For example, put at 1.0, put at
2.0, delete at 3.0, put at 4.0 give ``{created 1.0, ver 3, revs [1.0, 2.0,
3.0]}, {created 4.0, ver 1, revs [4.0]}`` (the tombstone counts as a revision
of its generation, as in etcd).

``ver`` counts the puts and tombstone ever made in a generation and is not
lowered when compaction drops revisions, so the version at a revision stays
``ver - (revisions after it in the generation)``.

``end`` arguments follow etcd's treeIndex: ``None`` is the single key ``key``,
``b""`` every key >= ``key``, otherwise ``[key, end)`` in byte order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from .revision import MAX_REV, Revision

_ZERO = Revision(0, 0)


class Generation:
    __slots__ = ("created", "revs", "ver")

    def __init__(
        self, ver: int = 0, created: Revision = _ZERO, revs: list[Revision] | None = None
    ) -> None:
        self.ver = ver
        self.created = created
        self.revs: list[Revision] = revs if revs is not None else []

    def is_empty(self) -> bool:
        return not self.revs

    def last_at_or_before(self, at_rev: int) -> int:
        """Position of the last revision with main <= ``at_rev``; -1 if none."""
        return bisect_right(self.revs, Revision(at_rev, MAX_REV)) - 1

    def __repr__(self) -> str:
        return f"Generation(ver={self.ver}, created={self.created!r}, revs={self.revs!r})"


class KeyIndex:
    """One key's generations (etcd's keyIndex)."""

    __slots__ = ("generations", "key", "modified")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified = _ZERO  # the last revision put or tombstoned
        self.generations: list[Generation] = []

    def put(self, rev: Revision) -> None:
        if not rev > self.modified:
            raise ValueError(f"mvcc: put {rev!r} of {self.key!r} is not after {self.modified!r}")
        if not self.generations:
            self.generations.append(Generation())
        g = self.generations[-1]
        if not g.revs:  # (re)created
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Start a fresh key from its oldest surviving stored revision."""
        if self.generations:
            raise ValueError(f"mvcc: restore of {self.key!r} with generations")
        self.modified = modified
        self.generations.append(Generation(ver, created, [modified]))

    def tombstone(self, rev: Revision) -> bool:
        """End the open generation at ``rev``; False if the key is not live."""
        if self.is_empty():
            raise ValueError(f"mvcc: tombstone of empty key index {self.key!r}")
        if self.generations[-1].is_empty():
            return False
        self.put(rev)
        self.generations.append(Generation())
        return True

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and self.generations[0].is_empty()

    def _find_generation(self, at_rev: int) -> Generation | None:
        """The generation live at ``at_rev``; None if the key did not exist then."""
        gens = self.generations
        last = len(gens) - 1
        for i in range(last, -1, -1):
            g = gens[i]
            if not g.revs:
                continue
            if i != last and g.revs[-1].main <= at_rev:  # tombstoned by then
                return None
            if g.revs[0].main <= at_rev:
                return g
        return None

    def get(self, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of ``at_rev``; None if absent."""
        g = self._find_generation(at_rev)
        if g is None:
            return None
        n = g.last_at_or_before(at_rev)
        if n < 0:
            return None
        return g.revs[n], g.created, g.ver - (len(g.revs) - n - 1)

    def _do_compact(self, at_rev: int, available: set[Revision]) -> tuple[int, int]:
        """Skip generations tombstoned before ``at_rev``; note the revision live at it."""
        gens = self.generations
        i = 0
        while i < len(gens) - 1 and gens[i].revs[-1].main < at_rev:
            i += 1
        n = gens[i].last_at_or_before(at_rev)
        if n >= 0:
            available.add(gens[i].revs[n])
        return i, n

    def compact(self, at_rev: int, available: set[Revision]) -> None:
        """Drop what no read at or after ``at_rev`` needs; add what it does to ``available``.

        A tombstone exactly at ``at_rev`` is kept (with its generation) until
        a later compaction, as etcd does.
        """
        if self.is_empty():
            raise ValueError(f"mvcc: compact of empty key index {self.key!r}")
        i, n = self._do_compact(at_rev, available)
        g = self.generations[i]
        if g.revs and n != -1:
            g.revs = g.revs[n:]
        self.generations = self.generations[i:]

    def keep(self, at_rev: int, available: set[Revision]) -> None:
        """What ``compact(at_rev)`` would keep, less a tombstone at ``at_rev`` (for hashing)."""
        if self.is_empty():
            return
        i, n = self._do_compact(at_rev, available)
        g = self.generations[i]
        if g.revs and n == len(g.revs) - 1 and i != len(self.generations) - 1:
            available.discard(g.revs[n])

    def __repr__(self) -> str:
        return f"KeyIndex({self.key!r}, modified={self.modified!r}, {self.generations!r})"


class TreeIndex:
    """Every key's KeyIndex in byte order."""

    def __init__(self) -> None:
        self._tree: SortedDict = SortedDict()

    def __len__(self) -> int:
        return len(self._tree)

    def key_index(self, key: bytes) -> KeyIndex | None:
        ki: KeyIndex | None = self._tree.get(key)
        return ki

    def put(self, key: bytes, rev: Revision) -> None:
        ki = self._tree.get(key)
        if ki is None:
            ki = self._tree[key] = KeyIndex(key)
        ki.put(rev)

    def tombstone(self, key: bytes, rev: Revision) -> bool:
        """Delete ``key`` at ``rev``; False if it is not live."""
        ki: KeyIndex | None = self._tree.get(key)
        if ki is None:
            return False
        return ki.tombstone(rev)

    def restore(
        self, key: bytes, rev: Revision, tombstone: bool, create_revision: int, version: int
    ) -> None:
        """Replay one stored revision, in revision order, when rebuilding from the backend.

        The first surviving revision of a key carries its generation's created
        revision and version. A tombstone can be a key's first: compaction
        keeps a tombstone at exactly its revision and drops the puts before
        it; it is restored as a closed generation of its own, as a live index
        holds it (etcd's restoreTombstone).
        """
        ki: KeyIndex | None = self._tree.get(key)
        if ki is not None:
            if tombstone:
                ki.tombstone(rev)
            else:
                ki.put(rev)
            return
        ki = self._tree[key] = KeyIndex(key)
        if tombstone:
            ki.restore(_ZERO, rev, 1)
            ki.generations.append(Generation())
        else:
            ki.restore(Revision(create_revision, 0), rev, version)

    def get(self, key: bytes, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of ``key`` as of ``at_rev``; None if absent."""
        ki: KeyIndex | None = self._tree.get(key)
        return None if ki is None else ki.get(at_rev)

    def _visit(self, key: bytes, end: bytes) -> Iterator[KeyIndex]:
        tree = self._tree
        for k in tree.irange(key, end or None, inclusive=(True, False)):
            yield tree[k]

    def range(self, key: bytes, end: bytes | None, at_rev: int) -> list[tuple[bytes, Revision]]:
        """(key, modified revision) of every key live at ``at_rev``, in byte order."""
        if end is None:
            got = self.get(key, at_rev)
            return [] if got is None else [(key, got[0])]
        out: list[tuple[bytes, Revision]] = []
        for ki in self._visit(key, end):
            got = ki.get(at_rev)
            if got is not None:
                out.append((ki.key, got[0]))
        return out

    def revisions(
        self, key: bytes, end: bytes | None, at_rev: int, limit: int = 0
    ) -> tuple[list[Revision], int]:
        """Modified revisions of the first ``limit`` keys (all if <= 0) and the total count."""
        if end is None:
            got = self.get(key, at_rev)
            return ([], 0) if got is None else ([got[0]], 1)
        revs: list[Revision] = []
        total = 0
        for ki in self._visit(key, end):
            got = ki.get(at_rev)
            if got is not None:
                if limit <= 0 or len(revs) < limit:
                    revs.append(got[0])
                total += 1
        return revs, total

    def count_revisions(self, key: bytes, end: bytes | None, at_rev: int) -> int:
        if end is None:
            return 0 if self.get(key, at_rev) is None else 1
        return sum(1 for ki in self._visit(key, end) if ki.get(at_rev) is not None)

    def compact(self, rev: int) -> set[Revision]:
        """Forget what reads at or after ``rev`` cannot see; the revisions they can."""
        available: set[Revision] = set()
        empty: list[bytes] = []
        for key, ki in self._tree.items():
            ki.compact(rev, available)
            if ki.is_empty():
                empty.append(key)
        for key in empty:
            del self._tree[key]
        return available

    def keep(self, rev: int) -> set[Revision]:
        """The revisions ``compact(rev)`` would keep, without changing anything."""
        available: set[Revision] = set()
        for ki in self._tree.values():
            ki.keep(rev, available)
        return available
