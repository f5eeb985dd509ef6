"""etcdctl 3.4's KV, txn, compaction, health and member commands against real member processes.

Most tests share one cluster (``module_cluster``), each under its own key prefix; they read
back only revisions they wrote themselves, so the compaction test cannot disturb them.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from typing import Any

import pytest

from tests.e2e.procs import Cluster, needs_etcdctl

BOTH_GRPC_SERVERS = True  # module_cluster: on grpcio's server, then on pygrpc-native

pytestmark = needs_etcdctl

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def _json(c: Cluster, *args: str, stdin: str = "") -> Any:
    return json.loads(c.etcdctl(*args, "-w", "json", stdin=stdin))


def _put(c: Cluster, key: str, value: str) -> int:
    """Put through etcdctl; the revision it created."""
    return int(_json(c, "put", key, value)["header"]["revision"])


def _pairs(resp: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(key, value) of a JSON range response; value None where etcd sent none (keys-only)."""
    return [
        (_unb64(kv["key"]), _unb64(kv["value"]) if "value" in kv else None)
        for kv in resp.get("kvs", [])
    ]


def _fails(c: Cluster, *args: str) -> str:
    """Run an etcdctl command that must fail; its stderr."""
    done = c.run_etcdctl(*args)
    assert done.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {done.stdout}"
    return done.stderr


def test_get_prefix_keys_only_range_and_limit(module_cluster: Cluster) -> None:
    c = module_cluster
    for k, v in [("/g/a", "3"), ("/g/b", "1"), ("/g/c", "2"), ("/gx", "outside")]:
        assert c.etcdctl("put", k, v).strip() == "OK"

    assert c.etcdctl("get", "--prefix", "/g/").splitlines() == [
        "/g/a",
        "3",
        "/g/b",
        "1",
        "/g/c",
        "2",
    ]
    # --keys-only prints each key followed by an empty line; the JSON kvs carry no value
    assert c.etcdctl("get", "--prefix", "/g/", "--keys-only") == "/g/a\n\n/g/b\n\n/g/c\n\n"
    resp = _json(c, "get", "--prefix", "/g/", "--keys-only")
    assert _pairs(resp) == [("/g/a", None), ("/g/b", None), ("/g/c", None)]

    # --limit: the first keys, with `more` and the full `count`
    assert c.etcdctl("get", "--prefix", "/g/", "--limit", "2").split() == ["/g/a", "3", "/g/b", "1"]
    resp = _json(c, "get", "--prefix", "/g/", "--limit=2")
    assert (resp["more"], resp["count"], len(resp["kvs"])) == (True, 3, 2)
    resp = _json(c, "get", "--prefix", "/g/", "--limit=3")
    assert (resp.get("more", False), resp["count"]) == (False, 3)

    # [key, range_end) and --from-key (etcdctl 3.4 has no --count-only)
    assert c.etcdctl("get", "/g/a", "/g/c").split() == ["/g/a", "3", "/g/b", "1"]
    assert c.etcdctl("get", "--from-key", "/g/b", "--keys-only").split() == ["/g/b", "/g/c", "/gx"]
    # a missing key prints nothing and succeeds
    assert c.etcdctl("get", "/g/missing") == ""


def test_get_sort_by_and_order(module_cluster: Cluster) -> None:
    c = module_cluster
    for k, v in [("/s/a", "3"), ("/s/b", "1"), ("/s/c", "2"), ("/s/a", "4")]:
        c.etcdctl("put", k, v)
    # /s/a: created first, modified last, version 2, the largest value

    def keys(*flags: str) -> list[str]:
        return c.etcdctl("get", "--prefix", "/s/", "--keys-only", *flags).split()

    assert keys("--sort-by=KEY", "--order=DESCEND") == ["/s/c", "/s/b", "/s/a"]
    assert keys("--order=DESCEND") == ["/s/c", "/s/b", "/s/a"]  # KEY is the default target
    assert keys("--sort-by=VALUE", "--order=ASCEND") == ["/s/b", "/s/c", "/s/a"]
    assert keys("--sort-by=CREATE", "--order=DESCEND") == ["/s/c", "/s/b", "/s/a"]
    assert keys("--sort-by=MODIFY", "--order=ASCEND") == ["/s/b", "/s/c", "/s/a"]
    assert keys("--sort-by=VERSION", "--order=DESCEND")[0] == "/s/a"
    # the limit applies after sorting
    assert keys("--sort-by=VALUE", "--order=DESCEND", "--limit=1") == ["/s/a"]
    assert keys("--sort-by=MODIFY", "--order=DESCEND", "--limit=2") == ["/s/a", "/s/c"]
    assert c.etcdctl("get", "--prefix", "/s/", "--sort-by=VALUE", "--order=DESCEND").split() == [
        "/s/a", "4", "/s/c", "2", "/s/b", "1",
    ]  # fmt: skip


