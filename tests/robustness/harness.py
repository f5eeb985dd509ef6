"""One robustness run: a 3-member cluster, recorded traffic, one fault, and every check.

``run(RunConfig(seed=N))`` starts the members (``tests.e2e.procs.Cluster``, with small
snapshot settings so snapshots, WAL release and backend transfer to a follower happen), one
watcher per member from revision 1, ``clients_per_member`` clients on each member and
``LOCKERS`` lock clients, injects the seed's fault (``faults.FaultPlan``), stops the traffic
after ``duration`` seconds, waits for the cluster to heal, then checks:

1. linearizability of the KV history (``checker``);
2. revisions and the final history, read from every member (``revisions``), including
   acknowledged writes lost, and a few Range-at-revision reads against it;
3. the lock (one holder at a time, fenced writes) and lease expiry (never early) (``locks``);
4. convergence (``Cluster.converged``: revision, applied index and HashKV agree);
5. each watcher received the final history exactly.

A ``compact-mid`` crash point run then compacts, and checks every member compacted alike.
A failing run (or any with ``keep``) leaves ``tests/artifacts/robustness/<seed>/``: the history
(``history.jsonl``), the final history, what each watcher got, the fault timeline, the members'
logs, ``report.txt`` and the command that replays the seed.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from cluster.bench.ports import free_ports
from tests.e2e.procs import ROOT, Cluster, Proc

from . import checker
from .faults import (
    SNAPSHOT_SOON,
    FaultPlan,
    Injection,
    ProxyControl,
    SmallDisk,
    SmallDiskProc,
    Timeline,
    compaction_phase,
    find_leader,
    inject,
    small_disk_unavailable,
    wait_serving,
)
from .history import (
    FAIL,
    KV,
    OK,
    UNKNOWN,
    Op,
    load_history,
    read_jsonl,
    save_history,
    write_jsonl,
)
from .locks import LockReport, check_locks
from .revisions import Event, FinalHistory, HistoryReport, check_history, check_watch, state_at
from .traffic import (
    KEYS,
    Client,
    Filler,
    Locker,
    Recorder,
    Watcher,
    fetch_history,
    range_all,
    status,
    to_kv,
)

ARTIFACTS = ROOT / "tests" / "artifacts" / "robustness"
LOCKERS = 2  # clients taking the lock (``traffic.Locker``), on as many members


@dataclass
class RunConfig:
    seed: int
    duration: float = 7.0  # seconds of traffic
    clients_per_member: int = 3
    artifacts: Path = ARTIFACTS
    keep: bool = False  # write the artifacts even when the run passes
    budget: int = checker.DEFAULT_BUDGET
    member_env: dict[str, str] = field(default_factory=dict)  # e.g. to plant a bug (planted/)

    def replay_command(self) -> str:
        cmd = f"python -m tests.robustness --seed {self.seed}"
        if self.duration != RunConfig.duration:
            cmd += f" --duration {self.duration:g}"
        if self.clients_per_member != RunConfig.clients_per_member:
            cmd += f" --clients {self.clients_per_member}"
        return cmd


@dataclass
class RunResult:
    seed: int
    fault: str
    plan: str = ""
    ops: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    checked_ops: int = 0
    linearizable: bool | None = None
    lin_detail: str = ""
    history: HistoryReport = field(default_factory=HistoryReport)
    watches_passed: int = 0
    watches: int = 0
    converged: bool = False
    problems: list[str] = field(default_factory=list)  # harness-level: cluster, watchers
    seconds: float = 0.0
    revision: int = 0
    artifact_dir: Path | None = None
    locks: LockReport = field(default_factory=LockReport)
    injected: bool = False  # the fault happened as planned (e.g. its crash point was reached)
    skipped: str = ""  # why the run could not be made here (disk_full without unshare)

    @property
    def passed(self) -> bool:
        """No check failed (a skipped run fails none)."""
        if self.skipped:
            return True
        return (
            self.linearizable is True
            and self.history.ok
            and self.watches_passed == self.watches
            and self.converged
            and not self.problems
        )

    def report(self, cfg: RunConfig) -> str:
        if self.skipped:
            return f"seed {self.seed}: SKIPPED ({self.plan}): {self.skipped}"
        lines = [
            f"seed {self.seed}: {'PASSED' if self.passed else 'FAILED'}",
            f"fault: {self.plan}" + ("" if self.injected else " (NOT injected as planned)"),
            f"operations: {self.ops} {self.by_status}; checked for linearizability: "
            f"{self.checked_ops}",
            f"final revision: {self.revision}",
            f"linearizable: {_yes_no(self.linearizable)}",
            f"acknowledged writes: {self.history.acknowledged}, lost: {self.history.lost}",
            f"locks granted: {self.locks.granted}, fenced writes: {self.locks.fenced}, "
            f"expired by their lease: {self.locks.expired}",
            f"watch checks passed: {self.watches_passed}/{self.watches}",
            f"converged (HashKV): {self.converged}",
            f"replay: {cfg.replay_command()}",
        ]
        if self.lin_detail:
            lines += ["", "linearizability:", self.lin_detail]
        if self.history.violations:
            lines += ["", "revision / final history violations:", *self.history.violations]
        if self.problems:
            lines += ["", "other problems:", *self.problems]
        return "\n".join(lines)


def _yes_no(v: bool | None) -> str:
    return "yes" if v else "no" if v is False else "inconclusive"


def _set_flag(args: list[str], flag: str, value: str) -> None:
    i = args.index(flag)
    args[i + 1] = value


def make_cluster(
    tmp: Path, args: list[str], with_proxy: bool, env: dict[str, str] | None = None
) -> tuple[Cluster, list[tuple[str, int, int]]]:
    """Three members (not started) with extra flags ``args`` and environment ``env``; with
    proxies in front of their peer ports (``proxy.py``) when asked: the routes (name, proxy
    port, peer port)."""
    cluster = Cluster(tmp)
    for m in cluster.members:
        m.args += args
        m.env.update(env or {})
    routes: list[tuple[str, int, int]] = []
    if with_proxy:
        ports = free_ports(len(cluster.members))
        routes = [(m.name, p, m.peer) for m, p in zip(cluster.members, ports, strict=True)]
        initial = ",".join(f"{name}=http://127.0.0.1:{p}" for name, p, _ in routes)
        for m, p in zip(cluster.members, ports, strict=True):
            _set_flag(m.args, "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}")
            _set_flag(m.args, "--initial-cluster", initial)
    return cluster, routes


def run(cfg: RunConfig) -> RunResult:
    """One seeded run (blocking); see the module docstring."""
    return asyncio.run(_run(cfg))


async def _run(cfg: RunConfig) -> RunResult:
    started = time.monotonic()
    plan = FaultPlan.choose(cfg.seed, random.Random(cfg.seed), cfg.duration)
    if plan.kind == "disk_full" and (why := small_disk_unavailable()):
        return RunResult(cfg.seed, plan.kind, plan.describe(), skipped=why)
    run = _Run(cfg)
    try:
        await run.start()
        await run.traffic()
        await run.settle()
    except _Abort as exc:
        run.result.problems.append(f"run aborted: {exc}")
    except TimeoutError:
        run.result.problems.append("run aborted: the traffic or the fault did not end in time")
    except Exception:
        run.result.problems.append(f"run aborted by a harness error:\n{traceback.format_exc()}")
    finally:
        await run.stop()
    result = run.result
    result.injected = run.injection.injected
    result.problems += run.injection.problems
    _check(cfg, result, run.rec.ops, run.final, run.watchers)
    if run.rec.unexpected:
        result.problems.append(
            f"{len(run.rec.unexpected)} unexpected errors, e.g. {run.rec.unexpected[0]}"
        )
    result.seconds = time.monotonic() - started
    if not result.passed or cfg.keep:
        result.artifact_dir = _save(run)
    shutil.rmtree(run.tmp, ignore_errors=True)
    return result


class _Abort(Exception):
    pass


class _Run:
    """The state of one run while it goes."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.plan = FaultPlan.choose(cfg.seed, self.rng, cfg.duration)
        self.result = RunResult(cfg.seed, self.plan.kind, self.plan.describe())
        self.tmp = Path(tempfile.mkdtemp(prefix=f"robustness-{cfg.seed}-"))
        self.settings = [
            "--snapshot-count", str(self.rng.choice([25, 100, 400])),
            "--experimental-snapshot-catchup-entries", str(self.rng.choice([10, 50, 5000])),
        ]  # fmt: skip
        if self.plan.snapshots_soon:
            self.settings = list(SNAPSHOT_SOON)
        self.cluster, routes = make_cluster(
            self.tmp, self.settings, self.plan.proxied, {**cfg.member_env, **self.plan.member_env}
        )
        self.proxy = ProxyControl(routes, self.tmp / "proxy.log", cfg.seed) if routes else None
        self.rec = Recorder(time.monotonic())
        self.timeline = Timeline(self.rec)
        self.injection = Injection(self.cluster.members, self.timeline, self.rng, self.proxy)
        self.disk: SmallDisk | None = None
        if self.plan.kind == "disk_full":
            self._small_disk(self.plan.disk_member)
        self.watchers: list[Watcher] = []
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.final: FinalHistory | None = None

    def _small_disk(self, i: int) -> None:
        """Member ``i``'s data dir on a small tmpfs (``SmallDisk``), filled by big puts."""
        m = self.cluster.members[i]
        self.disk = SmallDisk(m.data_dir, self.plan.disk_mb)
        small = SmallDiskProc(
            m.name, m.client, m.peer, m.data_dir, m.log, args=m.args, env=m.env, disk=self.disk
        )
        self.cluster.members[i] = small
        self.injection.disk = self.disk
        self.injection.spare_dir = self.tmp / f"{m.name}-big-disk"
        self.injection.fill = self._fill

    async def _fill(self, m: Proc, stop: asyncio.Event) -> int:
        cid = 1000 + len(self.clients)
        filler = Filler(cid, m.name, m.endpoint, self.rec, random.Random(cid), deadline=3.0)
        try:
            return await filler.fill(stop, size=256 * 1024, limit=100)
        finally:
            await filler.close()

    async def start(self) -> None:
        """Start the proxies and members; wait for a leader and for every member to serve."""
        if self.proxy is not None:
            await self.proxy.start()
        if self.disk is not None:
            self.disk.start()
        members = self.cluster.members
        self.cluster.start()
        self.timeline.note(
            f"started {', '.join(m.name for m in members)} {' '.join(self.settings)}"
        )
        if await find_leader(members, timeout=30) is None:
            raise _Abort("no leader 30 s after start")
        for m in members:
            if not await wait_serving(m):
                raise _Abort(f"{m.name} did not start serving")
        if self.proxy is not None:
            for m in members:
                st = await status(m.endpoint)
                if st is None:
                    raise _Abort(f"no status from {m.name}")
                await self.proxy.command(f"id {m.name} {st.header.member_id:x}")

    async def traffic(self) -> None:
        """Watchers, clients and the fault, until the traffic stops and the fault is healed."""
        cfg, rec, members = self.cfg, self.rec, self.cluster.members
        # Time 0 is when the traffic starts (the start-up's notes are at negative times).
        shift = time.monotonic() - rec.t0
        rec.t0 += shift
        self.timeline.entries = [(t - shift, what) for t, what in self.timeline.entries]
        self.timeline.note(f"traffic starts; fault: {self.plan.describe()}")
        self.watchers = [Watcher(m.name, m.endpoint, rec) for m in members]
        for w in self.watchers:
            w.start()
        for m in members:
            for _ in range(cfg.clients_per_member):
                cid = len(self.clients)
                crng = random.Random(cfg.seed * 1000 + cid)
                # Most give up after 2 s (outcome unknown); some wait long enough to hear what
                # a member frozen or cut off answers once it is back.
                deadline = crng.choice([1.0, 2.0, 2.0, 6.0])
                self.clients.append(Client(cid, m.name, m.endpoint, rec, crng, deadline=deadline))
        for m in random.Random(f"lockers {cfg.seed}").sample(members, LOCKERS):
            cid = len(self.clients)
            crng = random.Random(cfg.seed * 1000 + cid)
            self.clients.append(Locker(cid, m.name, m.endpoint, rec, crng, deadline=2.0))
        loop = asyncio.get_running_loop()
        self.injection.traffic_end = cfg.duration
        fault = loop.create_task(inject(self.plan, self.injection))
        late = loop.create_task(_late_watchers(self))
        self.tasks = [fault, late]
        async with asyncio.timeout(cfg.duration + 60):
            await asyncio.gather(*(c.run(cfg.duration) for c in self.clients))
            self.timeline.note("traffic stopped")
            await fault
            await late

    async def settle(self) -> None:
        """Every member serving; the final history; watchers caught up; convergence."""
        result = self.result
        for m in self.cluster.members:
            if not await wait_serving(m):
                result.problems.append(f"{m.name} is not serving after the fault was healed")
        self.final = await _final_history(self.cluster, result)
        result.revision = self.final.revision
        for w in self.watchers:
            if not await w.caught_up(self.final.revision, timeout=15):
                self.timeline.note(f"watcher {w.name} did not catch up to {self.final.revision}")
        try:
            await asyncio.to_thread(self.cluster.converged, None, 15)
            result.converged = True
        except AssertionError as exc:
            result.problems.append(f"not converged: {exc}")
        if self.injection.armed is not None:
            await self._compaction()

    async def _compaction(self) -> None:
        """compact-mid: compact at the final revision; the armed member dies applying it and
        is restarted; then every member must have compacted there, alike."""
        armed, result, final = self.injection.armed, self.result, self.final
        assert armed is not None and final is not None
        other = next(m for m in self.cluster.members if m is not armed)
        await compaction_phase(self.injection, final.revision, other.endpoint)
        try:
            await asyncio.to_thread(self.cluster.converged, None, 15)
        except AssertionError as exc:
            result.converged = False
            result.problems.append(f"not converged after the compaction: {exc}")
        want = {k: v for k, v in state_at(final, final.revision, KEYS).items() if v is not None}
        for m in self.cluster.members:
            if final.revision > 1:
                try:
                    await range_all(m.endpoint, final.revision - 1, serializable=True)
                    result.problems.append(f"{m.name} did not compact at {final.revision}")
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                        result.problems.append(f"{m.name}: range below the compaction: {exc!r}")
            got = await range_all(m.endpoint, final.revision, serializable=True)
            if {kv.key.decode(): to_kv(kv) for kv in got.kvs} != want:
                result.problems.append(
                    f"{m.name}'s store after the compaction is not the history's"
                )

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for w in self.watchers:
            await w.stop()
        for c in self.clients:
            await c.close()
        self.cluster.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.disk is not None:
            self.disk.stop()


