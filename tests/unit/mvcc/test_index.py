"""The key index: generations, reads at a revision, compaction (etcd's key_index_test cases)."""

from __future__ import annotations

import copy

import pytest

from cluster.mvcc import KeyIndex, Revision, TreeIndex

R = Revision


def sample() -> KeyIndex:
    """put 2, put 4, del 6, put 8, put 10, del 12, put 14, put 15.1, del 16."""
    ki = KeyIndex(b"foo")
    ki.put(R(2))
    ki.put(R(4))
    assert ki.tombstone(R(6))
    ki.put(R(8))
    ki.put(R(10))
    assert ki.tombstone(R(12))
    ki.put(R(14))
    ki.put(R(15, 1))
    assert ki.tombstone(R(16))
    return ki


def shape(ki: KeyIndex) -> list[tuple[int, int, list[Revision]]]:
    return [(g.created.main, g.ver, list(g.revs)) for g in ki.generations]


def test_put_and_tombstone_make_generations() -> None:
    ki = KeyIndex(b"foo")
    ki.put(R(5))
    ki.put(R(7))
    assert shape(ki) == [(5, 2, [R(5), R(7)])]
    assert ki.tombstone(R(9))
    assert shape(ki) == [(5, 3, [R(5), R(7), R(9)]), (0, 0, [])]
    assert not ki.tombstone(R(10))  # not live: nothing to delete
    ki.put(R(11))
    assert shape(ki)[-1] == (11, 1, [R(11)])
    assert ki.modified == R(11)
    with pytest.raises(ValueError):
        ki.put(R(11))  # revisions only move forward


def test_get_across_generations() -> None:
    ki = sample()
    ki.compact(4, set())
    want = {
        17: None,
        16: None,
        15: (R(15, 1), R(14), 2),
        14: (R(14), R(14), 1),
        13: None,
        12: None,
        11: (R(10), R(8), 2),
        10: (R(10), R(8), 2),
        9: (R(8), R(8), 1),
        8: (R(8), R(8), 1),
        7: None,
        6: None,
        5: (R(4), R(2), 2),  # version survives the compaction of revision 2
        4: (R(4), R(2), 2),
        3: None,  # compacted away
        2: None,
        1: None,
        0: None,
    }
    for rev, expected in want.items():
        assert ki.get(rev) == expected, rev


T15 = R(15, 1)
COMPACTIONS: list[tuple[int, list[tuple[int, int, list[Revision]]], set[Revision]]] = [
    (
        1,
        [
            (2, 3, [R(2), R(4), R(6)]),
            (8, 3, [R(8), R(10), R(12)]),
            (14, 3, [R(14), T15, R(16)]),
            (0, 0, []),
        ],
        set(),
    ),
    (
        2,
        [
            (2, 3, [R(2), R(4), R(6)]),
            (8, 3, [R(8), R(10), R(12)]),
            (14, 3, [R(14), T15, R(16)]),
            (0, 0, []),
        ],
        {R(2)},
    ),
    (
        3,
        [
            (2, 3, [R(2), R(4), R(6)]),
            (8, 3, [R(8), R(10), R(12)]),
            (14, 3, [R(14), T15, R(16)]),
            (0, 0, []),
        ],
        {R(2)},
    ),
    (
        4,
        [
            (2, 3, [R(4), R(6)]),
            (8, 3, [R(8), R(10), R(12)]),
            (14, 3, [R(14), T15, R(16)]),
            (0, 0, []),
        ],
        {R(4)},
    ),
    (
        5,
        [
            (2, 3, [R(4), R(6)]),
            (8, 3, [R(8), R(10), R(12)]),
            (14, 3, [R(14), T15, R(16)]),
            (0, 0, []),
        ],
        {R(4)},
    ),
    (
        6,
        [(2, 3, [R(6)]), (8, 3, [R(8), R(10), R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])],
        {R(6)},
    ),
    (7, [(8, 3, [R(8), R(10), R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])], set()),
    (8, [(8, 3, [R(8), R(10), R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])], {R(8)}),
    (9, [(8, 3, [R(8), R(10), R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])], {R(8)}),
    (10, [(8, 3, [R(10), R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])], {R(10)}),
    (11, [(8, 3, [R(10), R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])], {R(10)}),
    (12, [(8, 3, [R(12)]), (14, 3, [R(14), T15, R(16)]), (0, 0, [])], {R(12)}),
    (13, [(14, 3, [R(14), T15, R(16)]), (0, 0, [])], set()),
    (14, [(14, 3, [R(14), T15, R(16)]), (0, 0, [])], {R(14)}),
    (15, [(14, 3, [T15, R(16)]), (0, 0, [])], {T15}),
    (16, [(14, 3, [R(16)]), (0, 0, [])], {R(16)}),
    (17, [(0, 0, [])], set()),
]
TOMBSTONES = {6, 12, 16}