def test_get_at_past_revisions(module_cluster: Cluster) -> None:
    c = module_cluster
    r1 = _put(c, "/h", "one")
    r2 = _put(c, "/h", "two")
    r3 = int(_json(c, "del", "/h")["header"]["revision"])
    assert r1 < r2 < r3

    assert c.etcdctl("get", "/h", f"--rev={r1}").split() == ["/h", "one"]
    assert c.etcdctl("get", "/h", f"--rev={r2}").split() == ["/h", "two"]
    assert c.etcdctl("get", "/h", f"--rev={r3}") == ""
    assert c.etcdctl("get", "/h") == ""
    resp = _json(c, "get", "/h", f"--rev={r1}")
    assert resp["header"]["revision"] >= r3  # the header has the current revision
    [kv] = resp["kvs"]
    assert (kv["create_revision"], kv["mod_revision"], kv["version"]) == (r1, r1, 1)
    # serializable reads see the same history
    assert c.etcdctl("get", "/h", f"--rev={r2}", "--consistency=s").split() == ["/h", "two"]

    assert FUTURE_REV in _fails(c, "get", "/h", f"--rev={r3 + 1000}")


def test_del_prefix_with_prev_kv(module_cluster: Cluster) -> None:
    c = module_cluster
    for k, v in [("/d/a", "1"), ("/d/b", "2"), ("/d/c/x", "3"), ("/dz", "kept")]:
        c.etcdctl("put", k, v)

    out = c.etcdctl("del", "--prefix", "/d/", "--prev-kv")
    assert out.splitlines() == ["3", "/d/a", "1", "/d/b", "2", "/d/c/x", "3"]
    assert c.etcdctl("get", "--prefix", "/d/") == ""
    assert c.etcdctl("get", "/dz").split() == ["/dz", "kept"]
    assert c.etcdctl("del", "--prefix", "/d/", "--prev-kv").strip() == "0"

    resp = _json(c, "del", "/dz", "--prev-kv")
    assert resp["deleted"] == 1
    assert _pairs({"kvs": resp["prev_kvs"]}) == [("/dz", "kept")]


def test_txn_from_stdin_takes_the_success_then_the_failure_branch(module_cluster: Cluster) -> None:
    c = module_cluster
    rev = _put(c, "/t/k", "v1")
    # compares; blank line; success requests; blank line; failure requests; blank line
    script = (
        f'value("/t/k") = "v1"\nmod("/t/k") = "{rev}"\n'
        'create("/t/k") > "0"\nversion("/t/k") < "2"\n'
        "\n"
        'put /t/k "v2"\nget /t/k\n'
        "\n"
        'put /t/failed "yes"\nget /t/k\n'
        "\n"
    )
    assert c.etcdctl("txn", stdin=script).splitlines() == ["SUCCESS", "", "OK", "", "/t/k", "v2"]
    assert c.etcdctl("get", "/t/failed") == ""

    # the compares no longer hold: the failure branch runs, the success branch does not
    assert c.etcdctl("txn", stdin=script).splitlines() == ["FAILURE", "", "OK", "", "/t/k", "v2"]
    assert c.etcdctl("get", "/t/failed").split() == ["/t/failed", "yes"]

    # -i prints its prompts; -w json shows `succeeded` and the responses
    out = c.etcdctl(
        "txn", "-i", stdin='version("/t/absent") = "0"\n\nput /t/absent "now"\n\ndel /t/k\n\n'
    )
    assert out.splitlines() == [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
        "SUCCESS",
        "",
        "OK",
    ]
    resp = _json(c, "txn", stdin='value("/t/absent") != "now"\n\ndel /t/k\n\ndel /t/failed\n\n')
    assert resp.get("succeeded", False) is False  # etcdctl's JSON leaves out a false field
    [op] = resp["responses"]
    assert op["Response"]["ResponseDeleteRange"]["deleted"] == 1
    assert c.etcdctl("get", "--prefix", "/t/", "--keys-only").split() == ["/t/absent", "/t/k"]


def test_compaction_then_compacted_revisions_are_refused(module_cluster: Cluster) -> None:
    c = module_cluster
    r1 = _put(c, "/cmp", "a")
    r2 = _put(c, "/cmp", "b")
    r3 = _put(c, "/cmp", "c")

    assert c.etcdctl("compaction", str(r2)).strip() == f"compacted revision {r2}"
    assert COMPACTED in _fails(c, "get", "/cmp", f"--rev={r1}")
    assert COMPACTED in _fails(c, "get", "/cmp", f"--rev={r1}", "--consistency=s")
    assert c.etcdctl("get", "/cmp", f"--rev={r2}").split() == ["/cmp", "b"]  # kept
    assert COMPACTED in _fails(c, "compaction", str(r1))  # already compacted
    assert COMPACTED in _fails(c, "compaction", str(r2))

    assert c.etcdctl("compaction", "--physical", str(r3)).strip() == f"compacted revision {r3}"
    assert COMPACTED in _fails(c, "get", "/cmp", f"--rev={r2}")
    assert c.etcdctl("get", "/cmp").split() == ["/cmp", "c"]
    assert FUTURE_REV in _fails(c, "compaction", str(r3 + 1000))


