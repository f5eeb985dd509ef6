"""``console.live.build_sample``: the dashboard's leader-change feed across samples that saw
no leader (an election under way when the old leader was killed)."""

from __future__ import annotations

from typing import Any

from cluster.client import Member, Status
from cluster.client.types import ResponseHeader
from console.live import MemberProbe, build_sample, hex_id

A, B, C = 0xA, 0xB, 0xC


def _probes(leader: int, *, dead: int = 0) -> list[MemberProbe]:
    """Three members; each alive one says ``leader`` (0: none) leads."""
    out = []
    for mid in (A, B, C):
        member = Member(mid, f"m{mid:x}", [], [f"http://127.0.0.1:{mid}"])
        status = None
        if mid != dead:
            header = ResponseHeader(cluster_id=1, member_id=mid, revision=5, raft_term=2)
            status = Status("ep", header, "3.5.0", 1, 1, leader, 9, 2, 9, [], False)
        out.append(MemberProbe(member, status, "" if status else "unreachable"))
    return out


def _run(*rounds: list[MemberProbe]) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    for t, probes in enumerate(rounds):
        samples.append(build_sample(probes, at=float(t), previous=samples[-1] if samples else None))
    return samples


def test_a_change_through_a_leaderless_sample_is_one_change() -> None:
    first, electing, unreachable, elected = _run(
        _probes(A), _probes(0, dead=A), [], _probes(B, dead=A)
    )
    assert first["leader"] == hex_id(A) and not first["leader_changed"]
    assert electing["leader"] == "" and not electing["leader_changed"]
    assert unreachable["last_leader"] == hex_id(A)  # nobody answered: still A as last seen
    assert elected["leader_changed"] and elected["previous_leader"] == hex_id(A)
    assert elected["leader"] == hex_id(B) and elected["last_leader"] == hex_id(B)


def test_the_same_leader_again_is_no_change() -> None:
    samples = _run(_probes(A), _probes(0), _probes(A), _probes(A))
    assert not any(s["leader_changed"] for s in samples)
