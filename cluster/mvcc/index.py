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
from collections.abc import Iterable, Iterator

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
    """One key's generations (etcd's keyIndex), stored compactly.

    An index holds one of these per key, so their size is most of the
    store's memory (a million keys put once: about 260 MB with the keys and
    the sorted dict this way, against 490 MB with a list of ``Generation``
    objects each holding a list of revisions), and their count is what every
    full pass of Python's cyclic garbage collector walks (a key put once is
    two tracked objects here, this and its ``Revision``, against five). So the
    open generation lives in the key's own slots, its revisions as one
    ``Revision`` or, from the second on, a list; only the generations ended
    by a tombstone, rare, are ``Generation`` objects. ``generations`` shows
    them all as ``Generation`` objects, as the etcd code this follows.
    """

    __slots__ = ("_closed", "_created", "_revs", "_ver", "key", "modified")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified = _ZERO  # the last revision put or tombstoned; _ZERO: none yet
        # The open generation: its created revision, version and revisions
        # (None while the key is deleted, one Revision, or a list of two or more).
        self._created = _ZERO
        self._ver = 0
        self._revs: Revision | list[Revision] | None = None
        self._closed: list[Generation] | None = None  # generations ended by a tombstone

    @property
    def generations(self) -> list[Generation]:
        """Every generation, oldest first, the open one last; empty for a key never put.

        A new list, and the open generation a new ``Generation``; the closed ones
        are the index's own (``compact`` trims them in place)."""
        if self.modified == _ZERO and not self._closed:
            return []
        return [*(self._closed or ()), Generation(self._ver, self._created, self._open_revs())]

    def _open_revs(self) -> list[Revision]:
        revs = self._revs
        if revs is None:
            return []
        return list(revs) if isinstance(revs, list) else [revs]

    def _set_generations(self, gens: list[Generation]) -> None:
        """Store ``gens`` (the last one the open generation) in the compact form."""
        *closed, g = gens
        self._closed = closed or None
        self._created, self._ver = g.created, g.ver
        revs = g.revs
        self._revs = None if not revs else revs[0] if len(revs) == 1 else revs

    def put(self, rev: Revision) -> None:
        if not rev > self.modified:
            raise ValueError(f"mvcc: put {rev!r} of {self.key!r} is not after {self.modified!r}")
        revs = self._revs
        if revs is None:  # (re)created
            self._created, self._ver, self._revs = rev, 1, rev
        else:
            if isinstance(revs, list):
                revs.append(rev)
            else:
                self._revs = [revs, rev]
            self._ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Start a fresh key from its oldest surviving stored revision."""
        if self.modified != _ZERO or self._closed:
            raise ValueError(f"mvcc: restore of {self.key!r} with generations")
        self.modified = modified
        self._created, self._ver, self._revs = created, ver, modified

    def restore_tombstone(self, rev: Revision) -> None:
        """Start a fresh key from a tombstone: a closed generation of its own."""
        self.restore(_ZERO, rev, 1)
        self._close()

    def _close(self) -> None:
        """End the open generation (its last revision is a tombstone); open an empty one."""
        closed = Generation(self._ver, self._created, self._open_revs())
        if self._closed is None:
            self._closed = [closed]
        else:
            self._closed.append(closed)
        self._created, self._ver, self._revs = _ZERO, 0, None

    def tombstone(self, rev: Revision) -> bool:
        """End the open generation at ``rev``; False if the key is not live."""
        if self.is_empty():
            raise ValueError(f"mvcc: tombstone of empty key index {self.key!r}")
        if self._revs is None:
            return False
        self.put(rev)
        self._close()
        return True

    def is_empty(self) -> bool:
        """Nothing but an empty generation (what compaction leaves of a deleted key)."""
        return self._revs is None and not self._closed and self.modified != _ZERO

    def get(self, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of ``at_rev``; None if absent."""
        revs = self._revs
        if revs is not None:
            if isinstance(revs, list):
                if revs[0].main <= at_rev:
                    n = bisect_right(revs, Revision(at_rev, MAX_REV)) - 1
                    return revs[n], self._created, self._ver - (len(revs) - n - 1)
            elif revs.main <= at_rev:
                return revs, self._created, self._ver
        closed = self._closed
        if closed:
            for g in reversed(closed):  # the newest first
                grevs = g.revs
                if not grevs:
                    continue
                if grevs[-1].main <= at_rev:  # tombstoned by then
                    return None
                if grevs[0].main <= at_rev:
                    n = g.last_at_or_before(at_rev)
                    return grevs[n], g.created, g.ver - (len(grevs) - n - 1)
        return None

    @staticmethod
    def _do_compact(
        gens: list[Generation], at_rev: int, available: set[Revision]
    ) -> tuple[int, int]:
        """Skip generations tombstoned before ``at_rev``; note the revision live at it."""
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
        revs = self._revs
        if not self._closed and revs is not None:  # the usual case: one live generation
            if not isinstance(revs, list):
                if revs.main <= at_rev:
                    available.add(revs)
                return
            n = bisect_right(revs, Revision(at_rev, MAX_REV)) - 1
            if n >= 0:
                available.add(revs[n])
                if n:
                    self._revs = revs[n] if n == len(revs) - 1 else revs[n:]
            return
        gens = self.generations
        i, n = self._do_compact(gens, at_rev, available)
        g = gens[i]
        if g.revs and n != -1:
            g.revs = g.revs[n:]
        self._set_generations(gens[i:])

    def keep(self, at_rev: int, available: set[Revision]) -> None:
        """What ``compact(at_rev)`` would keep, less a tombstone at ``at_rev`` (for hashing)."""
        if self.is_empty():
            return
        gens = self.generations
        i, n = self._do_compact(gens, at_rev, available)
        g = gens[i]
        if g.revs and n == len(g.revs) - 1 and i != len(gens) - 1:
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
        if ki is None:
            self._tree[key] = _restored(key, rev, tombstone, create_revision, version)
        elif tombstone:
            ki.tombstone(rev)
        else:
            ki.put(rev)

    def restore_all(self, records: Iterable[tuple[bytes, Revision, bool, int, int]]) -> None:
        """``restore`` each ``(key, rev, tombstone, create_revision, version)``, in order.

        Into an empty index (a restart), the keys go into a plain dict and are
        sorted once at the end, instead of kept in order insert by insert: for
        a million keys that is seconds less.
        """
        if self._tree:
            for record in records:
                self.restore(*record)
            return
        found: dict[bytes, KeyIndex] = {}
        get = found.get
        for key, rev, tombstone, create_revision, version in records:
            ki = get(key)
            if ki is None:
                found[key] = _restored(key, rev, tombstone, create_revision, version)
            elif tombstone:
                ki.tombstone(rev)
            else:
                ki.put(rev)
        self._tree = SortedDict(found)

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


def _restored(
    key: bytes, rev: Revision, tombstone: bool, create_revision: int, version: int
) -> KeyIndex:
    """A key's index from its oldest surviving stored revision (see ``TreeIndex.restore``)."""
    ki = KeyIndex(key)
    if tombstone:
        ki.restore_tombstone(rev)
    elif rev.main == create_revision:
        # The record is the generation's creation itself (a key is written at most
        # once per revision): its revision is the created one, sub-revision included,
        # as in a live index, and one object serves both.
        ki.restore(rev, rev, version)
    else:
        ki.restore(Revision(create_revision, 0), rev, version)
    return ki
