"""The checkers on hand-made histories: they must pass the linearizable ones and fail the rest.

Times are arbitrary units; revisions start at 2 (etcd's first write), as in a real run.
"""

from __future__ import annotations

import itertools

from tests.robustness import checker
from tests.robustness.history import (
    DELETE,
    FAIL,
    GET,
    KV,
    OK,
    PUT,
    RANGE,
    REVOKE,
    SGET,
    TXN,
    UNKNOWN,
    Op,
    Status,
)
from tests.robustness.proxy import Proxies
from tests.robustness.revisions import Event, FinalHistory, check_history, check_watch

_ids = itertools.count(1)


def put(
    t0: float,
    t1: float | None,
    value: str,
    rev: int | None = None,
    *,
    key: str = "k",
    status: Status = OK,
    prev: KV | bool | None = False,
    lease: int = 0,
    client: int = 0,
) -> Op:
    op = Op(next(_ids), client, "m0", PUT, t0, key=key, value=value, ret=t1, status=status,
            revision=rev, lease=lease)  # fmt: skip
    if prev is not False:
        op.prev_kv = op.has_prev = True
        op.prev = prev if isinstance(prev, KV) else None
    return op


def get(t0: float, t1: float, kv: KV | None, rev: int, *, key: str = "k", client: int = 1) -> Op:
    return Op(next(_ids), client, "m0", GET, t0, key=key, ret=t1, status=OK, revision=rev,
              kvs={key: kv})  # fmt: skip


def delete(
    t0: float, t1: float | None, deleted: int | None, rev: int | None, *, status: Status = OK
) -> Op:
    return Op(next(_ids), 0, "m0", DELETE, t0, key="k", ret=t1, status=status, revision=rev,
              deleted=deleted)  # fmt: skip


def txn(
    t0: float,
    t1: float | None,
    cmp_mod: int,
    value: str,
    succeeded: bool | None,
    rev: int | None,
    *,
    read: KV | None = None,
    status: Status = OK,
) -> Op:
    op = Op(next(_ids), 2, "m0", TXN, t0, key="k", value=value, cmp_mod=cmp_mod, ret=t1,
            status=status, revision=rev, succeeded=succeeded)  # fmt: skip
    if status == OK and not succeeded:
        op.kvs = {"k": read}
    return op


def kv(value: str, mod: int, create: int | None = None, version: int = 1, lease: int = 0) -> KV:
    return KV(value, mod, create if create is not None else mod, version, lease)


def lin(*ops: Op) -> bool | None:
    return checker.check(list(ops)).linearizable


# -- the linearizability checker ---------------------------------------------------------------


def test_sequential_puts_and_reads_are_linearizable() -> None:
    assert lin(
        put(0, 1, "a", 2),
        get(2, 3, kv("a", 2), 2),
        put(4, 5, "b", 3),
        get(6, 7, kv("b", 3, 2, 2), 3),
    )


def test_a_read_concurrent_with_a_put_may_see_either_value() -> None:
    before = [put(0, 1, "a", 2), put(2, 6, "b", 3)]
    assert lin(*before, get(3, 4, kv("a", 2), 2))
    assert lin(*before, get(3, 4, kv("b", 3, 2, 2), 3))


def test_a_stale_read_is_not_linearizable() -> None:
    result = checker.check([put(0, 1, "a", 2), put(2, 3, "b", 3), get(4, 5, kv("a", 2), 2)])
    assert result.linearizable is False
    assert "get k" in result.summary()


def test_a_read_of_a_value_never_written_is_not_linearizable() -> None:
    result = checker.check([put(0, 1, "a", 2), get(2, 3, kv("zz", 3, 2, 2), 3)])
    assert result.linearizable is False
    assert any("no client wrote" in p for p in result.problems)


def test_a_lost_write_is_not_linearizable() -> None:
    # b was acknowledged, yet a later read sees the key as if b never happened.
    assert lin(put(0, 1, "a", 2), put(2, 3, "b", 3), get(4, 5, kv("a", 2), 3)) is False
    # ... or sees a version that skips it.
    assert lin(put(0, 1, "a", 2), put(2, 3, "b", 3), put(4, 5, "c", 4),
               get(6, 7, kv("c", 4, 2, 2), 4)) is False  # fmt: skip


