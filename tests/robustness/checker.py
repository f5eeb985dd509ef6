"""A linearizability checker for the KV history: Wing & Gong's search with Lowe's memoization.

Linearizability is local, so each key is checked on its own: every single-key request (put,
get, delete, txn) belongs to its key; a range over several keys is split into one read per key
and a lease revoke into one conditional delete per key ever written with that lease (splitting
a multi-key request keeps every linearization valid, so a history that fails here is not
linearizable; it only makes the check a little weaker than a whole-history one). Serializable
gets, grants and requests that certainly failed are left out; ``unknown`` writes may take effect
at any point after their invocation or never (their return is at infinity: linearized last,
they change nothing anyone saw).

The model is a register per key with etcd's metadata: the value (every value is written once,
so it names its write), the version, the value that created the key (for create_revision) and
the lease. Revisions come from the responses themselves: each value's mod_revision is whatever
every response that showed it agrees on (``observed_revisions``; a disagreement is itself a
violation), which is what a txn's ``mod_revision == r`` compare is evaluated against.

The search (``check_key``): history events in time order in a linked list; repeatedly
linearize the first pending call whose model step fits, lifting it out of the list; backtrack
when a return is reached before its call was linearized; skip configurations (linearized set,
model state) already seen.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .history import DELETE, GET, KV, OK, PUT, RANGE, REVOKE, TXN, UNKNOWN, Op, kv_text

# A key's model state: (value or None when absent, version, value that created it, lease).
State = tuple[str | None, int, str | None, int]
ABSENT: State = (None, 0, None, 0)

DEFAULT_BUDGET = 2_000_000  # search steps per key before giving up (inconclusive)


@dataclass(frozen=True)
class KeyOp:
    """One request as seen by one key."""

    op: Op
    key: str
    call: float
    ret: float  # math.inf for an unknown outcome


@dataclass
class KeyResult:
    key: str
    ops: int
    linearizable: bool | None  # None: search budget exhausted
    steps: int = 0
    detail: str = ""


@dataclass
class Result:
    """The whole history: linearizable only if every key is and the revisions agree."""

    linearizable: bool | None
    checked_ops: int
    keys: list[KeyResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = list(self.problems)
        for k in self.keys:
            if k.linearizable is not True:
                verdict = "inconclusive" if k.linearizable is None else "NOT linearizable"
                lines.append(f"key {k.key}: {verdict} ({k.ops} ops, {k.steps} steps)\n{k.detail}")
        return "\n".join(lines)


def observed_revisions(ops: Iterable[Op]) -> tuple[dict[str, int], list[str]]:
    """Each written value's mod_revision as the ``ok`` responses show it; disagreements."""
    seen: dict[str, tuple[int, str]] = {}
    problems: list[str] = []

    def note(value: str, rev: int, where: Op) -> None:
        old = seen.get(value)
        if old is None:
            seen[value] = (rev, f"#{where.id}")
        elif old[0] != rev:
            problems.append(
                f"value {value!r} seen at revision {old[0]} ({old[1]}) and {rev} (#{where.id})"
            )

    for op in ops:
        if op.status != OK:
            continue
        written = (op.kind == PUT and not op.not_found) or (op.kind == TXN and op.succeeded)
        if written and op.value is not None and op.revision is not None:
            note(op.value, op.revision, op)
        for kv in (op.kvs or {}).values():
            if kv is not None:
                note(kv.value, kv.mod, op)
        if op.prev is not None:
            note(op.prev.value, op.prev.mod, op)
    return {v: r for v, (r, _) in seen.items()}, problems


def _writers(ops: Iterable[Op]) -> dict[str, Op]:
    out: dict[str, Op] = {}
    for op in ops:
        value = op.written_value()
        if value is not None:
            out[value] = op
    return out


