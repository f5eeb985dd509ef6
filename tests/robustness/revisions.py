"""Checks that use etcd's revisions and the final history (every event from revision 1).

The final history is read after the run, before any compaction, from each member (a watch from
revision 1); the members must agree on it. Against it (``check_history``):

- the history itself is well formed: one revision after another with no gap, versions counting
  up from 1 in each generation, create/mod revisions and the previous kvs as replayed;
- every write in it was made by a client request that did not certainly fail, at most once; a
  delete nobody asked for is only explained by an unknown delete or a revoke of the key's lease
  (the lock service's ownership keys, under ``LOCK_PREFIX``, are left to ``locks``);
- every acknowledged write is in it, at the revision its response gave (else it is *lost*);
- each revision was acknowledged to one write at most;
- response revisions grow along real time: a request invoked after another returned never
  answers an older revision, and a write answers a newer one;
- every read (linearizable or serializable, a txn's failure branch, prev_kv) returned exactly
  the key's state at its response revision; a txn's compare held at its revision iff it
  succeeded; a revoked lease holds no key afterwards;
- each client's serializable reads never go back in revision.

``check_watch`` compares what one watcher received with the final history.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .history import (
    DELETE,
    FENCED,
    GRANT,
    KV,
    LOCK_PREFIX,
    OK,
    PUT,
    REVOKE,
    SGET,
    TXN,
    UNKNOWN,
    Op,
    kv_text,
)

MAX_REPORTED = 20  # violations of one kind listed before "... and N more"


@dataclass(frozen=True)
class Event:
    """One watch event: a PUT's new kv, or a DELETE (``kv`` None); ``prev`` if asked for."""

    revision: int
    type: str  # "PUT" | "DELETE"
    key: str
    kv: KV | None
    prev: KV | None = None

    def describe(self) -> str:
        prev = f" prev={kv_text(self.prev)}" if self.prev else ""
        body = kv_text(self.kv) if self.type == "PUT" else ""
        return f"rev {self.revision} {self.type} {self.key} {body}{prev}".rstrip()


@dataclass
class FinalHistory:
    """Every event from revision 1 up to ``revision`` (the store's revision at the end)."""

    events: list[Event]
    revision: int
    with_prev: bool = False


@dataclass
class HistoryReport:
    violations: list[str] = field(default_factory=list)
    acknowledged: int = 0  # acknowledged writes that must be in the final history
    lost: int = 0  # ... and are not (or not at their revision)

    @property
    def ok(self) -> bool:
        return not self.violations


class _Timeline:
    """Each key's state after each revision, replayed from the final history."""

    def __init__(self) -> None:
        self.revs: dict[str, list[int]] = defaultdict(list)
        self.states: dict[str, list[KV | None]] = defaultdict(list)

    def set(self, key: str, rev: int, kv: KV | None) -> None:
        self.revs[key].append(rev)
        self.states[key].append(kv)

    def at(self, key: str, rev: int) -> KV | None:
        revs = self.revs.get(key)
        if not revs:
            return None
        i = bisect.bisect_right(revs, rev) - 1
        return self.states[key][i] if i >= 0 else None


class _Violations:
    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, text: str) -> None:
        self.by_kind[kind].append(text)

    def lines(self) -> list[str]:
        out = []
        for kind, texts in self.by_kind.items():
            out += [f"{kind}: {t}" for t in texts[:MAX_REPORTED]]
            if len(texts) > MAX_REPORTED:
                out.append(f"{kind}: ... and {len(texts) - MAX_REPORTED} more")
        return out


def _replay(final: FinalHistory, bad: _Violations, contiguous: bool) -> _Timeline:
    timeline = _Timeline()
    current: dict[str, KV] = {}
    last_rev = 1
    seen_at_rev: set[str] = set()
    for ev in final.events:
        if ev.revision < last_rev:
            bad.add("final history", f"{ev.describe()} after revision {last_rev}")
        elif ev.revision > last_rev:
            if contiguous and ev.revision != last_rev + 1:
                bad.add("final history", f"no event at revisions {last_rev + 1}..{ev.revision - 1}")
            last_rev = ev.revision
            seen_at_rev = set()
        if ev.key in seen_at_rev:
            bad.add("final history", f"two events for {ev.key} at revision {ev.revision}")
        seen_at_rev.add(ev.key)
        before = current.get(ev.key)
        if final.with_prev and ev.prev != before:
            bad.add("final history", f"{ev.describe()}: the key was {kv_text(before)}")
        if ev.type == "PUT":
            kv = ev.kv
            assert kv is not None
            want_create = before.create if before else ev.revision
            want_version = before.version + 1 if before else 1
            if (kv.mod, kv.create, kv.version) != (ev.revision, want_create, want_version):
                bad.add(
                    "final history",
                    f"{ev.describe()}: expected mod={ev.revision} create={want_create} "
                    f"version={want_version} after {kv_text(before)}",
                )
            current[ev.key] = kv
            timeline.set(ev.key, ev.revision, kv)
        else:
            if before is None:
                bad.add("final history", f"{ev.describe()} of an absent key")
            current.pop(ev.key, None)
            timeline.set(ev.key, ev.revision, None)
    if contiguous and last_rev != final.revision and final.events:
        bad.add("final history", f"ends at revision {last_rev}, the store is at {final.revision}")
    return timeline