def test_reads_must_agree_with_each_other_in_real_time() -> None:
    # Two reads during a slow put: once one saw the new value, a later one may not see the old.
    w = put(0, 10, "b", 3)
    base = put(-2, -1, "a", 2)
    assert lin(base, w, get(1, 2, kv("a", 2), 2), get(3, 4, kv("b", 3, 2, 2), 3))
    assert lin(base, w, get(1, 2, kv("b", 3, 2, 2), 3), get(3, 4, kv("a", 2), 3)) is False


def test_an_unknown_write_may_have_happened() -> None:
    assert lin(put(0, None, "a", status=UNKNOWN), get(5, 6, kv("a", 3), 3))


def test_an_unknown_write_may_not_have_happened() -> None:
    assert lin(put(0, 1, "a", 2), put(2, None, "b", status=UNKNOWN), get(5, 6, kv("a", 2), 2))


def test_an_unknown_write_cannot_take_effect_before_it_was_invoked() -> None:
    assert lin(get(0, 1, kv("a", 3), 3), put(2, None, "a", status=UNKNOWN)) is False


def test_an_unknown_write_that_must_have_happened_once_cannot_be_undone() -> None:
    # Seen, then not seen: it happened (the first read), so the second read is stale.
    assert (
        lin(
            put(0, 1, "a", 2),
            put(2, None, "b", status=UNKNOWN),
            get(3, 4, kv("b", 3, 2, 2), 3),
            get(5, 6, kv("a", 2), 3),
        )
        is False
    )


def test_a_failed_write_must_not_take_effect() -> None:
    failed = put(2, 3, "b", status=FAIL)
    assert lin(put(0, 1, "a", 2), failed, get(4, 5, kv("b", 3, 2, 2), 3)) is False


def test_compare_and_set_on_mod_revision() -> None:
    a = put(0, 1, "a", 2)
    assert lin(a, txn(2, 3, 2, "b", True, 3), get(4, 5, kv("b", 3, 2, 2), 3))
    # The compare fails although the key was at revision 2: not linearizable.
    assert lin(a, txn(2, 3, 2, "b", False, 2, read=kv("a", 2))) is False
    # A CAS expecting absence (mod 0) on a present key must fail, and read what is there.
    assert lin(a, txn(2, 3, 0, "b", False, 2, read=kv("a", 2)))
    assert lin(a, txn(2, 3, 0, "b", True, 3)) is False


def test_two_concurrent_cas_on_one_revision_cannot_both_succeed() -> None:
    a = put(0, 1, "a", 2)
    assert lin(a, txn(2, 5, 2, "b", True, 3), txn(2, 5, 2, "c", True, 4)) is False
    assert lin(a, txn(2, 5, 2, "b", True, 3), txn(2, 5, 2, "c", False, 3, read=kv("b", 3, 2, 2)))


def test_deletes_report_what_they_deleted() -> None:
    a = put(0, 1, "a", 2)
    assert lin(a, delete(2, 3, 1, 3), get(4, 5, None, 3), delete(6, 7, 0, 3))
    assert lin(a, delete(2, 3, 0, 2)) is False
    assert lin(a, delete(2, 3, 1, 3), put(4, 5, "b", 4), get(6, 7, kv("b", 4, 4, 1), 4))
    # After a delete the version starts again at 1.
    assert lin(a, delete(2, 3, 1, 3), put(4, 5, "b", 4), get(6, 7, kv("b", 4, 4, 2), 4)) is False


def test_put_prev_kv_is_checked() -> None:
    a = put(0, 1, "a", 2)
    assert lin(a, put(2, 3, "b", 3, prev=kv("a", 2)))
    assert lin(a, put(2, 3, "b", 3, prev=None)) is False


def test_a_range_is_a_read_of_each_key() -> None:
    a = put(0, 1, "a", 2, key="x")
    b = put(2, 3, "b", 3, key="y")
    rng = Op(next(_ids), 3, "m0", RANGE, 4, ret=5, status=OK, revision=3,
             kvs={"x": kv("a", 2), "y": None})  # fmt: skip
    assert lin(a, b, rng) is False
    rng.kvs = {"x": kv("a", 2), "y": kv("b", 3)}
    assert lin(a, b, rng)


