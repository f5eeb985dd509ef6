"""The lessor: grant / revoke / attach, expiry on the leader only, checkpoints, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.lease import (
    FOREVER,
    LEASE_BUCKET,
    MAX_LEASE_TTL,
    LeaseError,
    LeaseExistsError,
    LeaseExpiredError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    Lessor,
    NotPrimaryError,
    lease_key,
    min_lease_ttl,
)
from cluster.mvcc import DeleteRangeRequest, KVStore
from cluster.mvcc import LeaseNotFoundError as MVCCLeaseNotFoundError
from cluster.proto.leasepb import lease_pb2
from cluster.storage.backend import Backend

QUOTA = 64 * 1024 * 1024
T0 = 1000.0  # an arbitrary monotonic clock reading


class Member:
    """A backend and a lessor over it; ``restart`` closes the backend and reopens both."""

    def __init__(self, path: str, **lessor_args: object) -> None:
        self.path = path
        self.lessor_args = lessor_args
        self.backend = Backend(path, quota_bytes=QUOTA)
        self.lessor = Lessor(self.backend, **lessor_args)  # type: ignore[arg-type]

    def restart(self, **lessor_args: object) -> Lessor:
        self.backend.close()  # commits the batch, as on a clean shutdown
        self.backend = Backend(self.path, quota_bytes=QUOTA)
        self.lessor = Lessor(self.backend, **{**self.lessor_args, **lessor_args})  # type: ignore[arg-type]
        return self.lessor

    def close(self) -> None:
        self.backend.close()


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(str(tmp_path / "member" / "snap" / "db"), min_ttl=5)
    yield m
    m.close()


@pytest.fixture
def lessor(member: Member) -> Lessor:
    return member.lessor


@pytest.fixture
def leader(lessor: Lessor) -> Lessor:
    lessor.promote(T0, extend=0.0)
    return lessor


def stored(backend: Backend, lease_id: int) -> lease_pb2.Lease | None:
    """The record in the backend's batch (what the next commit makes durable)."""
    raw = backend.batch().get(LEASE_BUCKET, lease_key(lease_id))
    if raw is None:
        return None
    record = lease_pb2.Lease()
    record.ParseFromString(raw)
    return record


# -- minimum TTL ----------------------------------------------------------------------


def test_min_lease_ttl_follows_etcds_formula() -> None:
    assert min_lease_ttl() == 2  # 15 ticks of 100 ms = 1.5 s, rounded up
    assert min_lease_ttl(100, 5000) == 8  # 75 ticks = 7.5 s
    assert min_lease_ttl(50, 1000) == 2  # 30 ticks of 50 ms = 1.5 s
    assert min_lease_ttl(200, 2000) == 3  # 15 ticks of 200 ms = 3 s exactly
    with pytest.raises(ValueError):
        min_lease_ttl(0, 1000)


# -- grant / revoke / attach ----------------------------------------------------------


def test_grant_persists_and_raises_ttl_to_minimum(member: Member, lessor: Lessor) -> None:
    short = lessor.grant(1, 1, T0)
    long = lessor.grant(2, 60, T0)
    assert (short.ttl, long.ttl) == (5, 60)
    assert lessor.leases() == [1, 2]
    assert lessor.exists(2) and not lessor.exists(3)
    assert lessor.lookup(2) is long and lessor.lookup(3) is None
    record = stored(member.backend, 1)
    assert record is not None and (record.ID, record.TTL, record.RemainingTTL) == (1, 5, 0)


def test_bucket_key_is_big_endian_twos_complement(member: Member, lessor: Lessor) -> None:
    lessor.grant(0x0102030405060708, 10, T0)
    lessor.grant(-2, 10, T0)
    member.backend.commit()
    keys = [k for k, _ in member.backend.range(LEASE_BUCKET, b"\x00", b"\xff" * 9)]
    assert keys == [bytes.fromhex("0102030405060708"), b"\xff" * 7 + b"\xfe"]


