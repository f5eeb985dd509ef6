"""Loopback ports for the members that benches and tests start.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the same range
every outgoing connection takes its local port from: between choosing such a port and the
member binding it, any connection on the machine (a peer dialling another, a client, another
test) can take it, and the member exits with "address already in use". Ports below that range
are never taken that way, so they are chosen from there. Concurrent choosers (pytest-xdist
workers) each get a block of their own, so they cannot choose the same port either.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

LOWEST = 10_000  # below this are well-known services' ports
MIN_BLOCK = 256
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default otherwise)."""
    try:
        low, high = (int(p) for p in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def block(index: int, count: int) -> range:
    """Block ``index`` of ``count`` equal blocks of the ports outside the ephemeral range
    (below it, or above it if more lie there); ValueError if the blocks would be tiny."""
    low, high = ephemeral_range()
    start, stop = max((LOWEST, low), (high + 1, 65_536), key=lambda r: r[1] - r[0])
    size = (stop - start) // count
    if not 0 <= index < count or size < MIN_BLOCK:
        raise ValueError(f"no block {index} of {count} between ports {start} and {stop}")
    return range(start + index * size, start + (index + 1) * size)


def _worker_block() -> range | None:
    """This process's block: pytest-xdist's worker ``gwN`` of ``PYTEST_XDIST_WORKER_COUNT``
    gets block N; any other process gets the whole range. None if the kernel's ephemeral
    range leaves no room outside it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    try:
        return block(index, count) if index < count else block(0, 1)
    except ValueError:
        return None


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_cursor: Iterator[int] | None = None


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing is bound to, from this process's block, taken in
    turn from a random starting point so a port is not handed out again soon."""
    global _cursor
    ports = _worker_block()
    if ports is None:
        return _kernel_ports(n)
    if _cursor is None:
        first = random.randrange(len(ports))
        _cursor = itertools.cycle([*ports[first:], *ports[:first]])
    chosen: list[int] = []
    for port in itertools.islice(_cursor, len(ports)):
        if _is_free(port):
            chosen.append(port)
            if len(chosen) == n:
                return chosen
    raise OSError(f"fewer than {n} free ports in {ports}")


def _kernel_ports(n: int) -> list[int]:
    """Ports the kernel picks (from its ephemeral range: racy, see the module docstring)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