def test_compact_and_keep_step_by_step() -> None:
    ki = sample()
    for rev, want_shape, want_available in COMPACTIONS:
        before = shape(ki)
        kept: set[Revision] = set()
        ki.keep(rev, kept)
        assert shape(ki) == before  # keep changes nothing
        # keep leaves out a tombstone at the revision; compact keeps it
        assert kept == (set() if rev in TOMBSTONES else want_available), rev
        available: set[Revision] = set()
        ki.compact(rev, available)
        assert shape(ki) == want_shape, rev
        assert available == want_available, rev


def test_compact_once_from_scratch() -> None:
    for rev, want_shape, want_available in COMPACTIONS:
        ki = sample()
        available: set[Revision] = set()
        ki.compact(rev, available)
        assert (shape(ki), available) == (want_shape, want_available), rev


def tree(*ops: tuple[str, bytes, Revision]) -> TreeIndex:
    ti = TreeIndex()
    for op, key, rev in ops:
        if op == "put":
            ti.put(key, rev)
        else:
            assert ti.tombstone(key, rev)
    return ti


def test_tree_range_revisions_and_count() -> None:
    ti = tree(
        ("put", b"a", R(2)),
        ("put", b"b", R(3)),
        ("put", b"c", R(4)),
        ("del", b"b", R(5)),
        ("put", b"ab", R(6, 0)),
        ("put", b"a", R(6, 1)),
    )
    assert ti.range(b"a", b"c", 6) == [(b"a", R(6, 1)), (b"ab", R(6, 0))]
    assert ti.range(b"a", b"c", 4) == [(b"a", R(2)), (b"b", R(3))]
    assert ti.range(b"a", b"", 4) == [(b"a", R(2)), (b"b", R(3)), (b"c", R(4))]  # to the end
    assert ti.range(b"b", None, 4) == [(b"b", R(3))]
    assert ti.range(b"b", None, 5) == []
    assert ti.range(b"c", b"a", 6) == []  # end before start: nothing
    assert ti.revisions(b"a", b"", 6, limit=2) == ([R(6, 1), R(6, 0)], 3)
    assert ti.revisions(b"zz", None, 6) == ([], 0)
    assert ti.count_revisions(b"a", b"", 6) == 3
    assert ti.count_revisions(b"a", b"", 1) == 0
    assert ti.get(b"a", 5) == (R(2), R(2), 1)
    assert ti.get(b"a", 6) == (R(6, 1), R(2), 2)
    assert not ti.tombstone(b"nope", R(7))


def test_tree_compact_drops_dead_keys_and_keep_changes_nothing() -> None:
    ti = tree(("put", b"a", R(2)), ("del", b"a", R(3)), ("put", b"b", R(4)), ("put", b"b", R(5)))
    snapshot = copy.deepcopy(ti)
    assert ti.keep(4) == {R(4)}
    assert ti.compact(3) == {R(3)}  # a's tombstone at 3 stays; b has nothing at or before 3
    assert len(ti) == 2
    assert ti.compact(4) == {R(4)}
    assert len(ti) == 1 and ti.key_index(b"a") is None
    assert snapshot.keep(5) == {R(5)}
    assert len(snapshot) == 2


def test_restore_replays_stored_revisions() -> None:
    ti = TreeIndex()
    # as left by compact(10): a's put at 7 (created 3, version 2), b's tombstone at 10
    ti.restore(b"a", R(7), False, 3, 2)
    ti.restore(b"b", R(10), True, 0, 0)
    ti.restore(b"a", R(11), False, 3, 3)
    ti.restore(b"b", R(12), False, 12, 1)
    ti.restore(b"a", R(13), True, 0, 0)
    assert ti.get(b"a", 11) == (R(11), R(3), 3)
    assert ti.get(b"a", 7) == (R(7), R(3), 2)
    assert ti.get(b"a", 13) is None
    assert ti.get(b"b", 10) is None and ti.get(b"b", 11) is None
    assert ti.get(b"b", 12) == (R(12), R(12), 1)
    # the lone tombstone is a closed generation of its own, dropped by a later compaction
    assert ti.compact(10) == {R(7), R(10)}
    assert ti.compact(11) == {R(11)}
    assert shape(ti.key_index(b"b") or KeyIndex(b"")) == [(12, 1, [R(12)])]
