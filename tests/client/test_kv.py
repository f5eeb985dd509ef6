"""KV, transactions, compaction and error mapping against a live server."""

from __future__ import annotations

import threading

import grpc
import pytest

from cluster.client import (
    AsyncClient,
    Client,
    CompactedError,
    Compare,
    FutureRevisionError,
    GetResponse,
    InvalidArgumentError,
    KeyNotFoundError,
    LeaseNotFoundError,
    Op,
    PutResponse,
)


def test_put_get_round_trip(client: Client, ns: str) -> None:
    r = client.put(ns + "a", "1")
    assert r.revision > 0 and r.prev_kv is None
    got = client.get(ns + "a")
    assert got.value == b"1" and got.count == 1
    kv = got.kv
    assert kv is not None
    assert (kv.key, kv.version, kv.create_revision, kv.mod_revision) == (
        (ns + "a").encode(), 1, r.revision, r.revision,
    )  # fmt: skip
    # bytes in, bytes out; prev_kv on overwrite
    r2 = client.put((ns + "a").encode(), b"\x00\xff", prev_kv=True)
    assert r2.prev_kv is not None and r2.prev_kv.value == b"1"
    assert client.get(ns + "a").value == b"\x00\xff"
    assert client.get(ns + "missing").kv is None
    assert client.get(ns + "missing").value is None


def test_range_options(client: Client, ns: str) -> None:
    revs = {k: client.put(ns + k, k.upper()).revision for k in ["c", "a", "b", "d"]}
    client.put(ns[:-1] + "0", "outside")  # next to the prefix, not in it
    r = client.get(ns, prefix=True)
    assert [kv.key for kv in r] == [(ns + k).encode() for k in "abcd"]
    assert r.count == 4 and not r.more
    lim = client.get(ns, prefix=True, limit=2)
    assert len(lim) == 2 and lim.more and lim.count == 4
    desc = client.get(ns, prefix=True, sort_order="descend")
    assert [kv.value for kv in desc] == [b"D", b"C", b"B", b"A"]
    by_create = client.get(ns, prefix=True, sort_target="create", sort_order="ascend")
    assert [kv.value for kv in by_create] == [b"C", b"A", b"B", b"D"]
    rng = client.get(ns + "b", range_end=ns + "d")
    assert [kv.value for kv in rng] == [b"B", b"C"]
    keys = client.get(ns, prefix=True, keys_only=True)
    assert all(kv.value == b"" for kv in keys) and len(keys) == 4
    count = client.get(ns, prefix=True, count_only=True)
    assert count.count == 4 and count.kvs == []
    ser = client.get(ns + "a", serializable=True)
    assert ser.value == b"A"
    # history: the value of c before it was overwritten
    client.put(ns + "c", "C2")
    assert client.get(ns + "c", revision=revs["c"]).value == b"C"
    assert client.get(ns + "c").value == b"C2"
    assert [kv.value for kv in client.get(ns, prefix=True, min_mod_revision=revs["d"])] == [
        b"C2", b"D",
    ]  # fmt: skip


def test_put_ignore_value_and_lease(client: Client, ns: str) -> None:
    lease = client.grant(30)
    client.put(ns + "k", "v", lease=lease.id)
    client.put(ns + "k", "", ignore_value=True, ignore_lease=True)
    kv = client.get(ns + "k").kv
    assert kv is not None and kv.value == b"v" and kv.lease == lease.id and kv.version == 2
    client.put(ns + "k", "w", ignore_lease=True)
    kv = client.get(ns + "k").kv
    assert kv is not None and kv.value == b"w" and kv.lease == lease.id
    with pytest.raises(KeyNotFoundError) as e:
        client.put(ns + "missing", "", ignore_value=True)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == "etcdserver: key not found"
    with pytest.raises(LeaseNotFoundError):
        client.put(ns + "k", "x", lease=0x7FFF_0000_1234)
    client.revoke(lease.id)


def test_delete(client: Client, ns: str) -> None:
    for k in "abc":
        client.put(ns + k, k)
    one = client.delete(ns + "a", prev_kv=True)
    assert one.deleted == 1 and [kv.value for kv in one.prev_kvs] == [b"a"]
    assert client.delete(ns + "a").deleted == 0
    rest = client.delete(ns, prefix=True)
    assert rest.deleted == 2 and rest.prev_kvs == []
    assert client.get(ns, prefix=True).count == 0


