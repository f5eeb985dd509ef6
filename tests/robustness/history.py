"""The recorded history: one ``Op`` per client request, from its invocation to its outcome.

Statuses (Jepsen's): ``ok`` the request completed and its result is known (a failed compare or
"lease not found" is a result too); ``fail`` it certainly had no effect (the connection could
not be made, "etcdserver: no leader" before proposing); ``unknown`` it may or may not have taken
effect (a deadline, a broken connection, "request timed out", "leader changed", ...).

Every value a client writes is unique (``c<client>-<n>``), so a value names the write that
produced it. Histories are written and read as JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "fail", "unknown"]
OK: Status = "ok"
FAIL: Status = "fail"
UNKNOWN: Status = "unknown"

# Operation kinds. ``sget`` is a serializable get (not checked for linearizability). The
# lock traffic's (``traffic.Locker``, checked by ``locks``): ``lock`` (v3lock Lock; its key is
# the ownership key it answered), ``unlock``, ``fenced`` (a put of ``FENCED_KEY`` in a txn
# that holds only while the ownership key ``holder`` exists).
PUT, GET, SGET, RANGE, DELETE, TXN, REVOKE, GRANT = (
    "put", "get", "sget", "range", "delete", "txn", "revoke", "grant",
)  # fmt: skip
LOCK, UNLOCK, FENCED = "lock", "unlock", "fenced"
KINDS = (PUT, GET, SGET, RANGE, DELETE, TXN, REVOKE, GRANT, LOCK, UNLOCK, FENCED)

LOCK_NAME = "/rb/lock"  # the lock's name: its ownership keys are LOCK_NAME/<lease in hex>
LOCK_PREFIX = LOCK_NAME + "/"
FENCED_KEY = "/rb/lockdata"  # written only by lock holders, fenced by their ownership key


@dataclass(frozen=True)
class KV:
    """A key's state as a response shows it (``mvccpb.KeyValue`` without the key)."""

    value: str
    mod: int
    create: int
    version: int
    lease: int = 0


@dataclass
class Op:
    """One client request and its outcome; times are seconds from the start of the run.

    Arguments: ``key`` (None for a range over every key, a revoke, a grant), ``value`` (put,
    and the put of a txn's success branch), ``lease`` (a put's lease; the lease revoked or
    granted), ``prev_kv`` (put/delete asked for the previous kv), ``cmp_mod`` (txn: compare
    ``mod_revision(key) == cmp_mod``, 0 meaning the key is absent).

    Results (``ok`` only): ``revision`` (the response header's), ``kvs`` (reads and a txn's
    failure branch: every key read, None for absent), ``prev`` (the previous kv of a put or
    delete that asked for it), ``deleted``, ``succeeded`` (txn), ``not_found`` (a put whose
    lease, or a revoke whose lease, did not exist: nothing changed).
    """

    id: int
    client: int
    member: str
    kind: str
    invoke: float
    key: str | None = None
    value: str | None = None
    lease: int = 0
    prev_kv: bool = False
    cmp_mod: int | None = None
    ret: float | None = None
    status: Status = UNKNOWN
    error: str | None = None
    revision: int | None = None
    kvs: dict[str, KV | None] | None = None
    prev: KV | None = None
    has_prev: bool = False  # ``prev`` is meaningful (None then means the key was absent)
    deleted: int | None = None
    succeeded: bool | None = None
    not_found: bool = False
    holder: str | None = None  # fenced: the ownership key the write is fenced on
    ttl: int = 0  # grant: the TTL the lease was granted with

    @property
    def is_write(self) -> bool:
        return self.kind in (PUT, DELETE, TXN, REVOKE, FENCED)

    def wrote(self) -> bool:
        """An ``ok`` request that created a new revision (for the revision checks)."""
        if self.status != OK or self.not_found:
            return False
        if self.kind == PUT:
            return True
        if self.kind in (TXN, FENCED):
            return bool(self.succeeded)
        if self.kind == DELETE:
            return bool(self.deleted)
        return False

    def written_value(self) -> str | None:
        """The value this request writes if it takes effect (put, txn success branch)."""
        return self.value if self.kind in (PUT, TXN, FENCED) else None

    def describe(self) -> str:
        args = [self.kind]
        if self.key is not None:
            args.append(self.key)
        if self.value is not None:
            args.append(f"={self.value}")
        if self.lease:
            args.append(f"lease={self.lease:x}")
        if self.cmp_mod is not None:
            args.append(f"if mod=={self.cmp_mod}")
        if self.holder is not None:
            args.append(f"if {self.holder} exists")
        if self.ttl:
            args.append(f"ttl={self.ttl}")
        res = f"{self.status}"
        if self.status == OK:
            parts = [f"rev={self.revision}"]
            if self.succeeded is not None:
                parts.append(f"succeeded={self.succeeded}")
            if self.deleted is not None:
                parts.append(f"deleted={self.deleted}")
            if self.not_found:
                parts.append("not found")
            if self.kvs is not None:
                parts.append(
                    "read "
                    + ", ".join(
                        f"{k}={_kv_text(v)}" for k, v in sorted(self.kvs.items()) if v or self.key
                    )
                )
            if self.has_prev:
                parts.append(f"prev={_kv_text(self.prev)}")
            res += " " + " ".join(parts)
        elif self.error:
            res += f" ({self.error})"
        end = "?" if self.ret is None else f"{self.ret:.4f}"
        return (
            f"#{self.id} c{self.client}@{self.member} [{self.invoke:.4f}, {end}] "
            f"{' '.join(args)} -> {res}"
        )


def _kv_text(kv: KV | None) -> str:
    if kv is None:
        return "<absent>"
    lease = f" lease={kv.lease:x}" if kv.lease else ""
    return f"{kv.value}(mod={kv.mod} create={kv.create} ver={kv.version}{lease})"


def kv_text(kv: KV | None) -> str:
    """A kv for messages: ``value(mod=.. create=.. ver=..)`` or ``<absent>``."""
    return _kv_text(kv)


def op_to_json(op: Op) -> dict[str, Any]:
    return asdict(op)


def _kv_from(raw: Any) -> KV | None:
    return None if raw is None else KV(**raw)


def op_from_json(raw: dict[str, Any]) -> Op:
    raw = dict(raw)
    if raw.get("kvs") is not None:
        raw["kvs"] = {k: _kv_from(v) for k, v in raw["kvs"].items()}
    raw["prev"] = _kv_from(raw.get("prev"))
    return Op(**raw)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def save_history(path: Path, ops: Iterable[Op]) -> None:
    write_jsonl(path, (op_to_json(op) for op in ops))


def load_history(path: Path) -> list[Op]:
    return [op_from_json(row) for row in read_jsonl(path)]
