"""The real ``etcdctl watch`` (3.4) against 3 member processes, writes going through other members.

Each watch runs as a subprocess whose stdout lines are read with a deadline and which is
killed by its PID at the end. A watch without ``--rev`` must be established before the
writes it should see: ``watching`` puts a sentinel value until the watch prints it.
The last test SIGKILLs the member serving a watch given every endpoint: etcdctl's client
resumes on another member from the last revision it saw, and the printed events must
show every write exactly once, in order.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from contextlib import AbstractContextManager
from typing import Any

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.e2e.procs import BackgroundEtcdctl as Watch
from tests.e2e.procs import Cluster, Proc, background, needs_etcdctl

BOTH_GRPC_SERVERS = True  # module_cluster: on grpcio's server, then on pygrpc-native

pytestmark = needs_etcdctl


def watch(c: Cluster, *args: str, endpoints: list[Proc]) -> AbstractContextManager[Watch]:
    """``etcdctl watch <args>`` in the background, killed by its PID at the end."""
    return background("watch", *args, endpoints=endpoints)


def watching(c: Cluster, w: Watch, key: str, *, via: Proc) -> str:
    """Put sentinel values on ``key`` until ``w`` prints one; then read up to the last
    sentinel's value (with ``--prev-kv`` too: it is printed once, as the new value of the
    last put). Returns that value, ``key``'s value now."""
    n = 0
    while True:
        n += 1
        c.etcdctl("put", key, f"ready-{n}", endpoints=[via])
        try:
            first = w.queue.get(timeout=0.3)
            break
        except queue.Empty:
            assert n < 50, "etcdctl watch never saw a sentinel"
    assert first == "PUT", first
    last = f"ready-{n}"
    while w.line() != last:
        pass
    return last


def _json_put(c: Cluster, key: str, value: str, via: Proc) -> int:
    out = json.loads(c.etcdctl("put", key, value, "-w", "json", endpoints=[via]))
    return int(out["header"]["revision"])


def _event(event: dict[str, Any]) -> tuple[str, str, str, int]:
    """(type, key, value, mod_revision) of a JSON event."""
    kv = event["kv"]
    return (
        "DELETE" if event.get("type") == 1 else "PUT",
        base64.b64decode(kv["key"]).decode(),
        base64.b64decode(kv.get("value", "")).decode(),
        int(kv["mod_revision"]),
    )


# -- against one member, writes through the others ----------------------------------------------


def test_watch_key_sees_puts_and_deletes_made_through_other_members(
    module_cluster: Cluster,
) -> None:
    c = module_cluster
    m0, m1, m2 = c.members
    with watch(c, "wk/key", endpoints=[m0]) as w:
        watching(c, w, "wk/key", via=m1)
        c.etcdctl("put", "wk/key", "v1", endpoints=[m1])
        c.etcdctl("put", "wk/key", "v2", endpoints=[m2])
        c.etcdctl("put", "wk/key2", "not watched", endpoints=[m2])
        c.etcdctl("del", "wk/key", endpoints=[m1])
        c.etcdctl("put", "wk/key", "v3", endpoints=[m2])
        assert w.lines(12) == [
            "PUT", "wk/key", "v1",
            "PUT", "wk/key", "v2",
            "DELETE", "wk/key", "",
            "PUT", "wk/key", "v3",
        ]  # fmt: skip
        w.quiet()


def test_watch_prefix(module_cluster: Cluster) -> None:
    c = module_cluster
    m0, m1, m2 = c.members
    with watch(c, "--prefix", "wp/", endpoints=[m1]) as w:
        watching(c, w, "wp/ready", via=m2)
        c.etcdctl("put", "wp/a", "1", endpoints=[m0])
        c.etcdctl("put", "wq", "outside", endpoints=[m2])
        c.etcdctl("put", "wp/b/c", "2", endpoints=[m2])
        c.etcdctl("del", "--prefix", "wp/", endpoints=[m0])  # one revision, three deletes
        assert w.lines(15) == [
            "PUT", "wp/a", "1",
            "PUT", "wp/b/c", "2",
            "DELETE", "wp/a", "",
            "DELETE", "wp/b/c", "",
            "DELETE", "wp/ready", "",
        ]  # fmt: skip
        w.quiet()


def test_watch_prev_kv(module_cluster: Cluster) -> None:
    c = module_cluster
    m0, m1, m2 = c.members
    with watch(c, "--prev-kv", "wv/key", endpoints=[m2]) as w:
        last = watching(c, w, "wv/key", via=m0)
        c.etcdctl("put", "wv/key", "new", endpoints=[m0])
        c.etcdctl("del", "wv/key", endpoints=[m1])
        c.etcdctl("put", "wv/key", "again", endpoints=[m1])  # a creation: no previous value
        assert w.lines(13) == [
            "PUT", "wv/key", last, "wv/key", "new",
            "DELETE", "wv/key", "new", "wv/key", "",
            "PUT", "wv/key", "again",
        ]  # fmt: skip