def test_a_revoke_deletes_the_keys_of_its_lease() -> None:
    a = put(0, 1, "a", 2, lease=7)
    b = put(0, 1, "b", 3, key="other")
    rev = Op(next(_ids), 0, "m0", REVOKE, 2, lease=7, ret=3, status=OK, revision=4)
    assert lin(a, b, rev, get(4, 5, None, 4), get(4, 5, kv("b", 3), 4, key="other"))
    assert lin(a, b, rev, get(4, 5, kv("a", 2, lease=7), 4)) is False
    # A put after the revoke re-creates the key without the lease.
    c = put(6, 7, "c", 5)
    assert lin(a, rev, c, get(8, 9, kv("c", 5), 5))


def test_a_value_seen_at_two_revisions_is_a_violation() -> None:
    result = checker.check([put(0, 1, "a", 2), get(2, 3, kv("a", 5), 5)])
    assert result.linearizable is False
    assert any("seen at revision" in p for p in result.problems)


def test_many_unknown_writes_stay_tractable() -> None:
    ops = [put(0, 1, "a", 2)]
    ops += [put(2 + i, None, f"u{i}", status=UNKNOWN) for i in range(12)]
    ops.append(get(20, 21, kv("a", 2), 2))
    result = checker.check(ops, budget=200_000)
    assert result.linearizable is True


# -- the revision and final-history checks ------------------------------------------------------


def put_event(rev: int, value: str, create: int, version: int, *, key: str = "k") -> Event:
    return Event(rev, "PUT", key, KV(value, rev, create, version))


def test_acknowledged_writes_must_be_in_the_final_history() -> None:
    ops = [put(0, 1, "a", 2), put(2, 3, "b", 3)]
    final = FinalHistory([put_event(2, "a", 2, 1), put_event(3, "b", 2, 2)], 3)
    assert check_history(ops, final, keys=["k"]).ok
    lost = check_history(ops, FinalHistory([put_event(2, "a", 2, 1)], 3), keys=["k"])
    assert lost.lost == 1
    assert not lost.ok


def test_two_acknowledged_writes_with_one_revision_are_a_violation() -> None:
    ops = [put(0, 1, "a", 2), put(0, 1, "b", 2, key="j")]
    final = FinalHistory([put_event(2, "a", 2, 1)], 2)
    report = check_history(ops, final, keys=["k", "j"])
    assert any("revision 2" in v for v in report.violations)


def test_revisions_must_grow_in_real_time() -> None:
    ops = [put(0, 1, "a", 3), put(2, 3, "b", 2, key="j")]
    final = FinalHistory([put_event(2, "b", 2, 1, key="j"), put_event(3, "a", 3, 1)], 3)
    report = check_history(ops, final, keys=["k", "j"])
    assert any("real time" in v for v in report.violations)


def test_a_read_must_match_the_final_history_at_its_revision() -> None:
    ops = [put(0, 1, "a", 2), put(2, 3, "b", 3), get(4, 5, kv("a", 2), 3)]
    final = FinalHistory([put_event(2, "a", 2, 1), put_event(3, "b", 2, 2)], 3)
    report = check_history(ops, final, keys=["k"])
    assert any("at revision 3" in v for v in report.violations)


def test_a_write_nobody_made_is_a_violation() -> None:
    final = FinalHistory([put_event(2, "ghost", 2, 1)], 2)
    report = check_history([], final, keys=["k"])
    assert any("ghost" in v for v in report.violations)


def test_an_unknown_write_may_appear_once() -> None:
    ops = [put(0, None, "a", status=UNKNOWN)]
    assert check_history(ops, FinalHistory([put_event(2, "a", 2, 1)], 2), keys=["k"]).ok
    assert check_history(ops, FinalHistory([], 1), keys=["k"]).ok
    twice = FinalHistory([put_event(2, "a", 2, 1), put_event(3, "a", 2, 2)], 3)
    assert not check_history(ops, twice, keys=["k"]).ok