def test_grant_errors_carry_etcds_messages(lessor: Lessor) -> None:
    lessor.grant(7, 10, T0)
    with pytest.raises(LeaseExistsError, match=r"^etcdserver: lease already exists$"):
        lessor.grant(7, 20, T0)
    with pytest.raises(LeaseTTLTooLargeError, match=r"^etcdserver: too large lease TTL$") as exc:
        lessor.grant(8, MAX_LEASE_TTL + 1, T0)
    assert exc.value.grpc_code == "OUT_OF_RANGE"
    with pytest.raises(LeaseNotFoundError, match=r"^etcdserver: requested lease not found$"):
        lessor.grant(0, 10, T0)
    assert lessor.grant(8, MAX_LEASE_TTL, T0).ttl == MAX_LEASE_TTL
    assert lessor.lookup(7).ttl == 10  # type: ignore[union-attr]


def test_unknown_lease_is_not_found_everywhere(leader: Lessor) -> None:
    for call in (
        lambda: leader.revoke(9),
        lambda: leader.renew(9, T0),
        lambda: leader.time_to_live(9, T0),
        lambda: leader.attach(9, b"k"),
        lambda: leader.detach(9, b"k"),
        lambda: leader.rebind(b"k", 9),
    ):
        with pytest.raises(LeaseNotFoundError) as exc:
            call()
        assert exc.value.grpc_code == "NOT_FOUND"
    leader.checkpoint(9, 5, T0)  # etcd ignores checkpoints of unknown leases
    assert leader.leases() == []


def test_revoke_returns_sorted_keys_and_deletes_in_the_open_batch(
    member: Member, lessor: Lessor
) -> None:
    lessor.grant(1, 10, T0)
    lessor.grant(2, 10, T0)
    for key in (b"c", b"a", b"b"):
        lessor.attach(1, key)
    lessor.attach(2, b"z")
    member.backend.commit()
    assert lessor.revoke(1) == [b"a", b"b", b"c"]
    assert lessor.leases() == [2]
    assert lessor.get_lease(b"a") == 0 and lessor.get_lease(b"z") == 2
    # Written into the batch, not committed: it commits with the keys' deletion.
    assert stored(member.backend, 1) is None
    assert member.backend.get(LEASE_BUCKET, lease_key(1)) is not None
    member.backend.commit()
    assert member.backend.get(LEASE_BUCKET, lease_key(1)) is None
    with pytest.raises(LeaseNotFoundError):
        lessor.revoke(1)


def test_attach_detach_rebind(lessor: Lessor) -> None:
    lessor.grant(1, 10, T0)
    lessor.grant(2, 10, T0)
    lessor.attach(1, b"k")
    assert lessor.get_lease(b"k") == 1
    lessor.attach(2, b"k")  # a key has one lease: attaching moves it
    assert lessor.time_to_live(1, T0)[2] == [] and lessor.time_to_live(2, T0)[2] == [b"k"]
    lessor.detach(1, b"k")  # not attached to 1: nothing changes
    assert lessor.get_lease(b"k") == 2
    lessor.detach(2, b"k")
    assert lessor.get_lease(b"k") == 0 and lessor.time_to_live(2, T0)[2] == []
    lessor.rebind(b"k", 1)
    lessor.rebind(b"k", 2)
    assert lessor.time_to_live(1, T0)[2] == [] and lessor.get_lease(b"k") == 2
    with pytest.raises(LeaseNotFoundError):
        lessor.rebind(b"k", 3)
    assert lessor.get_lease(b"k") == 2  # a refused rebind changes nothing
    lessor.rebind(b"k", 0)
    assert lessor.get_lease(b"k") == 0 and lessor.time_to_live(2, T0)[2] == []
    lessor.rebind(b"gone", 0)  # a key without a lease: no-op