def read_problems(ops: Sequence[Op]) -> list[str]:
    """Values read that no request wrote, or that only a certainly failed request wrote."""
    writers = _writers(ops)
    problems = []
    for op in ops:
        if op.status != OK:
            continue
        shown = [kv for kv in (op.kvs or {}).values() if kv is not None]
        if op.prev is not None:
            shown.append(op.prev)
        for kv in shown:
            w = writers.get(kv.value)
            if w is None:
                problems.append(f"#{op.id} read {kv.value!r}, which no client wrote")
            elif w.status == "fail":
                problems.append(f"#{op.id} read {kv.value!r}, written by failed #{w.id}")
    return problems


def project(ops: Sequence[Op]) -> dict[str, list[KeyOp]]:
    """Each key's requests (see the module docstring for what is split or left out)."""
    per_key: dict[str, list[KeyOp]] = defaultdict(list)
    lease_keys: dict[int, set[str]] = defaultdict(set)
    for op in ops:
        if op.kind == PUT and op.lease and op.key is not None:
            lease_keys[op.lease].add(op.key)

    def add(op: Op, key: str) -> None:
        ret = math.inf if op.status == UNKNOWN else (op.ret if op.ret is not None else math.inf)
        per_key[key].append(KeyOp(op, key, op.invoke, ret))

    for op in ops:
        if op.status not in (OK, UNKNOWN):
            continue
        if op.kind in (PUT, DELETE, TXN) and op.key is not None:
            add(op, op.key)
        elif op.kind in (GET, RANGE) and op.status == OK and op.kvs is not None:
            for key in op.kvs:
                add(op, key)
        elif op.kind == REVOKE and not (op.status == OK and op.not_found):
            for key in lease_keys.get(op.lease, ()):
                add(op, key)
    return dict(per_key)


def _matches(state: State, kv: KV | None, revs: dict[str, int]) -> bool:
    value, version, create, lease = state
    if kv is None:
        return value is None
    if value != kv.value or version != kv.version or lease != kv.lease:
        return False
    created = revs.get(create) if create is not None else None
    return created is None or created == kv.create


def _put(state: State, value: str, lease: int) -> State:
    old, version, create, _ = state
    return (value, version + 1, create if old is not None else value, lease)


def step(state: State, kop: KeyOp, revs: dict[str, int]) -> State | None:
    """The model: the state after ``kop`` from ``state``, or None if its result contradicts it."""
    op = kop.op
    ok = op.status == OK
    kind = op.kind
    if kind in (GET, RANGE):
        assert op.kvs is not None
        return state if _matches(state, op.kvs.get(kop.key), revs) else None
    if kind == PUT:
        if ok and op.not_found:
            return state  # its lease did not exist: nothing changed
        if ok and op.has_prev and not _matches(state, op.prev, revs):
            return None
        assert op.value is not None
        return _put(state, op.value, op.lease)
    if kind == DELETE:
        if ok:
            if op.deleted != (0 if state[0] is None else 1):
                return None
            if op.has_prev and not _matches(state, op.prev, revs):
                return None
        return ABSENT
    if kind == TXN:
        current = 0 if state[0] is None else revs.get(state[0], -1)
        cond = current == op.cmp_mod
        if ok and op.succeeded != cond:
            return None
        if cond:
            assert op.value is not None
            return _put(state, op.value, 0)
        if ok and op.kvs is not None and not _matches(state, op.kvs.get(kop.key), revs):
            return None
        return state
    if kind == REVOKE:
        return ABSENT if state[0] is not None and state[3] == op.lease else state
    raise ValueError(f"no model for {kind}")


