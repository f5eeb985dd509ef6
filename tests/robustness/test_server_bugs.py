"""Server bugs the robustness work found, each reproduced deterministically.

Request ids are not unique across restarts (``cluster/server/member.py``): a member numbers
its proposals (and read contexts) with ``itertools.count(1)`` and, applying an entry, answers
the request waiting under ``(origin, request_id)``. A member restarted counts from 1 again, so
an entry its previous life proposed that it only applies after the restart answers whichever
new request drew the same number: a client is told its write succeeded at another write's
revision. etcd draws request ids from ``idutil.Generator`` (member id + a counter starting at
the current time in ms), unique across restarts.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.e2e.procs import Proc
from tests.robustness.faults import ProxyControl, find_leader, wait_serving
from tests.robustness.harness import make_cluster
from tests.robustness.traffic import channel, status

pytestmark = pytest.mark.etcdctl


async def _put(endpoint: str, key: str, value: bytes, timeout: float) -> pb.PutResponse | str:
    async with channel(endpoint) as chan:
        try:
            resp: pb.PutResponse = await pb_grpc.KVStub(chan).Put(
                pb.PutRequest(key=key.encode(), value=value), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            return f"{err.code().name}: {err.details()}"
    return resp


async def _get(endpoint: str, key: str, revision: int = 0) -> pb.RangeResponse:
    async with channel(endpoint) as chan:
        resp: pb.RangeResponse = await pb_grpc.KVStub(chan).Range(
            pb.RangeRequest(key=key.encode(), revision=revision), timeout=5
        )
    return resp


async def _knows_leader(m: Proc, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        st = await status(m.endpoint, timeout=0.5)
        if st is not None and st.leader:
            return True
        await asyncio.sleep(0.005)
    return False


async def test_a_restarted_member_never_answers_a_request_with_an_older_entrys_result(
    tmp_path: Path,
) -> None:
    # A long election timeout: the follower cut off from the leader below keeps forwarding
    # to it (rather than campaigning) for a few seconds.
    args = ["--election-timeout", "4000", "--heartbeat-interval", "100"]
    cluster, routes = make_cluster(tmp_path, args, with_proxy=True)
    proxy = ProxyControl(routes, tmp_path / "proxy.log")
    await proxy.start()
    cluster.start()
    try:
        leader = await find_leader(cluster.members, timeout=30)
        assert leader is not None
        for m in cluster.members:
            assert await wait_serving(m)
            st = await status(m.endpoint)
            assert st is not None
            await proxy.command(f"id {m.name} {st.header.member_id:x}")
        follower = next(m for m in cluster.members if m is not leader)

        # The follower stops hearing from the leader (its own messages still get through).
        await proxy.command(f"block {leader.name} {follower.name} blackhole")
        # Plenty for it to catch up on later: ~12 MB of entries it never receives now.
        big = b"x" * 60_000
        sem = asyncio.Semaphore(8)

        async def fill(i: int) -> None:
            async with sem:
                resp = await _put(leader.endpoint, f"/fill/{i:04}", big, timeout=10)
                assert isinstance(resp, pb.PutResponse), resp

        await asyncio.gather(*(fill(i) for i in range(200)))
        # A write sent to the follower: forwarded, committed by the leader and the other
        # follower, never applied (nor answered) by the follower itself.
        old = await _put(follower.endpoint, "/old", b"old", timeout=1.0)
        assert isinstance(old, str), f"the follower answered {old}"
        for _ in range(50):
            got = await _get(leader.endpoint, "/old")
            if got.kvs:
                break
            await asyncio.sleep(0.05)
        assert got.kvs, "the forwarded write was not committed"
        old_revision = got.kvs[0].mod_revision

        # Restart the follower, let it hear from the leader again, and send it new writes
        # as soon as it knows the leader, while it is still catching up.
        follower.signal(signal.SIGKILL)
        follower.wait()
        await proxy.command("heal")
        follower.start()
        assert await _knows_leader(follower, timeout=30)
        answers = await asyncio.gather(
            *(_put(follower.endpoint, f"/new/{i}", f"new-{i}".encode(), 20) for i in range(16))
        )

        # Each acknowledged put must be the write at the revision it was told.
        wrong = []
        for i, resp in enumerate(answers):
            if not isinstance(resp, pb.PutResponse):
                continue
            rev = resp.header.revision
            at = await _get(leader.endpoint, f"/new/{i}", rev)
            if at.kvs and at.kvs[0].mod_revision == rev:
                continue
            final = await _get(leader.endpoint, f"/new/{i}")
            where = final.kvs[0].mod_revision if final.kvs else "nowhere"
            wrong.append(
                f"put /new/{i} was acknowledged at revision {rev}, which is the write of /old "
                f"(at {old_revision}) its member forwarded before it was killed; /new/{i} "
                f"itself is at revision {where}"
            )
        assert not wrong, "\n".join(wrong)
    finally:
        cluster.stop()
        await proxy.stop()
