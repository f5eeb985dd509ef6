"""One fault per run, injected and healed on a timeline that is recorded.

- ``kill_follower`` / ``kill_leader``: SIGKILL, then a restart from the same data dir.
- ``stop_leader``: SIGSTOP past an election timeout, then SIGCONT (the old leader wakes up
  believing it still leads).
- ``partition``: the proxies (``proxy.py``) isolate one member (the leader, mostly) by
  dropping its frames (``blackhole``) or closing its connections (``cut``), then heal.
- ``crash_point``: one member is killed and restarted with ``ETCD_PY_CRASH=<point>:<n>``
  (``cluster/faults.py``) and dies by itself there (status 137) while the traffic goes on;
  then it is restarted without it. ``snapshot-apply``: the member (a follower) is first kept
  down until the leader has compacted its log past it, so that it is sent a snapshot;
  ``compact-mid``: the compaction comes after the traffic and its checks
  (``compaction_phase``), since the final history is read from revision 1. Half of these
  runs also cut the power (below).
- ``power_loss``: every member runs with ``ETCD_PY_POWER_LOSS=1`` (writes not fsynced stay in
  the process), one is SIGKILLed mid-traffic, losing them, and restarted.
- ``partition_snapshot``: a follower is isolated until the leader has compacted its log past
  it (small ``--snapshot-count`` and catch-up entries), so on healing it must be sent a
  snapshot; its log must say it installed one.
- ``delay_drop``: the proxies hold every peer frame up to a random delay and drop a share of
  the Raft message frames, for a few seconds.
- ``disk_full``: one member's data dir is a small tmpfs in a private mount namespace
  (``SmallDisk``); big puts fill it. The member must stop by itself, with one ``error:`` line,
  and then start again from a copy of its data dir on a big disk, serving every acknowledged
  write (the checks). Skipped where ``unshare`` or tmpfs mounts are not allowed.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from cluster.faults import CRASH_ENV, EXIT_STATUS, POINTS, POWER_LOSS_ENV
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.e2e.procs import ROOT, Proc

from .traffic import Recorder, channel, status

FAULTS = (
    "kill_follower", "kill_leader", "stop_leader", "partition",
    "crash_point", "power_loss", "partition_snapshot", "delay_drop", "disk_full",
)  # fmt: skip
PROXIED = ("partition", "partition_snapshot", "delay_drop")

# Settings under which a leader soon compacts its log past a member that is away.
SNAPSHOT_SOON = ["--snapshot-count", "25", "--experimental-snapshot-catchup-entries", "10"]

# How many times a crash point is reached before it fires (at random in this range): the
# points on every Ready or commit are passed often, a snapshot's much less.
CRASH_COUNTS: dict[str, tuple[int, int]] = {
    "wal-before-save": (1, 60),
    "wal-after-save": (1, 60),
    "backend-before-commit": (1, 15),
    "backend-after-commit": (1, 15),
    "snapshot-save": (1, 2),
    "snapshot-apply": (1, 1),
    "compact-mid": (1, 1),
}

INSTALLED = "installed the leader's backend"
UNCLEAN = "did not stop cleanly on a full disk:"  # member.py logs it when a snapshot is installed


@dataclass
class Timeline:
    """What happened when (recorder time), for the report."""

    rec: Recorder
    entries: list[tuple[float, str]] = field(default_factory=list)  # (recorder time, what)

    def note(self, what: str) -> None:
        self.entries.append((self.rec.now(), what))

    def rows(self) -> list[tuple[float, str]]:
        return [(round(t, 4), what) for t, what in self.entries]


async def find_leader(members: list[Proc], timeout: float = 10.0) -> Proc | None:
    """The running member that says it leads, as its followers agree; None if none shows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        running = [m for m in members if m.running]
        answers = await asyncio.gather(*(status(m.endpoint) for m in running))
        for m, st in zip(running, answers, strict=True):
            if st is not None and st.leader and st.leader == st.header.member_id:
                return m
        await asyncio.sleep(0.1)
    return None