def test_txn_compare_targets(client: Client, ns: str) -> None:
    k = ns + "k"
    put = client.put(k, "v1")
    lease = client.grant(30)
    hold = [
        Compare.value(k) == "v1",
        Compare.value(k) != "other",
        Compare.value(k) > "v0",
        Compare.value(k) < "v2",
        Compare.version(k) == 1,
        Compare.version(k) > 0,
        Compare.create_revision(k) == put.revision,
        Compare.mod_revision(k).lt(put.revision + 1),
        Compare.mod_revision(k).gt(put.revision - 1),
        Compare.lease(k) == 0,
        Compare.create_revision(ns + "absent") == 0,
    ]
    for c in hold:
        assert client.txn([c]).succeeded, c
    for c in [
        Compare.value(k) == "v2",
        Compare.version(k) != 1,
        Compare.mod_revision(k) > put.revision,
        Compare.lease(k) == lease.id,
        Compare.create_revision(ns + "absent") != 0,
    ]:
        assert not client.txn([c]).succeeded, c
    r = client.txn(hold, [Op.put(k, "v2", prev_kv=True), Op.get(k), Op.delete(ns + "none")])
    assert r.succeeded
    p, g, d = r.responses
    assert isinstance(p, PutResponse) and p.prev_kv is not None and p.prev_kv.value == b"v1"
    assert isinstance(g, GetResponse) and g.value == b"v2"
    assert getattr(d, "deleted", None) == 0
    # the failure branch, and a nested txn inside it
    r = client.txn(
        [Compare.value(k) == "v1"],
        [Op.put(k, "never")],
        [Op.txn([Compare.value(k) == "v2"], [Op.put(k, "v3")]), Op.get(k)],
    )
    assert not r.succeeded
    nested, g = r.responses
    assert getattr(nested, "succeeded", None) is True
    assert isinstance(g, GetResponse) and g.value == b"v3"
    # prefix compare: every key in the range must satisfy it
    client.put(ns + "p/1", "x")
    client.put(ns + "p/2", "x")
    assert client.txn([Compare.value(ns + "p/", prefix=True) == "x"]).succeeded
    client.put(ns + "p/3", "y")
    assert not client.txn([Compare.value(ns + "p/", prefix=True) == "x"]).succeeded
    client.revoke(lease.id)


def test_txn_cas_counter_under_contention(endpoints: list[str], ns: str) -> None:
    """Four threads increment one counter with compare-and-swap: no update is lost."""
    key, per_thread, threads = ns + "counter", 15, 4
    with Client(endpoints) as c:
        c.put(key, "0")
        conflicts = []

        def worker() -> None:
            done = 0
            while done < per_thread:
                kv = c.get(key).kv
                assert kv is not None
                r = c.txn(
                    [Compare.mod_revision(key) == kv.mod_revision],
                    [Op.put(key, str(int(kv.value) + 1))],
                )
                if r.succeeded:
                    done += 1
                else:
                    conflicts.append(1)

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert c.get(key).value == str(per_thread * threads).encode()
        kv = c.get(key).kv
        assert kv is not None and kv.version == per_thread * threads + 1


def test_compaction_and_revision_errors(client: Client, ns: str) -> None:
    first = client.put(ns + "k", "1").revision
    second = client.put(ns + "k", "2").revision
    client.compact(second)
    with pytest.raises(CompactedError) as e:
        client.get(ns + "k", revision=first)
    assert e.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert "compacted" in e.value.message
    assert client.get(ns + "k", revision=second).value == b"2"
    with pytest.raises(FutureRevisionError):
        client.get(ns + "k", revision=second + 10_000)


def test_invalid_argument_carries_code_and_message(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        client.put("", "v")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == "etcdserver: key is not provided"
    assert e.value.endpoint == client.current_endpoint
    assert "INVALID_ARGUMENT" in str(e.value)


async def test_async_kv(aclient: AsyncClient, ns: str) -> None:
    r = await aclient.put(ns + "a", "1")
    assert (await aclient.get(ns + "a")).value == b"1"
    t = await aclient.txn(
        [Compare.mod_revision(ns + "a") == r.revision], [Op.put(ns + "a", "2"), Op.get(ns + "a")]
    )
    assert t.succeeded and getattr(t.responses[1], "value", None) == b"2"
    t = await aclient.txn([Compare.value(ns + "a") == "1"], [], [Op.get(ns + "a")])
    assert not t.succeeded
    await aclient.put(ns + "b", "3")
    assert [kv.value for kv in await aclient.get(ns, prefix=True)] == [b"2", b"3"]
    d = await aclient.delete(ns, prefix=True, prev_kv=True)
    assert d.deleted == 2 and len(d.prev_kvs) == 2
    with pytest.raises(InvalidArgumentError):
        await aclient.put("", "x")
    members = await aclient.member_list()
    assert len(members) >= 1
    st = await aclient.status()
    assert st.leader != 0 and st.header.revision >= d.revision
    assert await aclient.alarms() == []


def test_cluster_basics(client: Client) -> None:
    members = client.member_list()
    assert members and all(m.client_urls for m in members)
    st = client.status()
    assert st.endpoint == client.current_endpoint
    assert st.leader in {m.id for m in members}
    assert st.version and st.db_size > 0 and st.raft_term >= 1
    assert client.alarms() == []