def test_serializable_reads_must_not_go_back_in_revision() -> None:
    final = FinalHistory([put_event(2, "a", 2, 1), put_event(3, "b", 2, 2)], 3)
    s1 = Op(next(_ids), 5, "m0", "sget", 4, key="k", ret=5, status=OK, revision=3,
            kvs={"k": kv("b", 3, 2, 2)})  # fmt: skip
    s2 = Op(next(_ids), 5, "m0", "sget", 6, key="k", ret=7, status=OK, revision=2,
            kvs={"k": kv("a", 2)})  # fmt: skip
    ops = [put(0, 1, "a", 2), put(2, 3, "b", 3), s1, s2]
    report = check_history(ops, final, keys=["k"])
    assert any("serializable" in v for v in report.violations)


def test_a_watch_must_deliver_the_final_history_in_order_without_gaps() -> None:
    events = [put_event(2, "a", 2, 1), put_event(3, "b", 2, 2), put_event(4, "c", 2, 3)]
    final = FinalHistory(events, 4)
    assert check_watch("w", events, final) == []
    assert check_watch("w", [events[0], events[2]], final)  # a gap
    assert check_watch("w", [events[0], events[1], events[1], events[2]], final)  # a duplicate
    assert check_watch("w", [events[1], events[0], events[2]], final)  # out of order
    assert check_watch("w", events[:2], final)  # stopped short


def test_an_unknown_cas_may_take_effect() -> None:
    a = put(0, 1, "a", 2)
    cas = txn(2, None, 2, "b", None, None, status=UNKNOWN)
    assert lin(a, cas, get(5, 6, kv("b", 3, 2, 2), 3))
    assert lin(a, cas, get(5, 6, kv("a", 2), 2))


def delete_event(rev: int, *, key: str = "k") -> Event:
    return Event(rev, "DELETE", key, None)


def test_deletes_in_the_final_history_need_a_cause() -> None:
    a = put(0, 1, "a", 2)
    events = [put_event(2, "a", 2, 1), delete_event(3)]
    final = FinalHistory(events, 3)
    # Nobody deleted the key: a phantom delete.
    assert any("phantom delete" in v for v in check_history([a], final, keys=["k"]).violations)
    # An unknown delete explains it; so does an acknowledged one at that revision.
    assert check_history([a, delete(2, None, None, None, status=UNKNOWN)], final, ["k"]).ok
    assert check_history([a, delete(2, 3, 1, 3)], final, keys=["k"]).ok
    # An acknowledged delete missing from the history is a lost write.
    lost = check_history([a, delete(2, 3, 1, 3)], FinalHistory(events[:1], 2), keys=["k"])
    assert lost.lost == 1


def test_a_revoke_explains_the_deletes_of_its_keys_and_ends_its_lease() -> None:
    a = put(0, 1, "a", 2, lease=7)
    rev = Op(next(_ids), 0, "m0", REVOKE, 2, lease=7, ret=3, status=OK, revision=3)
    events = [Event(2, "PUT", "k", KV("a", 2, 2, 1, 7)), delete_event(3)]
    assert check_history([a, rev], FinalHistory(events, 3), keys=["k"]).ok
    # A put with the lease after the revoke must not have happened.
    late = put(4, None, "b", lease=7, status=UNKNOWN)
    events.append(Event(4, "PUT", "k", KV("b", 4, 4, 1, 7)))
    report = check_history([a, rev, late], FinalHistory(events, 4), keys=["k"])
    assert any("revoked lease" in v for v in report.violations)


def test_a_linearizable_read_may_not_show_a_revision_older_than_a_finished_write() -> None:
    ops = [put(0, 1, "a", 2), put(2, 3, "b", 3, key="j"), get(4, 5, kv("a", 2), 2)]
    final = FinalHistory([put_event(2, "a", 2, 1), put_event(3, "b", 3, 1, key="j")], 3)
    report = check_history(ops, final, keys=["k", "j"])
    assert any("real time" in v for v in report.violations)
    # A serializable read may (it is only checked against the history at its revision).
    ops[2].kind = SGET
    assert check_history(ops, final, keys=["k", "j"]).ok


def test_the_proxy_blocks_both_ways_for_an_isolated_member_and_one_way_for_a_block() -> None:
    p = Proxies()
    p.isolate("m1", "blackhole")
    assert p.blocked("m1", "m0") and p.blocked("m0", "m1") and not p.blocked("m0", "m2")
    p.heal()
    p.block("m0", "m1", "blackhole")
    assert p.blocked("m0", "m1") and not p.blocked("m1", "m0")
    p.heal()
    assert not p.blocked("m0", "m1")