def check_history(
    ops: Sequence[Op], final: FinalHistory, keys: Sequence[str], *, contiguous: bool = True
) -> HistoryReport:
    """Check ``ops`` against the final history (see the module docstring)."""
    bad = _Violations()
    report = HistoryReport()
    timeline = _replay(final, bad, contiguous)
    writers: dict[str, Op] = {}
    for op in ops:
        value = op.written_value()
        if value is not None:
            writers[value] = op

    # Every write in the history was made by someone, once, and acknowledged ones where told.
    applied: Counter[str] = Counter()
    deletes_at: dict[tuple[str, int], Event] = {}
    revoked: dict[int, list[Op]] = defaultdict(list)  # lease -> revokes (ok or unknown)
    unknown_deletes: Counter[str] = Counter()
    acked_deletes: set[tuple[str, int]] = set()
    for op in ops:
        if op.kind == REVOKE and op.status in (OK, UNKNOWN) and not op.not_found:
            revoked[op.lease].append(op)
        elif op.kind == DELETE and op.status == UNKNOWN and op.key is not None:
            unknown_deletes[op.key] += 1
        elif op.kind == DELETE and op.status == OK and op.deleted and op.key is not None:
            assert op.revision is not None
            acked_deletes.add((op.key, op.revision))
    for ev in final.events:
        if ev.key.startswith(LOCK_PREFIX):
            continue  # the lock service's ownership keys: ``locks`` checks them
        if ev.type == "PUT":
            assert ev.kv is not None
            w = writers.get(ev.kv.value)
            applied[ev.kv.value] += 1
            if w is None:
                bad.add("phantom write", f"{ev.describe()}: no client wrote this value")
            elif w.status == "fail":
                bad.add("failed write applied", f"{ev.describe()} by {w.describe()}")
            elif w.key != ev.key or (w.kind == PUT and w.lease != ev.kv.lease):
                bad.add("wrong write", f"{ev.describe()} for {w.describe()}")
            elif w.status == OK and w.revision != ev.revision:
                bad.add("wrong revision", f"{ev.describe()}, acknowledged as {w.describe()}")
            if applied[ev.kv.value] == 2:
                bad.add("write applied twice", f"{ev.describe()}")
        else:
            deletes_at[(ev.key, ev.revision)] = ev
            if (ev.key, ev.revision) in acked_deletes:
                continue
            before = timeline.at(ev.key, ev.revision - 1)
            lease = before.lease if before else 0
            if lease and any(
                r.status == UNKNOWN or r.revision == ev.revision for r in revoked.get(lease, ())
            ):
                continue
            if unknown_deletes[ev.key] > 0:
                unknown_deletes[ev.key] -= 1
                continue
            bad.add("phantom delete", f"{ev.describe()}: no client request explains it")

    for op in ops:
        if op.status != OK or op.not_found:
            continue
        if op.kind in (PUT, TXN, FENCED) and (op.kind == PUT or op.succeeded):
            report.acknowledged += 1
            assert op.value is not None
            if applied[op.value] == 0:
                report.lost += 1
                bad.add("lost write", f"{op.describe()} is not in the final history")
        elif op.kind == DELETE and op.deleted:
            report.acknowledged += 1
            assert op.key is not None and op.revision is not None
            if (op.key, op.revision) not in deletes_at:
                report.lost += 1
                bad.add("lost write", f"{op.describe()}: no delete at its revision")

    # One acknowledged write per revision.
    by_rev: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        if op.wrote():
            assert op.revision is not None
            by_rev[op.revision].append(op)
    for rev, writes in sorted(by_rev.items()):
        if len(writes) > 1:
            bad.add(
                "revision reused",
                f"revision {rev} acknowledged to {len(writes)} writes: "
                + "; ".join(w.describe() for w in writes),
            )

    _check_real_time(ops, bad)
    _check_reads(ops, timeline, bad)
    _check_revokes(ops, final, timeline, keys, bad)
    _check_serializable(ops, bad)
    report.violations = bad.lines()
    return report


