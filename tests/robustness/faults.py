"""One fault per run, injected and healed on a timeline that is recorded.

- ``kill_follower`` / ``kill_leader``: SIGKILL, then a restart from the same data dir.
- ``stop_leader``: SIGSTOP past an election timeout, then SIGCONT (the old leader wakes up
  believing it still leads).
- ``partition``: the proxies (``proxy.py``) isolate one member (the leader, mostly) by
  dropping its frames (``blackhole``) or closing its connections (``cut``), then heal.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.procs import ROOT, Proc

from .traffic import Recorder, status

FAULTS = ("kill_follower", "kill_leader", "stop_leader", "partition")


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


class ProxyControl:
    """The proxy process (``python -m tests.robustness.proxy``) and its command pipe."""

    def __init__(self, routes: list[tuple[str, int, int]], log: Path) -> None:
        self.routes = routes
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        args = [f"{name}={listen}:{target}" for name, listen, target in self.routes]
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.robustness.proxy", *args,
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


@dataclass
class FaultPlan:
    """The run's fault: its kind (from the seed), when, for how long, and how."""

    kind: str
    start: float  # recorder time of the injection
    duration: float  # until it is healed
    mode: str = ""  # partition: blackhole or cut
    target_leader: bool = True  # partition: isolate the leader (else a follower)

    @classmethod
    def choose(cls, seed: int, rng: random.Random, traffic: float) -> FaultPlan:
        kind = FAULTS[seed % len(FAULTS)]
        start = rng.uniform(0.2, 0.35) * traffic
        duration = rng.uniform(1.2, 3.0)  # past the 1 s election timeout
        return cls(
            kind,
            start,
            duration,
            mode=rng.choice(["blackhole", "cut"]) if kind == "partition" else "",
            target_leader=rng.random() < 0.7,
        )

    def describe(self) -> str:
        extra = ""
        if self.kind == "partition":
            who = "leader" if self.target_leader else "follower"
            extra = f" ({self.mode}, isolating the {who})"
        return f"{self.kind}{extra} at {self.start:.2f}s for {self.duration:.2f}s"


async def inject(
    plan: FaultPlan,
    members: list[Proc],
    timeline: Timeline,
    rng: random.Random,
    proxy: ProxyControl | None,
) -> None:
    """Wait for the plan's start, inject the fault, heal it, and wait for the member."""
    await asyncio.sleep(max(0.0, plan.start - timeline.rec.now()))
    leader = await find_leader(members, timeout=3.0)
    timeline.note(f"leader is {leader.name if leader else 'unknown'}")
    if plan.kind == "kill_follower" or (plan.kind == "partition" and not plan.target_leader):
        candidates = [m for m in members if m is not leader]
    else:
        candidates = [leader] if leader else list(members)
    victim = rng.choice(candidates)
    if plan.kind in ("kill_follower", "kill_leader"):
        victim.signal(signal.SIGKILL)
        victim.wait()
        timeline.note(f"SIGKILL {victim.name} (pid {victim.popen.pid if victim.popen else '?'})")
        await asyncio.sleep(plan.duration)
        victim.start()
        timeline.note(f"restarted {victim.name}")
    elif plan.kind == "stop_leader":
        victim.signal(signal.SIGSTOP)
        timeline.note(f"SIGSTOP {victim.name}")
        await asyncio.sleep(plan.duration)
        victim.signal(signal.SIGCONT)
        timeline.note(f"SIGCONT {victim.name}")
    elif plan.kind == "partition":
        assert proxy is not None
        await proxy.command(f"isolate {victim.name} {plan.mode}")
        timeline.note(f"isolated {victim.name} ({plan.mode})")
        await asyncio.sleep(plan.duration)
        await proxy.command("heal")
        timeline.note("healed the partition")
    else:
        raise ValueError(plan.kind)
    ok = await wait_serving(victim)
    timeline.note(f"{victim.name} {'serving again' if ok else 'NOT serving 20 s after healing'}")
    leader = await find_leader(members, timeout=5.0)
    timeline.note(f"leader is {leader.name if leader else 'unknown'}")