def test_store_puts_and_revoke_delete_at_one_revision(member: Member, lessor: Lessor) -> None:
    store = KVStore(member.backend, lease_exists=lessor.exists)
    lessor.grant(1, 10, T0)
    for key in (b"b", b"a"):
        kv = store.put(key, b"v", lease=1).changes[0]
        lessor.rebind(kv.key, kv.lease)
    store.put(b"free", b"v")
    with pytest.raises(MVCCLeaseNotFoundError):
        store.put(b"x", b"v", lease=2)
    keys = lessor.revoke(1)
    before = store.current_revision
    store.txn(success=[DeleteRangeRequest(key) for key in keys])
    assert store.current_revision == before + 1
    assert [kv.key for kv in store.range(b"\x00", b"\x00").kvs] == [b"free"]
    with pytest.raises(MVCCLeaseNotFoundError):
        store.put(b"c", b"v", lease=1)


# -- persistence ----------------------------------------------------------------------


def test_leases_and_checkpoints_survive_restart(member: Member, lessor: Lessor) -> None:
    lessor.grant(1, 100, T0)
    lessor.grant(2, 60, T0)
    lessor.grant(3, 30, T0)
    lessor.checkpoint(1, 40, T0)
    lessor.revoke(3)
    lessor.attach(1, b"k")
    recovered = member.restart()
    assert recovered.leases() == [1, 2]
    one, two = recovered.lookup(1), recovered.lookup(2)
    assert one is not None and two is not None
    assert (one.ttl, one.remaining_ttl, one.expiry) == (100, 40, FOREVER)
    assert (two.ttl, two.remaining_ttl) == (60, 0)
    assert one.keys == set()  # attachments come from the store
    orphans = recovered.recover_attachments([(b"k", 1), (b"j", 2), (b"free", 0), (b"lost", 3)])
    assert orphans == [(b"lost", 3)]
    assert recovered.time_to_live(1, T0)[2] == [b"k"]
    # A new leader restarts a lease from its checkpointed remaining TTL.
    recovered.promote(T0 + 500, extend=1.0)
    assert one.expiry == T0 + 500 + 1 + 40 and two.expiry == T0 + 500 + 1 + 60


def test_recovered_ttl_is_raised_to_a_larger_minimum(member: Member, lessor: Lessor) -> None:
    lessor.grant(1, 6, T0)
    recovered = member.restart(min_ttl=9)
    assert recovered.lookup(1).ttl == 9  # type: ignore[union-attr]


def test_recover_rereads_the_backend(member: Member, lessor: Lessor) -> None:
    lessor.grant(1, 10, T0)
    lessor.attach(1, b"k")
    member.backend.commit()
    lessor.grant(2, 10, T0)
    member.backend.batch().abort()  # e.g. the batch was lost to the quota
    lessor.recover()
    assert lessor.leases() == [1] and lessor.get_lease(b"k") == 0


# -- leader: promote / demote / expiry --------------------------------------------------


def test_follower_never_expires_leases(lessor: Lessor) -> None:
    lease = lessor.grant(1, 10, T0)
    assert lease.expiry == FOREVER and lease.demoted
    assert lessor.expired(T0 + 1e9) == []
    assert lessor.checkpoints_due(T0 + 1e9) == []
    with pytest.raises(NotPrimaryError) as exc:
        lessor.renew(1, T0)
    assert exc.value.grpc_message == "etcdserver: not leader"
    assert lessor.time_to_live(1, T0 + 1e9) == (10, 10, [])


def test_promote_extends_expiry(lessor: Lessor) -> None:
    lessor.grant(1, 10, T0)
    lessor.promote(T0 + 100, extend=1.5)
    assert lessor.is_primary
    assert lessor.expired(T0 + 111.4) == []
    assert lessor.expired(T0 + 111.5) == [1]


def test_grant_on_the_leader_starts_the_countdown(leader: Lessor) -> None:
    lease = leader.grant(1, 10, T0 + 5)
    assert lease.expiry == T0 + 15
    assert leader.time_to_live(1, T0 + 7.9) == (10, 7, [])  # truncated, as etcd
    assert leader.expired(T0 + 14.9) == []
    assert leader.expired(T0 + 15) == [1]