def test_watch_rev_replays_history_then_goes_live(module_cluster: Cluster) -> None:
    c = module_cluster
    m0, m1, m2 = c.members
    revs = [_json_put(c, "wr/k", f"old{i}", m1) for i in range(5)]
    with watch(c, "wr/k", "--rev", str(revs[2]), "-w", "json", endpoints=[m0]) as w:
        revs += [_json_put(c, "wr/k", f"new{i}", m2) for i in range(3)]
        events: list[tuple[str, str, str, int]] = []
        while len(events) < 6:
            resp = json.loads(w.line())
            assert int(resp["Header"]["member_id"]) != 0
            events += [_event(e) for e in resp["Events"]]
        values = ["old2", "old3", "old4", "new0", "new1", "new2"]
        assert events == [("PUT", "wr/k", v, r) for v, r in zip(values, revs[2:], strict=True)]
        w.quiet()


def test_watch_from_a_compacted_revision_is_canceled(module_cluster: Cluster) -> None:
    c = module_cluster
    revs = [_json_put(c, "wc/k", str(i), c.members[0]) for i in range(3)]
    c.etcdctl("compact", str(revs[2]))
    with watch(c, "wc/k", "--rev", str(revs[0]), endpoints=[c.members[1]]) as w:
        assert w.popen.wait(10) != 0
        err = w.stderr()
    assert "watch was canceled (etcdserver: mvcc: required revision has been compacted)" in err


def test_watch_of_an_empty_range_is_canceled_with_etcds_reason(module_cluster: Cluster) -> None:
    c = module_cluster
    with watch(c, "wz/b", "wz/a", endpoints=[c.members[2]]) as w:
        assert w.popen.wait(10) != 0
        assert "watch was canceled (mvcc: watcher range is empty)" in w.stderr()


# -- a member killed during a watch ---------------------------------------------------------------


def _member_ids(c: Cluster) -> dict[int, Proc]:
    statuses: list[Any] = c.statuses(c.members)
    return {
        int(s["Status"]["header"]["member_id"]): m for m, s in zip(c.members, statuses, strict=True)
    }


class Writer(threading.Thread):
    """Puts wk/0000, wk/0001, ... through the given members in turn, each once."""

    def __init__(self, endpoints: list[str], count: int) -> None:
        super().__init__(daemon=True)
        self.channels = [grpc.insecure_channel(ep) for ep in endpoints]
        self.count = count
        self.done: dict[str, int] = {}  # key -> revision, for acknowledged puts
        self.unsure: set[str] = set()  # puts that failed: applied or not
        self.progress = threading.Semaphore(0)

    def run(self) -> None:
        stubs = [pb_grpc.KVStub(ch) for ch in self.channels]
        for i in range(self.count):
            key = f"wk/{i:04d}"
            try:
                resp = stubs[i % len(stubs)].Put(pb.PutRequest(key=key.encode()), timeout=5)
                self.done[key] = resp.header.revision
            except grpc.RpcError:
                self.unsure.add(key)
            self.progress.release()
            time.sleep(0.01)
        for ch in self.channels:
            ch.close()


def test_watch_resumes_on_another_member_after_a_sigkill(cluster: Cluster) -> None:
    c = cluster
    ids = _member_ids(c)
    first = _json_put(c, "wk/start", "0", c.members[0])
    with watch(c, "--prefix", "wk/", "--rev", str(first), "-w", "json", endpoints=c.members) as w:
        resp = json.loads(w.line())
        served_by = ids[int(resp["Header"]["member_id"])]
        assert [_event(e) for e in resp["Events"]] == [("PUT", "wk/start", "0", first)]
        if c.leader(c.members) is served_by:  # keep the quorum's leader: kill a follower
            target = next(i for i, m in ids.items() if m is not served_by)
            c.etcdctl("move-leader", f"{target:x}", endpoints=[served_by])
            assert c.leader(c.members) is not served_by
        writer = Writer([m.endpoint for m in c.members if m is not served_by], 150)
        writer.start()
        for _ in range(50):
            assert writer.progress.acquire(timeout=10)
        served_by.kill()  # SIGKILL, by its PID
        writer.join(60)
        assert not writer.is_alive()
        assert len(writer.done) > 140, writer.unsure

        seen: list[tuple[str, str, str, int]] = []
        deadline = time.monotonic() + 30
        while not set(writer.done) <= {key for _, key, _, _ in seen}:
            resp = json.loads(w.line(max(0.01, deadline - time.monotonic())))
            seen += [_event(e) for e in resp["Events"]]
        # the last events came from another member: etcdctl resumed there
        assert ids[int(resp["Header"]["member_id"])] is not served_by
        w.quiet(1.0)

    keys = [key for _, key, _, _ in seen]
    assert len(keys) == len(set(keys)), "an event was printed twice"
    assert set(keys) <= set(writer.done) | writer.unsure
    revisions = [rev for _, _, _, rev in seen]
    assert revisions == sorted(revisions)
    assert all(kind == "PUT" for kind, _, _, _ in seen)
    assert all(rev == writer.done[key] for _, key, _, rev in seen if key in writer.done)