def check_key(
    key: str, kops: Sequence[KeyOp], revs: dict[str, int], budget: int = DEFAULT_BUDGET
) -> KeyResult:
    """Wing & Gong / Lowe's search over one key's requests."""
    n = len(kops)
    if n == 0:
        return KeyResult(key, 0, True)
    # Events: (time, 0 = call / 1 = return, op index); at equal times calls come first, so
    # that touching requests count as concurrent (never a false alarm).
    events = sorted(
        [(k.call, 0, i) for i, k in enumerate(kops)] + [(k.ret, 1, i) for i, k in enumerate(kops)]
    )
    size = len(events)
    head = size  # sentinel
    nxt = [*range(1, size), -1, 0]  # the last event ends the list; the sentinel starts it
    prv = [head, *range(size - 1), -1]
    is_call = [*(e[1] == 0 for e in events), False]
    op_of = [*(e[2] for e in events), -1]
    match = [0] * (size + 1)
    call_at = [0] * n
    for pos, (_, kind, i) in enumerate(events):
        if kind == 0:
            call_at[i] = pos
    for pos, (_, kind, i) in enumerate(events):
        if kind == 1:
            match[call_at[i]] = pos

    def lift(e: int) -> None:
        nxt[prv[e]] = nxt[e]
        if nxt[e] != -1:
            prv[nxt[e]] = prv[e]
        m = match[e]
        nxt[prv[m]] = nxt[m]
        if nxt[m] != -1:
            prv[nxt[m]] = prv[m]

    def unlift(e: int) -> None:
        m = match[e]
        nxt[prv[m]] = m
        if nxt[m] != -1:
            prv[nxt[m]] = m
        nxt[prv[e]] = e
        if nxt[e] != -1:
            prv[nxt[e]] = e

    state: State = ABSENT
    linearized = 0
    stack: list[tuple[int, State]] = []
    seen: set[tuple[int, State]] = set()
    best: tuple[int, int, State] = (0, 0, ABSENT)  # depth, linearized set, state
    entry = nxt[head]
    steps = 0
    while nxt[head] != -1:
        steps += 1
        if steps > budget:
            return KeyResult(key, n, None, steps, f"gave up after {budget} steps")
        if is_call[entry]:
            i = op_of[entry]
            after = step(state, kops[i], revs)
            if after is not None:
                bits = linearized | (1 << i)
                if (bits, after) not in seen:
                    seen.add((bits, after))
                    stack.append((entry, state))
                    state, linearized = after, bits
                    if len(stack) > best[0]:
                        best = (len(stack), linearized, state)
                    lift(entry)
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            if not stack:
                return KeyResult(key, n, False, steps, _explain(kops, best, revs))
            entry, state = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            entry = nxt[entry]
    return KeyResult(key, n, True, steps)


def _explain(kops: Sequence[KeyOp], best: tuple[int, int, State], revs: dict[str, int]) -> str:
    """The longest linearizable prefix found and the request that could not follow it."""
    depth, bits, state = best
    pending = sorted(
        (k for i, k in enumerate(kops) if not bits >> i & 1), key=lambda k: (k.ret, k.call)
    )
    stuck = pending[0]
    around = [k for k in pending if k is not stuck and k.call <= stuck.ret and k.ret >= stuck.call]
    value, version, create, lease = state
    if value is None:
        shown = "<absent>"
    else:
        created = revs.get(create) if create is not None else None
        shown = kv_text(KV(value, revs.get(value, -1), created or -1, version, lease))
    lines = [
        f"  longest linearizable prefix: {depth} of {len(kops)} requests, "
        f"leaving the key at {shown}",
        f"  no linearization lets this request follow: {stuck.op.describe()}",
    ]
    if around:
        lines.append("  requests concurrent with it, not linearized either:")
        lines += [f"    {k.op.describe()}" for k in around[:10]]
    return "\n".join(lines)


def check(ops: Sequence[Op], budget: int = DEFAULT_BUDGET) -> Result:
    """Check a whole history, key by key."""
    revs, problems = observed_revisions(ops)
    problems += read_problems(ops)
    per_key = project(ops)
    results = [check_key(key, kops, revs, budget) for key, kops in sorted(per_key.items())]
    checked = {k.op.id for kops in per_key.values() for k in kops}
    verdict: bool | None = True
    if problems or any(r.linearizable is False for r in results):
        verdict = False
    elif any(r.linearizable is None for r in results):
        verdict = None
    return Result(verdict, len(checked), results, problems)