async def _late_watchers(run: _Run) -> None:
    """Halfway through, one more watcher per member from a recent revision (so it starts
    behind, catching up from the store while the traffic goes on)."""
    await asyncio.sleep(max(0.0, run.cfg.duration * 0.5 - run.rec.now()))
    seen = [op.revision for op in run.rec.ops if op.revision is not None]
    start = max(1, max(seen, default=1) - 50)
    run.timeline.note(f"late watchers from revision {start}")
    for m in run.cluster.members:
        w = Watcher(f"{m.name}-late", m.endpoint, run.rec, start)
        w.start()
        run.watchers.append(w)


async def _final_history(cluster: Cluster, result: RunResult) -> FinalHistory:
    """The store's revision, then every member's events up to it; they must agree."""
    first = cluster.members[0]
    head = None
    for _ in range(50):
        try:
            head = await range_all(first.endpoint)
            break
        except Exception:  # any failure: try again shortly
            await asyncio.sleep(0.2)
    if head is None:
        raise _Abort(f"{first.name} does not answer a linearizable range")
    revision = head.header.revision
    histories = {}
    for m in cluster.members:
        try:
            histories[m.name] = await fetch_history(m.endpoint, revision)
        except Exception as exc:
            result.problems.append(f"could not read the history from {m.name}: {exc!r}")
    final = FinalHistory(histories.get(first.name, []), revision, with_prev=True)
    for name, events in histories.items():
        if events != final.events:
            diff = next(
                (i for i, (a, b) in enumerate(zip(events, final.events, strict=False)) if a != b),
                min(len(events), len(final.events)),
            )
            result.problems.append(
                f"{name}'s history differs from {first.name}'s at event {diff} "
                f"({len(events)} vs {len(final.events)} events)"
            )
    # The history against the store read directly: the end state, and a few past revisions.
    now = {kv.key.decode(): to_kv(kv) for kv in head.kvs}
    want = {k: v for k, v in state_at(final, revision, KEYS).items() if v is not None}
    if now != want:
        result.problems.append(f"the store at revision {revision} is not the history's end")
    rng = random.Random(revision)
    for rev in sorted(rng.sample(range(1, revision + 1), min(8, revision))):
        got = await range_all(first.endpoint, rev)
        at = {kv.key.decode(): to_kv(kv) for kv in got.kvs}
        want = {k: v for k, v in state_at(final, rev, KEYS).items() if v is not None}
        if at != want:
            result.problems.append(f"Range at revision {rev} disagrees with the history")
    return final