def _check_real_time(ops: Sequence[Op], bad: _Violations) -> None:
    """An ``ok`` response never shows a revision older than one returned before it was sent."""
    timed = [
        op
        for op in ops
        if op.status == OK and op.kind != SGET and op.revision is not None and op.ret is not None
    ]
    by_ret = sorted(timed, key=lambda o: o.ret or 0.0)
    j = 0
    top: Op | None = None
    for op in sorted(timed, key=lambda o: o.invoke):
        while j < len(by_ret) and (by_ret[j].ret or 0.0) < op.invoke:
            cand = by_ret[j]
            if top is None or (cand.revision or 0) > (top.revision or 0):
                top = cand
            j += 1
        if top is None:
            continue
        assert op.revision is not None and top.revision is not None
        if op.revision < top.revision or (op.wrote() and op.revision == top.revision):
            bad.add(
                "revision went back in real time",
                f"{op.describe()} was sent after {top.describe()} returned",
            )


def _check_reads(ops: Sequence[Op], timeline: _Timeline, bad: _Violations) -> None:
    for op in ops:
        if op.status != OK or op.revision is None or op.kind == GRANT:
            continue
        rev = op.revision
        for key, got in (op.kvs or {}).items():
            want = timeline.at(key, rev)
            if got != want:
                bad.add(
                    "read does not match the history",
                    f"{op.describe()}: {key} at revision {rev} was {kv_text(want)}",
                )
        if op.has_prev and op.key is not None:
            # A write's previous kv is the state just before its own revision; a delete that
            # deleted nothing made no revision.
            at = rev - 1 if op.kind == PUT or op.deleted else rev
            want = timeline.at(op.key, at)
            if op.prev != want:
                bad.add(
                    "prev_kv does not match the history",
                    f"{op.describe()}: {op.key} at revision {at} was {kv_text(want)}",
                )
        if op.kind == DELETE and op.key is not None and not op.deleted:
            present = timeline.at(op.key, rev)
            if present is not None:
                bad.add(
                    "read does not match the history",
                    f"{op.describe()}: {op.key} at revision {rev} was {kv_text(present)}",
                )
        if op.kind == TXN and op.key is not None:
            at = rev - 1 if op.succeeded else rev
            state = timeline.at(op.key, at)
            holds = (state.mod if state else 0) == op.cmp_mod
            if holds != bool(op.succeeded):
                bad.add(
                    "txn compare does not match the history",
                    f"{op.describe()}: {op.key} at revision {at} was {kv_text(state)}",
                )


def _check_revokes(
    ops: Sequence[Op],
    final: FinalHistory,
    timeline: _Timeline,
    keys: Sequence[str],
    bad: _Violations,
) -> None:
    """After an acknowledged revoke its lease holds no key, and no put uses it again."""
    for op in ops:
        if op.kind != REVOKE or op.status != OK or op.not_found or op.revision is None:
            continue
        for key in keys:
            kv = timeline.at(key, op.revision)
            if kv is not None and kv.lease == op.lease:
                bad.add("revoked lease still holds a key", f"{op.describe()}: {kv_text(kv)}")
        for ev in final.events:
            if ev.revision > op.revision and ev.kv is not None and ev.kv.lease == op.lease:
                bad.add("put with a revoked lease", f"{ev.describe()} after {op.describe()}")


def _check_serializable(ops: Sequence[Op], bad: _Violations) -> None:
    last: dict[int, Op] = {}
    for op in sorted(ops, key=lambda o: o.invoke):
        if op.kind != SGET or op.status != OK or op.revision is None:
            continue
        prev = last.get(op.client)
        if prev is not None and prev.revision is not None and op.revision < prev.revision:
            bad.add(
                "serializable read went back",
                f"{op.describe()} after {prev.describe()} (same client)",
            )
        last[op.client] = op


def check_watch(
    name: str, events: Sequence[Event], final: FinalHistory, start: int = 1
) -> list[str]:
    """What watcher ``name`` received from revision ``start`` on must be the final history's
    events from there, exactly: in order, none twice, none missing. Events after the final
    revision are left out (a lease can expire after the final history was read)."""
    want = [e for e in final.events if e.revision >= start]
    events = [e for e in events if e.revision <= final.revision]
    for i, (got, exp) in enumerate(zip(events, want, strict=False)):
        if got == exp:
            continue
        if got in want[:i]:
            what = "a duplicate"
        elif got.revision > exp.revision:
            what = "a gap"
        elif got.revision < exp.revision:
            what = "out of order"
        else:
            what = "a different event"
        return [
            f"watch {name}: event {i} is {what}: got {got.describe()}, expected {exp.describe()}"
        ]
    if len(events) < len(want):
        return [
            f"watch {name}: stopped after {len(events)} of {len(want)} events; next expected "
            f"{want[len(events)].describe()}"
        ]
    if len(events) > len(want):
        return [f"watch {name}: {len(events) - len(want)} events beyond the final history"]
    return []


def state_at(final: FinalHistory, revision: int, keys: Sequence[str]) -> dict[str, KV | None]:
    """Each key's state at ``revision`` as the final history replays it."""
    timeline = _replay(final, _Violations(), contiguous=False)
    return {key: timeline.at(key, revision) for key in keys}
