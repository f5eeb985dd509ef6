"""Checks of the lock traffic (``traffic.Locker``) and of lease expiry, against the final history.

A lock's holder is, at each revision, the live ownership key under ``LOCK_PREFIX`` with the
lowest create revision (etcd's recipe). Replaying the final history's ownership keys:

- every granted lock (``lock`` ok) was held by its key at the response's revision;
- every fenced write in the history (the put of ``FENCED_KEY`` in a txn that holds only while
  the writer's ownership key exists) was made while that key held the lock: never two holders
  with valid fencing revisions; a fenced write that was refused, while its key no longer existed;
- a lease never expires early: an ownership key that no unlock, revoke or abandoned lock can
  have deleted went away by its lease's expiry, and no request that returned before the lease's
  TTL had passed since its grant was sent (less ``SLACK``) shows a revision at or after that
  delete.

That expiry deletes keys on every member alike (at the same revision) the final history's
agreement between members and the watch checks show.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .history import FENCED, GRANT, LOCK, LOCK_PREFIX, OK, REVOKE, SGET, UNLOCK, Op
from .revisions import FinalHistory

SLACK = 0.1  # seconds: the members and the harness share one clock; scheduling jitter only


class _Owners:
    """The lock holder after each revision, replayed from the final history."""

    def __init__(self, final: FinalHistory) -> None:
        live: dict[str, int] = {}  # ownership key -> its create revision
        self.revs: list[int] = []
        self.holders: list[str | None] = []
        self.created: dict[str, list[int]] = defaultdict(list)
        self.deleted: list[tuple[str, int]] = []  # (key, revision)
        for ev in final.events:
            if not ev.key.startswith(LOCK_PREFIX):
                continue
            if ev.type == "PUT":
                assert ev.kv is not None
                live.setdefault(ev.key, ev.kv.create)
                if ev.kv.create == ev.revision:
                    self.created[ev.key].append(ev.revision)
            else:
                live.pop(ev.key, None)
                self.deleted.append((ev.key, ev.revision))
            holder = min(live, key=live.__getitem__) if live else None
            if self.revs and self.revs[-1] == ev.revision:
                self.holders[-1] = holder
            else:
                self.revs.append(ev.revision)
                self.holders.append(holder)

    def at(self, revision: int) -> str | None:
        i = bisect.bisect_right(self.revs, revision) - 1
        return self.holders[i] if i >= 0 else None

    def exists(self, key: str, revision: int) -> bool:
        """Whether ``key`` is live at ``revision``."""
        created = [r for r in self.created.get(key, ()) if r <= revision]
        if not created:
            return False
        gone = [r for k, r in self.deleted if k == key and created[-1] < r <= revision]
        return not gone


@dataclass
class LockReport:
    violations: list[str] = field(default_factory=list)
    granted: int = 0  # locks granted (ok)
    fenced: int = 0  # fenced writes made
    expired: int = 0  # ownership keys only their lease's expiry can have deleted


def check_locks(ops: Sequence[Op], final: FinalHistory) -> LockReport:
    """Violations of the properties in the module docstring, and what was checked."""
    owners = _Owners(final)
    report = LockReport()
    bad: list[str] = []
    for op in ops:
        if op.kind == LOCK and op.status == OK and op.revision is not None:
            report.granted += 1
            holder = owners.at(op.revision)
            if op.key != holder:
                bad.append(
                    f"lock granted to a non-holder: {op.describe()}: at revision {op.revision} "
                    f"the lock was held by {holder or 'nobody'}"
                )
        elif op.kind == FENCED and op.status == OK and not op.succeeded:
            assert op.holder is not None and op.revision is not None
            if owners.exists(op.holder, op.revision):
                bad.append(
                    f"fenced write refused while its key existed: {op.describe()} "
                    f"({op.holder} is live at revision {op.revision})"
                )
    writers = {op.value: op for op in ops if op.kind == FENCED and op.value is not None}
    for ev in final.events:
        if ev.type != "PUT" or ev.kv is None:
            continue
        w = writers.get(ev.kv.value)
        if w is None or w.holder is None:
            continue
        report.fenced += 1
        holder = owners.at(ev.revision - 1)
        if holder != w.holder:
            bad.append(
                f"two lock holders: {ev.describe()}, fenced on {w.holder} ({w.describe()}), "
                f"was written while {holder or 'nobody'} held the lock"
            )
    report.violations = bad + _early_expiries(ops, owners, report)
    return report


def _early_expiries(ops: Sequence[Op], owners: _Owners, report: LockReport) -> list[str]:
    granted = {op.lease: op for op in ops if op.kind == GRANT and op.status == OK and op.ttl}
    # Requests that may have deleted an ownership key: an unlock of it, a revoke of its lease,
    # a lock of its lease that did not succeed (a cancelled Lock deletes its key).
    explained_keys = {op.key for op in ops if op.kind == UNLOCK and op.status != "fail"}
    explained_leases = {
        op.lease
        for op in ops
        if (op.kind == REVOKE and op.status != "fail") or (op.kind == LOCK and op.status != OK)
    }
    timed = sorted(
        (op
         for op in ops
         if op.status == OK and op.kind != SGET and op.revision is not None and op.ret is not None),
        key=lambda op: op.ret or 0.0,
    )  # fmt: skip
    rets = [op.ret or 0.0 for op in timed]
    best: list[tuple[int, Op | None]] = []  # prefix maximum of revisions by return time
    top: tuple[int, Op | None] = (0, None)
    for op in timed:
        if (op.revision or 0) > top[0]:
            top = (op.revision or 0, op)
        best.append(top)
    bad = []
    for key, revision in owners.deleted:
        lease = int(key[len(LOCK_PREFIX) :], 16)
        grant = granted.get(lease)
        if key in explained_keys or lease in explained_leases or grant is None:
            continue
        report.expired += 1
        i = bisect.bisect_left(rets, grant.invoke + grant.ttl - SLACK) - 1
        if i >= 0 and best[i][0] >= revision:
            seen = best[i][1]
            assert seen is not None
            bad.append(
                f"lease {lease:x} expired early: its key {key} was deleted at revision "
                f"{revision}, which {seen.describe()} already showed, though the lease was "
                f"granted for {grant.ttl} s by {grant.describe()}"
            )
    return bad