def _check(
    cfg: RunConfig,
    result: RunResult,
    ops: list[Op],
    final: FinalHistory | None,
    watchers: list[Watcher],
) -> None:
    result.ops = len(ops)
    result.by_status = {s: sum(op.status == s for op in ops) for s in (OK, UNKNOWN, FAIL)}
    lin = checker.check(ops, cfg.budget)
    result.checked_ops = lin.checked_ops
    result.linearizable = lin.linearizable
    if lin.linearizable is not True:
        result.lin_detail = lin.summary()
    if final is None:
        result.problems.append("no final history: the history checks did not run")
        result.watches = len(watchers)
        return
    result.history = check_history(ops, final, KEYS)
    result.locks = check_locks(ops, final)
    result.history.violations += result.locks.violations
    result.watches = len(watchers)
    for w in watchers:
        problems = w.problems + check_watch(w.name, w.events, final, w.start_rev)
        if problems:
            result.problems += problems
        else:
            result.watches_passed += 1


def _save(run: _Run) -> Path:
    cfg, result = run.cfg, run.result
    out = cfg.artifacts / str(cfg.seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_history(out / "history.jsonl", run.rec.ops)
    if run.final is not None:
        write_jsonl(out / "final_history.jsonl", (_event_json(e) for e in run.final.events))
    meta = {
        "seed": cfg.seed,
        "revision": run.final.revision if run.final else None,
        "watchers": {w.name: w.start_rev for w in run.watchers},
    }
    (out / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    for w in run.watchers:
        write_jsonl(out / f"watch_{w.name}.jsonl", (_event_json(e) for e in w.events))
        (out / f"watch_{w.name}.log").write_text("\n".join(w.log) + "\n")
    (out / "faults.json").write_text(
        json.dumps([{"t": t, "what": what} for t, what in run.timeline.rows()], indent=1) + "\n"
    )
    for m in run.cluster.members:
        if m.log.exists():
            shutil.copy(m.log, out / m.log.name)
    if (run.tmp / "proxy.log").exists():
        shutil.copy(run.tmp / "proxy.log", out / "proxy.log")
    (out / "report.txt").write_text(result.report(cfg) + "\n")
    (out / "replay.sh").write_text(f"#!/bin/sh\ncd {ROOT}\n.venv/bin/{cfg.replay_command()}\n")
    return out


def _event_json(e: Event) -> dict[str, Any]:
    return asdict(e)


def _event_from(raw: dict[str, Any]) -> Event:
    kv, prev = raw.get("kv"), raw.get("prev")
    return Event(
        raw["revision"],
        raw["type"],
        raw["key"],
        KV(**kv) if kv else None,
        KV(**prev) if prev else None,
    )


def recheck(directory: Path, budget: int = checker.DEFAULT_BUDGET) -> str:
    """Run the checkers again on a run's artifacts (``history.jsonl``, ``final_history.jsonl``,
    ``watch_*.jsonl``, ``run.json``); a report of what they find."""
    ops = load_history(directory / "history.jsonl")
    lin = checker.check(ops, budget)
    lines = [
        f"{len(ops)} operations, {lin.checked_ops} checked for linearizability: "
        f"{_yes_no(lin.linearizable)}"
    ]
    if lin.linearizable is not True:
        lines.append(lin.summary())
    meta = json.loads((directory / "run.json").read_text())
    if meta.get("revision") is None:
        return "\n".join([*lines, "no final history in these artifacts"])
    events = [_event_from(raw) for raw in read_jsonl(directory / "final_history.jsonl")]
    final = FinalHistory(events, meta["revision"], with_prev=True)
    report = check_history(ops, final, KEYS)
    locks = check_locks(ops, final)
    report.violations += locks.violations
    lines.append(
        f"locks granted: {locks.granted}, fenced writes: {locks.fenced}, "
        f"expired by their lease: {locks.expired}"
    )
    lines.append(
        f"acknowledged writes: {report.acknowledged}, lost: {report.lost}; "
        f"violations: {len(report.violations)}"
    )
    lines += report.violations
    for name, start in meta["watchers"].items():
        got = [_event_from(raw) for raw in read_jsonl(directory / f"watch_{name}.jsonl")]
        problems = check_watch(name, got, final, start)
        lines += problems or [f"watch {name}: {len(got)} events, as the final history"]
    return "\n".join(lines)


def verdict(r: RunResult) -> str:
    """One run's result in a few words."""
    if r.skipped:
        return f"skipped: {r.skipped}"
    if not r.passed:
        return f"FAIL {r.artifact_dir or ''}"
    return "pass" if r.injected else "pass (fault NOT injected as planned)"


def table(results: list[RunResult]) -> str:
    """The per-run table and the totals."""
    head = (
        f"{'seed':>5} {'fault':<18} {'ops':>5} {'ok':>5} {'unk':>4} {'fail':>4} "
        f"{'checked':>7} {'lin':>4} {'hist':>4} {'watch':>5} {'lost':>4} {'conv':>4} "
        f"{'secs':>5}  result"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        if r.skipped:
            rows.append(f"{r.seed:>5} {r.fault:<18}".ljust(head.index("result")) + verdict(r))
            continue
        rows.append(
            f"{r.seed:>5} {r.fault:<18} {r.ops:>5} {r.by_status.get(OK, 0):>5} "
            f"{r.by_status.get(UNKNOWN, 0):>4} {r.by_status.get(FAIL, 0):>4} "
            f"{r.checked_ops:>7} {_yes_no(r.linearizable)[:4]:>4} "
            f"{'ok' if r.history.ok else 'BAD':>4} {r.watches_passed}/{r.watches:<3} "
            f"{r.history.lost:>4} {'yes' if r.converged else 'no':>4} {r.seconds:>5.1f}  "
            f"{verdict(r)}"
        )
    faults: dict[str, int] = {}
    for r in results:
        faults[r.fault] = faults.get(r.fault, 0) + 1
    done = [r for r in results if not r.skipped]
    lin_yes = sum(r.linearizable is True for r in done)
    lin_no = sum(r.linearizable is False for r in done)
    skipped = len(results) - len(done)
    rows += [
        "",
        f"runs: {len(results)} ({sum(r.passed for r in done)} passed"
        + (f", {skipped} skipped" if skipped else "")
        + f"); faults injected as planned: {sum(r.injected for r in done)} of {len(done)}",
        "faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())),
        f"operations: {sum(r.ops for r in done)}, checked for linearizability: "
        f"{sum(r.checked_ops for r in done)}",
        f"linearizable: yes {lin_yes}, no {lin_no}, inconclusive {len(done) - lin_yes - lin_no}",
        f"watch checks passed: {sum(r.watches_passed for r in done)}/"
        f"{sum(r.watches for r in done)}",
        f"acknowledged writes lost: {sum(r.history.lost for r in done)} "
        f"(of {sum(r.history.acknowledged for r in done)})",
        f"locks granted: {sum(r.locks.granted for r in done)}, fenced writes: "
        f"{sum(r.locks.fenced for r in done)}, lock keys expired by their lease: "
        f"{sum(r.locks.expired for r in done)} (each checked: one holder at a time, "
        "no lease expired early)",
    ]
    return "\n".join(rows)