def test_endpoint_health(module_cluster: Cluster) -> None:
    c = module_cluster
    done = c.run_etcdctl("endpoint", "health")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()  # etcdctl 3.4 prints the health lines on stderr
    assert sorted(line.split(" is ")[0] for line in lines) == sorted(c.endpoints)
    assert all(" is healthy: successfully committed proposal: took = " in ln for ln in lines)
    health = _json(c, "endpoint", "health")
    assert sorted(h["endpoint"] for h in health) == sorted(c.endpoints)
    assert all(h["health"] is True for h in health), health


def test_endpoint_health_reports_a_killed_member(cluster: Cluster) -> None:
    *alive, dead = cluster.members
    dead.signal(signal.SIGKILL)
    dead.wait()
    cluster.leader(alive)  # it may have been the leader
    done = cluster.run_etcdctl("endpoint", "health", "--dial-timeout=1s", "--command-timeout=3s")
    assert done.returncode != 0
    assert f"{dead.endpoint} is unhealthy" in done.stderr
    for m in alive:
        assert f"{m.endpoint} is healthy" in done.stderr, done.stderr


def test_member_list_json(module_cluster: Cluster) -> None:
    c = module_cluster
    # Like etcd, a member publishes its client URLs through Raft shortly after it starts.
    for _ in range(100):
        resp = _json(c, "member", "list")
        if all(m.get("clientURLs") for m in resp["members"]):
            break
        time.sleep(0.1)
    members = {m["name"]: m for m in resp["members"]}
    assert sorted(members) == ["m0", "m1", "m2"]
    for p in c.members:
        got = members[p.name]
        assert got["peerURLs"] == [f"http://127.0.0.1:{p.peer}"]
        assert got["clientURLs"] == [f"http://{p.endpoint}"]
        assert not got.get("isLearner", False)
    assert len({m["ID"] for m in resp["members"]}) == 3

    # every member gives the same list; the header's ids match `endpoint status`
    statuses: list[Any] = c.statuses(c.members)
    assert {s["Status"]["header"]["cluster_id"] for s in statuses} == {resp["header"]["cluster_id"]}
    assert {s["Status"]["header"]["member_id"] for s in statuses} == {
        m["ID"] for m in members.values()
    }
    for p in c.members:
        other = json.loads(c.etcdctl("member", "list", "-w", "json", endpoints=[p]))
        assert sorted(other["members"], key=lambda m: m["ID"]) == sorted(
            resp["members"], key=lambda m: m["ID"]
        )
    table = c.etcdctl("member", "list").splitlines()
    assert sorted(line.split(", ")[0] for line in table) == sorted(
        f"{m['ID']:x}" for m in members.values()
    )


class CheckPerfTooSlow(AssertionError):
    """`check perf` failed only on its latency limits (slowest request, stddev)."""


# etcdctl 3.4 hard-codes the load phase of `check perf` at 60 s (no flag shortens it), so the
# test takes over a minute: too long for the default run; it is a `soak` test
# (`make soak`, or `pytest -m soak -k check_perf`).
@pytest.mark.soak
@pytest.mark.xfail(
    raises=CheckPerfTooSlow,
    strict=False,  # alone on the machine it passes: strict=True would fail those runs
    reason=(
        "etcdctl check perf --load=s wants every write within 0.5 s (and stddev <= 0.1 s); on "
        "this 2-core machine with the rest of the suite running beside it (pytest -n 2) the "
        "slowest write took 0.714 s (stddev 0.077 s) although throughput held at 150 writes/s; "
        "alone it passes (slowest 0.12 s, stddev 0.004 s)"
    ),
)
def test_check_perf_small_load(cluster: Cluster) -> None:
    done = cluster.run_etcdctl("check", "perf", "--load=s", timeout=150)
    out = done.stdout
    # what must hold under any load: no failed writes, the offered 150 writes/s, a clean prefix
    assert "FAIL: too many errors" not in out and "ERROR" not in out, out[-2000:]
    assert "PASS: Throughput is " in out, f"{out[-600:]}\n{done.stderr[-2000:]}"
    assert cluster.etcdctl("get", "--prefix", "/etcdctl-check-perf/", "--keys-only") == ""
    verdict = out.splitlines()[-4:]
    if done.returncode != 0:
        raise CheckPerfTooSlow("\n".join(verdict))
    assert verdict[-1] == "PASS"
