"""The lock and lease-expiry checks (``locks``) on hand-made histories, and the proxy's chaos.

Two lockers: A (lease 0xa) and B (lease 0xb); their ownership keys are ``LOCK_PREFIX + "a"``
and ``LOCK_PREFIX + "b"``. Times are seconds; revisions start at 2.
"""

from __future__ import annotations

import asyncio
import itertools

from cluster.bench.ports import free_ports
from tests.robustness.history import (
    FENCED,
    FENCED_KEY,
    GET,
    GRANT,
    KV,
    LOCK,
    LOCK_PREFIX,
    OK,
    UNLOCK,
    Op,
)
from tests.robustness.locks import check_locks
from tests.robustness.proxy import _FRAME, _HELLO, Proxies
from tests.robustness.revisions import Event, FinalHistory

_ids = itertools.count(1)
A, B = LOCK_PREFIX + "a", LOCK_PREFIX + "b"


def op(kind: str, t0: float, t1: float, rev: int, **args: object) -> Op:
    return Op(next(_ids), 0, "m0", kind, t0, ret=t1, status=OK, revision=rev, **args)  # type: ignore[arg-type]


def created(rev: int, key: str, lease: int) -> Event:
    return Event(rev, "PUT", key, KV("", rev, rev, 1, lease))


def deleted(rev: int, key: str) -> Event:
    return Event(rev, "DELETE", key, None)


def fenced_put(rev: int, value: str, version: int) -> Event:
    return Event(rev, "PUT", FENCED_KEY, KV(value, rev, 3, version))


def _final(*events: Event) -> FinalHistory:
    return FinalHistory(list(events), events[-1].revision)


def test_one_holder_after_another_passes() -> None:
    ops = [
        op(GRANT, 0, 0.1, 1, lease=0xA, ttl=10),
        op(GRANT, 0, 0.1, 1, lease=0xB, ttl=10),
        op(LOCK, 0.1, 0.2, 2, lease=0xA, key=A),
        op(FENCED, 0.2, 0.3, 4, key=FENCED_KEY, value="a1", holder=A, succeeded=True),
        op(LOCK, 0.15, 0.5, 5, lease=0xB, key=B),  # waited for A's unlock
        op(UNLOCK, 0.4, 0.45, 5, key=A),
        op(FENCED, 0.5, 0.6, 6, key=FENCED_KEY, value="b1", holder=B, succeeded=True),
    ]
    final = _final(
        created(2, A, 0xA), created(3, B, 0xB), fenced_put(4, "a1", 1), deleted(5, A),
        fenced_put(6, "b1", 2),
    )  # fmt: skip
    report = check_locks(ops, final)
    assert report.violations == []
    assert (report.granted, report.fenced, report.expired) == (2, 2, 0)


def test_a_lock_granted_while_another_key_holds_it_is_caught() -> None:
    ops = [op(LOCK, 0.1, 0.2, 3, lease=0xB, key=B)]
    final = _final(created(2, A, 0xA), created(3, B, 0xB))
    [problem] = check_locks(ops, final).violations
    assert "lock granted to a non-holder" in problem and f"held by {A}" in problem


def test_a_fenced_write_by_a_second_holder_is_caught() -> None:
    ops = [op(FENCED, 0.2, 0.3, 4, key=FENCED_KEY, value="b1", holder=B, succeeded=True)]
    final = _final(created(2, A, 0xA), created(3, B, 0xB), fenced_put(4, "b1", 1))
    [problem] = check_locks(ops, final).violations
    assert "two lock holders" in problem


def test_a_fenced_write_refused_while_its_key_exists_is_caught() -> None:
    ops = [op(FENCED, 0.2, 0.3, 2, key=FENCED_KEY, value="a1", holder=A, succeeded=False)]
    [problem] = check_locks(ops, _final(created(2, A, 0xA))).violations
    assert "refused while its key existed" in problem


def test_a_lease_that_expires_before_its_ttl_is_caught() -> None:
    grant = op(GRANT, 1.0, 1.1, 1, lease=0xA, ttl=2)
    lock = op(LOCK, 1.1, 1.2, 2, lease=0xA, key=A)
    final = _final(created(2, A, 0xA), deleted(3, A))
    # Revision 3 (the expiry) was seen at 2.0 s, one second after the grant of two.
    early = op(GET, 1.9, 2.0, 3, key="k", kvs={"k": None})
    [problem] = check_locks([grant, lock, early], final).violations
    assert "lease a expired early" in problem
    # Seen only after the TTL: fine; and an unlock explains a delete at any time.
    late = op(GET, 3.0, 3.1, 3, key="k", kvs={"k": None})
    assert check_locks([grant, lock, late], final).violations == []
    unlock = op(UNLOCK, 1.5, 1.6, 3, key=A)
    assert check_locks([grant, lock, unlock, early], final).violations == []


async def test_the_proxy_chaos_keeps_frames_in_order_and_drops_only_raft_messages() -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def member(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.read(_FRAME.size):
            length, kind = _FRAME.unpack(head)
            payload = await reader.readexactly(length)
            got.append(bytes([kind]) + payload)
            if payload == b"end":
                done.set()
        writer.close()

    target = await asyncio.start_server(member, "127.0.0.1", 0)
    proxies = Proxies(seed=1)
    listen = free_ports(1)[0]
    proxy = await proxies.serve("m1", listen, target.sockets[0].getsockname()[1])
    proxies.chaos(0.02, 0.5)
    _, writer = await asyncio.open_connection("127.0.0.1", listen)
    sent = [(1, _HELLO.pack(1, 2, 3))]
    sent += [(2 if i % 4 else 4, b"%d" % i) for i in range(200)]  # messages, snapshot chunks
    sent.append((5, b"end"))
    for kind, payload in sent:
        writer.write(_FRAME.pack(len(payload), kind) + payload)
    await writer.drain()
    await asyncio.wait_for(done.wait(), 10)
    writer.close()
    proxy.close()
    target.close()
    frames = [bytes([kind]) + payload for kind, payload in sent]
    it = iter(frames)
    assert all(f in it for f in got), "frames reordered"  # a subsequence, in order
    assert all(f in got for f in frames if f[0] != 2), "a frame other than messages dropped"
    dropped = len(frames) - len(got)
    assert 50 < dropped < 100, dropped  # about half of the 150 message frames
    assert proxies.dropped == dropped