def test_demote_means_no_expiry(leader: Lessor) -> None:
    leader.grant(1, 10, T0)
    leader.demote()
    assert not leader.is_primary
    assert leader.lookup(1).expiry == FOREVER  # type: ignore[union-attr]
    assert leader.expired(T0 + 1e6) == []
    leader.promote(T0 + 1e6, extend=0.0)
    assert leader.expired(T0 + 1e6 + 9) == []
    assert leader.expired(T0 + 1e6 + 10) == [1]


def test_expired_is_bounded_and_not_repeated(member: Member) -> None:
    lessor = member.restart(expired_retry_interval=3.0)
    lessor.promote(T0, extend=0.0)
    for lease_id in range(1, 11):
        lessor.grant(lease_id, 10, T0 + lease_id / 100)
    now = T0 + 20
    batches = [lessor.expired(now, limit=3) for _ in range(5)]
    assert [len(b) for b in batches] == [3, 3, 3, 1, 0]
    assert sorted(i for b in batches for i in b) == list(range(1, 11))
    assert batches[0] == [1, 2, 3]  # soonest expiry first
    assert lessor.expired(now + 2.9, limit=100) == []
    for lease_id in range(1, 9):  # their revokes were applied
        lessor.revoke(lease_id)
    assert sorted(lessor.expired(now + 3, limit=100)) == [9, 10]  # retried
    assert lessor.expired(now + 3, limit=100) == []


def test_expired_default_limit_is_half_the_revoke_rate(member: Member) -> None:
    lessor = member.restart(revoke_rate=8)
    lessor.promote(T0, extend=0.0)
    for lease_id in range(1, 7):
        lessor.grant(lease_id, 5, T0)
    assert len(lessor.expired(T0 + 5)) == 4
    with pytest.raises(ValueError):
        lessor.expired(T0 + 5, limit=0)


def test_renew(leader: Lessor) -> None:
    leader.grant(1, 10, T0)
    assert leader.renew(1, T0 + 8) == 10
    assert leader.expired(T0 + 17.9) == []
    assert leader.time_to_live(1, T0 + 9) == (10, 9, [])
    assert leader.expired(T0 + 18) == [1]
    with pytest.raises(LeaseExpiredError) as exc:
        leader.renew(1, T0 + 18)
    assert isinstance(exc.value, LeaseNotFoundError)
    assert leader.time_to_live(1, T0 + 19.5)[1] == -1  # expired, revoke not yet applied


def test_renew_postpones_a_reported_expiry(leader: Lessor) -> None:
    leader.grant(1, 10, T0)
    assert leader.expired(T0 + 10) == [1]
    leader.demote()  # the revoke was lost with the leadership
    leader.promote(T0 + 11, extend=0.0)
    leader.renew(1, T0 + 12)
    assert leader.expired(T0 + 21.9) == []
    assert leader.expired(T0 + 22) == [1]


def test_promote_spreads_leases_expiring_together(member: Member) -> None:
    lessor = member.restart(revoke_rate=8)  # at most 6 (3/4 of the rate) per second
    for lease_id in range(1, 21):
        lessor.grant(lease_id, 10, T0)
    lessor.promote(T0, extend=2.0)
    expiries = sorted(lessor.lookup(i).expiry - T0 for i in range(1, 21))  # type: ignore[union-attr]
    assert expiries[:6] == [12.0] * 6
    assert expiries[6:] == pytest.approx([12.0 + k / 6 for k in range(7, 21)])
    for start in range(12, 16):
        assert sum(start <= e < start + 1 for e in expiries) <= 6
    assert lessor.leases()[:6] == [1, 2, 3, 4, 5, 6]


def test_promote_leaves_few_leases_alone(member: Member) -> None:
    lessor = member.restart(revoke_rate=8)
    for lease_id in range(1, 8):
        lessor.grant(lease_id, 10, T0)
    lessor.promote(T0, extend=0.0)
    assert {lessor.lookup(i).expiry for i in range(1, 8)} == {T0 + 10}  # type: ignore[union-attr]


# -- checkpoints ----------------------------------------------------------------------