async def wait_serving(m: Proc, timeout: float = 20.0) -> bool:
    """Until ``m`` answers Status and knows a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        st = await status(m.endpoint)
        if st is not None and st.leader:
            return True
        await asyncio.sleep(0.1)
    return False


async def wait_exit(m: Proc, timeout: float) -> int | None:
    """``m``'s exit status once it ends by itself within ``timeout`` seconds; else None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if m.popen is not None and (code := m.popen.poll()) is not None:
            return code
        await asyncio.sleep(0.05)
    return None


async def stop_gracefully(m: Proc) -> None:
    """SIGTERM and wait (SIGKILL after 10 s)."""
    if not m.running:
        return
    m.signal(signal.SIGTERM)
    if await wait_exit(m, 10.0) is None:
        m.kill()


def log_size(m: Proc) -> int:
    return m.log.stat().st_size if m.log.exists() else 0


def log_since(m: Proc, offset: int) -> str:
    if not m.log.exists():
        return ""
    with m.log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


class ProxyControl:
    """The proxy process (``python -m tests.robustness.proxy``) and its command pipe."""

    def __init__(self, routes: list[tuple[str, int, int]], log: Path, seed: int = 0) -> None:
        self.routes = routes
        self.log = log
        self.seed = seed
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        args = [f"{name}={listen}:{target}" for name, listen, target in self.routes]
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.robustness.proxy", *args, "--seed", str(self.seed),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=out,
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        if line.strip() != b"ready":
            raise RuntimeError(f"proxy did not start: {line!r}")

    async def command(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 5)
        if line.strip() != b"ok":
            raise RuntimeError(f"proxy answered {line!r} to {text!r}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.kill()
        await self.proc.wait()


# -- a small disk ----------------------------------------------------------------------------


_small_disks: str | None = None  # why they cannot be made here ("" when they can)


def small_disk_unavailable() -> str:
    """Why a tmpfs in a private mount namespace cannot be made here; "" if it can."""
    global _small_disks
    if _small_disks is None:
        missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
        if missing:
            _small_disks = f"{' and '.join(missing)} not found"
        else:
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 "mount -t tmpfs -o size=1m tmpfs /mnt && touch /mnt/x"],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            why = done.stderr.strip().splitlines()[-1:] or [f"status {done.returncode}"]
            _small_disks = "" if done.returncode == 0 else f"cannot mount a tmpfs: {why[0]}"
    return _small_disks


class SmallDisk:
    """A tmpfs of ``megabytes`` mounted on ``directory`` in a private mount namespace, held
    by a sleeping process: only processes started in it (``command``) see it."""

    def __init__(self, directory: Path, megabytes: int) -> None:
        self.directory = directory
        self.megabytes = megabytes
        self.holder: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        script = (
            f"mount -t tmpfs -o size={self.megabytes}m tmpfs '{self.directory}' "
            "&& echo ready && exec sleep 100000"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            self.stop()
            raise RuntimeError(f"small disk: {line!r} {err.strip()}")

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside the namespace (nsenter execs them: same pid, same signals)."""
        assert self.holder is not None
        ns = f"--mount=/proc/{self.holder.pid}/ns/mnt"
        return ["nsenter", ns, f"--wd={ROOT}", "--", *args]

    def usage(self) -> str:
        done = subprocess.run(
            self.command(["df", "-k", "--output=used,size", str(self.directory)]),
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        rows = done.stdout.split()
        return f"{rows[-2]} of {rows[-1]} KiB used" if len(rows) >= 2 else done.stderr.strip()

    def copy_out(self, to: Path) -> None:
        """Copy the tmpfs's contents to ``to`` (a real disk)."""
        to.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            self.command(["cp", "-a", f"{self.directory}/.", str(to)]),
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def stop(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(10)


@dataclass
class SmallDiskProc(Proc):
    """A member started inside ``disk``'s namespace (its data dir on the small disk), until
    ``disk`` is set to None."""

    disk: SmallDisk | None = None

    def start(self) -> None:
        if self.disk is None:
            super().start()
            return
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.disk.command([sys.executable, "-m", "cluster", *self.args]),
                cwd=ROOT, stdout=out, stderr=out, env={**os.environ, **self.env},
            )  # fmt: skip


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class FaultPlan:
    """The run's fault: its kind (from the seed), when, for how long, and how."""

    kind: str
    start: float  # recorder time of the injection
    duration: float  # until it is healed
    mode: str = ""  # partition(_snapshot): blackhole or cut
    target_leader: bool = True  # the victim is the leader (else a follower)
    point: str = ""  # crash_point: where, and the how-manieth time it fires
    n: int = 1
    power_loss: bool = False  # the members run with ETCD_PY_POWER_LOSS=1
    max_delay_ms: int = 0  # delay_drop
    drop: float = 0.0
    disk_member: int = 0  # disk_full: which member's data dir is the small disk
    disk_mb: int = 8

    @classmethod
    def choose(cls, seed: int, rng: random.Random, traffic: float) -> FaultPlan:
        kind = FAULTS[seed % len(FAULTS)]
        start = rng.uniform(0.2, 0.35) * traffic
        duration = rng.uniform(1.2, 3.0)  # past the 1 s election timeout
        plan = cls(
            kind,
            start,
            duration,
            mode=rng.choice(["blackhole", "cut"]) if kind in ("partition", "partition_snapshot")
            else "",
            target_leader=rng.random() < 0.7,
        )  # fmt: skip
        if kind == "crash_point":
            plan.point = rng.choice(sorted(POINTS))
            plan.n = rng.randint(*CRASH_COUNTS[plan.point])
            plan.power_loss = rng.random() < 0.5
            if plan.point == "snapshot-apply":
                plan.target_leader = False
        elif kind == "power_loss":
            plan.power_loss = True
        elif kind == "partition_snapshot":
            plan.target_leader = False
            plan.duration = rng.uniform(2.0, 3.0)
        elif kind == "delay_drop":
            plan.max_delay_ms = rng.choice([20, 60, 150])
            plan.drop = rng.choice([0.05, 0.2, 0.4])
            plan.duration = rng.uniform(2.0, 4.0)
        elif kind == "disk_full":
            plan.disk_member = rng.randrange(3)
        return plan

    @property
    def snapshots_soon(self) -> bool:
        """The run needs a leader that compacts its log soon (``SNAPSHOT_SOON``)."""
        return self.kind == "partition_snapshot" or self.point == "snapshot-apply"

    @property
    def proxied(self) -> bool:
        return self.kind in PROXIED

    @property
    def member_env(self) -> dict[str, str]:
        return {POWER_LOSS_ENV: "1"} if self.power_loss else {}

    def describe(self) -> str:
        who = "leader" if self.target_leader else "follower"
        extra = ""
        if self.kind == "partition":
            extra = f" ({self.mode}, isolating the {who})"
        elif self.kind == "partition_snapshot":
            extra = f" ({self.mode}, isolating a follower until it needs a snapshot)"
        elif self.kind == "crash_point":
            loss = ", with power loss" if self.power_loss else ""
            extra = f" ({CRASH_ENV}={self.point}:{self.n} on the {who}{loss})"
        elif self.kind == "power_loss":
            extra = f" (SIGKILL of the {who})"
        elif self.kind == "delay_drop":
            extra = f" (delays up to {self.max_delay_ms} ms, {self.drop:.0%} of messages lost)"
        elif self.kind == "disk_full":
            extra = f" (m{self.disk_member} on a {self.disk_mb} MiB tmpfs)"
        return f"{self.kind}{extra} at {self.start:.2f}s for {self.duration:.2f}s"


@dataclass
class Injection:
    """What ``inject`` needs besides the plan, and what it found out."""

    members: list[Proc]
    timeline: Timeline
    rng: random.Random
    proxy: ProxyControl | None = None
    traffic_end: float = 0.0  # recorder time the traffic stops
    disk: SmallDisk | None = None  # disk_full
    fill: Callable[[Proc, asyncio.Event], Coroutine[object, object, int]] | None = (
        None  # big puts through m
    )
    spare_dir: Path | None = None  # disk_full: where the data dir is copied to
    injected: bool = False  # the fault happened as planned (a crash point was reached...)
    problems: list[str] = field(default_factory=list)  # what went wrong with the cluster
    armed: Proc | None = None  # compact-mid: the member still armed after the traffic


async def inject(plan: FaultPlan, ctx: Injection) -> None:
    """Wait for the plan's start, inject the fault, heal it, and wait for the member."""
    members, timeline, rng, proxy = ctx.members, ctx.timeline, ctx.rng, ctx.proxy
    await asyncio.sleep(max(0.0, plan.start - timeline.rec.now()))
    leader = await find_leader(members, timeout=3.0)
    timeline.note(f"leader is {leader.name if leader else 'unknown'}")
    targeted = plan.kind in ("partition", "partition_snapshot", "crash_point", "power_loss")
    if plan.kind == "disk_full":
        candidates = [members[plan.disk_member]]
    elif plan.kind in ("kill_follower", "delay_drop") or (targeted and not plan.target_leader):
        candidates = [m for m in members if m is not leader]
    else:
        candidates = [leader] if leader else list(members)
    victim = rng.choice(candidates)
    if plan.kind in ("kill_follower", "kill_leader", "power_loss"):
        victim.signal(signal.SIGKILL)
        victim.wait()
        timeline.note(f"SIGKILL {victim.name} (pid {victim.popen.pid if victim.popen else '?'})")
        await asyncio.sleep(plan.duration)
        victim.start()
        timeline.note(f"restarted {victim.name}")
        ctx.injected = True
    elif plan.kind == "stop_leader":
        victim.signal(signal.SIGSTOP)
        timeline.note(f"SIGSTOP {victim.name}")
        await asyncio.sleep(plan.duration)
        victim.signal(signal.SIGCONT)
        timeline.note(f"SIGCONT {victim.name}")
        ctx.injected = True
    elif plan.kind in ("partition", "partition_snapshot"):
        assert proxy is not None
        await proxy.command(f"isolate {victim.name} {plan.mode}")
        timeline.note(f"isolated {victim.name} ({plan.mode})")
        await asyncio.sleep(plan.duration)
        offset = log_size(victim)
        await proxy.command("heal")
        timeline.note("healed the partition")
        if plan.kind == "partition_snapshot":
            ctx.injected = await _installed_snapshot(victim, offset, timeline)
            if not ctx.injected:
                ctx.problems.append(f"{victim.name} was not sent a snapshot after the partition")
        else:
            ctx.injected = True
    elif plan.kind == "delay_drop":
        assert proxy is not None
        await proxy.command(f"chaos {plan.max_delay_ms} {plan.drop}")
        timeline.note(f"peer frames delayed up to {plan.max_delay_ms} ms, {plan.drop:.0%} dropped")
        await asyncio.sleep(plan.duration)
        await proxy.command("heal")
        timeline.note("healed the network")
        ctx.injected = True
    elif plan.kind == "crash_point":
        await _crash_point(plan, ctx, victim)
    elif plan.kind == "disk_full":
        await _disk_full(plan, ctx, victim)
    else:
        raise ValueError(plan.kind)
    ok = await wait_serving(victim)
    timeline.note(f"{victim.name} {'serving again' if ok else 'NOT serving 20 s after healing'}")
    leader = await find_leader(members, timeout=5.0)
    timeline.note(f"leader is {leader.name if leader else 'unknown'}")


async def _installed_snapshot(m: Proc, offset: int, timeline: Timeline) -> bool:
    """Whether ``m`` logs, within 10 s, that it installed a leader's snapshot."""
    for _ in range(100):
        if INSTALLED in log_since(m, offset):
            timeline.note(f"{m.name} installed a snapshot from the leader")
            return True
        await asyncio.sleep(0.1)
    timeline.note(f"{m.name} did NOT install a snapshot from the leader")
    return False


async def _crash_point(plan: FaultPlan, ctx: Injection, victim: Proc) -> None:
    """Restart ``victim`` armed; wait until it dies at the point; restart it unarmed."""
    timeline = ctx.timeline
    spec = f"{plan.point}:{plan.n}"
    victim.kill()  # SIGKILL: a graceful stop would wait for the requests in flight
    timeline.note(f"SIGKILL {victim.name}")
    if plan.point == "snapshot-apply":
        await asyncio.sleep(plan.duration)  # the leader compacts its log past it meanwhile
    victim.env[CRASH_ENV] = spec
    offset = log_size(victim)
    victim.start()
    timeline.note(f"restarted {victim.name} with {CRASH_ENV}={spec}")
    if plan.point == "compact-mid":
        ctx.armed = victim  # reached only by the compaction after the traffic
        return
    left = max(ctx.traffic_end - timeline.rec.now(), 0.0) + 8.0
    code = await wait_exit(victim, left)
    if code is None:
        timeline.note(f"{victim.name} did not reach {plan.point} {plan.n} time(s)")
        await stop_gracefully(victim)
    else:
        _died(ctx, victim, code, plan.point, offset)
        await asyncio.sleep(plan.duration if plan.point != "snapshot-apply" else 0.5)
    del victim.env[CRASH_ENV]
    victim.start()
    timeline.note(f"restarted {victim.name} without {CRASH_ENV}")


def _died(ctx: Injection, victim: Proc, code: int, point: str, offset: int) -> None:
    said = f"crash point {point} reached" in log_since(victim, offset)
    if code == EXIT_STATUS and said:
        ctx.timeline.note(f"{victim.name} died at crash point {point} (status {code})")
        ctx.injected = True
    else:
        ctx.timeline.note(f"{victim.name} exited with status {code}, not at {point}")
        ctx.problems.append(f"{victim.name}, armed at {point}, exited with status {code}")


async def compaction_phase(ctx: Injection, revision: int, endpoint: str) -> None:
    """compact-mid, after the traffic: compact at ``revision`` through ``endpoint`` (not the
    armed member's); the armed member must die at the point; restart it unarmed."""
    victim, timeline = ctx.armed, ctx.timeline
    assert victim is not None
    offset = log_size(victim)
    async with channel(endpoint) as chan:
        await pb_grpc.KVStub(chan).Compact(pb.CompactionRequest(revision=revision), timeout=10)
    timeline.note(f"compacted at revision {revision}")
    code = await wait_exit(victim, 10.0)
    if code is None:
        timeline.note(f"{victim.name} did not reach compact-mid")
        await stop_gracefully(victim)
    else:
        _died(ctx, victim, code, "compact-mid", offset)
    del victim.env[CRASH_ENV]
    victim.start()
    timeline.note(f"restarted {victim.name} without {CRASH_ENV}")
    ok = await wait_serving(victim)
    timeline.note(f"{victim.name} {'serving again' if ok else 'NOT serving 20 s after restart'}")
    ctx.armed = None


async def _disk_full(plan: FaultPlan, ctx: Injection, victim: Proc) -> None:
    """Fill ``victim``'s small disk with big puts (through another member) until it stops;
    then restart it from a copy of its data dir on a big disk."""
    timeline, disk = ctx.timeline, ctx.disk
    assert disk is not None and ctx.fill is not None and ctx.spare_dir is not None
    assert isinstance(victim, SmallDiskProc)
    offset = log_size(victim)
    stop = asyncio.Event()
    through = next(m for m in ctx.members if m is not victim)
    filling: asyncio.Task[int] = asyncio.get_running_loop().create_task(ctx.fill(through, stop))
    timeline.note(f"filling {victim.name}'s disk ({disk.usage()}) with big puts to {through.name}")
    code = await wait_exit(victim, 20.0)
    stop.set()
    sent = await filling
    output = log_since(victim, offset)
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else "nothing"
    timeline.note(
        f"{sent} big puts; {victim.name} "
        + (f"exited with status {code}" if code is not None else "still running")
        + f"; its disk: {disk.usage()}; its last words: {last[:300]}"
    )
    ctx.injected = code is not None
    if code is None:
        ctx.problems.append(f"{victim.name} did not stop when its disk filled up")
        victim.kill()
    elif code != 1 or not last.startswith("error:"):
        # A member that cannot go on says why in one last line (cli.py), as etcd does.
        ctx.problems.append(
            f"{UNCLEAN} {victim.name} exited with status {code}, its last line: {last[:300]}"
        )
    await asyncio.sleep(0.5)
    disk.copy_out(ctx.spare_dir)
    disk.stop()
    timeline.note(f"copied {victim.name}'s data dir to {ctx.spare_dir} (a big disk)")
    victim.disk = None
    victim.data_dir = ctx.spare_dir
    victim.args[victim.args.index("--data-dir") + 1] = str(ctx.spare_dir)
    victim.start()
    timeline.note(f"restarted {victim.name} on the big disk")