@pytest.fixture
def checkpointing(member: Member) -> Lessor:
    lessor = member.restart(checkpointing=True, checkpoint_interval=300.0)
    lessor.promote(T0, extend=0.0)
    return lessor


def test_checkpoints_due_every_interval(member: Member, checkpointing: Lessor) -> None:
    lessor = checkpointing
    lessor.grant(1, 1000, T0)
    lessor.grant(2, 300, T0)  # not longer than the interval: never checkpointed
    assert lessor.checkpoints_due(T0 + 299.9) == []
    due = lessor.checkpoints_due(T0 + 300.5)
    assert due == [(1, 700)]  # 699.5 s left, rounded up
    assert lessor.checkpoints_due(T0 + 300.5) == []
    lessor.checkpoint(1, 700, T0 + 301)  # applied through raft
    assert stored(member.backend, 1).RemainingTTL == 700  # type: ignore[union-attr]
    assert lessor.lookup(1).expiry == T0 + 1000  # type: ignore[union-attr]
    assert lessor.checkpoints_due(T0 + 600) == []
    assert lessor.checkpoints_due(T0 + 601) == [(1, 399)]
    lessor.checkpoint(1, 399, T0 + 601)
    assert lessor.checkpoints_due(T0 + 901) == [(1, 99)]
    lessor.checkpoint(1, 99, T0 + 901)
    assert lessor.checkpoints_due(T0 + 999) == []  # 99 s is not longer than the interval


def test_checkpoint_survives_leader_change(member: Member, checkpointing: Lessor) -> None:
    checkpointing.grant(1, 1000, T0)
    ((lease_id, remaining),) = checkpointing.checkpoints_due(T0 + 400)
    checkpointing.checkpoint(lease_id, remaining, T0 + 400)
    recovered = member.restart()
    recovered.promote(T0 + 5000, extend=1.0)
    assert recovered.time_to_live(1, T0 + 5000) == (1000, 601, [])


def test_no_checkpoint_for_a_lease_with_its_full_ttl_left(checkpointing: Lessor) -> None:
    checkpointing.grant(1, 1000, T0)
    checkpointing.renew(1, T0 + 300)  # just renewed: nothing worth recording
    assert checkpointing.checkpoints_due(T0 + 300) == []


def test_renew_queues_a_reset_of_the_remaining_ttl(checkpointing: Lessor) -> None:
    lessor = checkpointing
    lessor.grant(1, 1000, T0)
    assert lessor.checkpoints_due(T0 + 300) == [(1, 700)]
    lessor.checkpoint(1, 700, T0 + 300)
    assert lessor.renew(1, T0 + 310) == 1000
    assert lessor.lookup(1).expiry == T0 + 1310  # type: ignore[union-attr]
    assert lessor.checkpoints_due(T0 + 311) == [(1, 0)]
    assert lessor.checkpoints_due(T0 + 312) == []
    lessor.checkpoint(1, 0, T0 + 312)
    assert lessor.renew(1, T0 + 320) == 1000
    assert lessor.checkpoints_due(T0 + 321) == []  # nothing to reset


def test_checkpoints_off_by_default(leader: Lessor) -> None:
    leader.grant(1, 10_000, T0)
    assert leader.checkpoints_due(T0 + 5000) == []
    leader.checkpoint(1, 100, T0)  # from a leader that had them on: still applied
    leader.renew(1, T0 + 1)
    assert leader.checkpoints_due(T0 + 2) == [(1, 0)]


def test_checkpoints_stop_after_demote(checkpointing: Lessor) -> None:
    checkpointing.grant(1, 1000, T0)
    checkpointing.demote()
    assert checkpointing.checkpoints_due(T0 + 400) == []
    checkpointing.promote(T0 + 400, extend=0.0)
    assert checkpointing.checkpoints_due(T0 + 699) == []
    assert checkpointing.checkpoints_due(T0 + 700) == [(1, 700)]


def test_errors_share_a_base(lessor: Lessor) -> None:
    with pytest.raises(LeaseError):
        lessor.revoke(1)
