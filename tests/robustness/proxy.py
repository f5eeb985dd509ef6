"""A TCP proxy in front of each member's peer port, to partition the network.

Members advertise the proxy's port as their peer URL and listen on their own. Peer
connections are one-way streams of frames (``cluster/server/transport.py``: 4-byte length,
1-byte kind, payload) that open with a HELLO naming the sender and the receiver, so the proxy
knows which members each connection joins and can drop whole frames (the network loses
messages: ``blackhole``) or close connections and refuse new ones (``cut``) between an
isolated member and the others.

Run as ``python -m tests.robustness.proxy NAME=LISTEN:TARGET ...``; it prints ``ready`` and
then takes commands on stdin, answering ``ok`` to each:

- ``id NAME HEXID``: the member id of NAME (what HELLOs carry);
- ``isolate NAME blackhole|cut``: from now on nothing passes between NAME and the others;
- ``block SENDER RECEIVER blackhole|cut``: nothing passes from SENDER to RECEIVER (one way);
- ``chaos MAX_DELAY_MS DROP``: every frame between members is held for a random 0 to
  MAX_DELAY_MS milliseconds (in order: a connection's frames never overtake each other) and
  each frame of Raft messages is dropped with probability DROP (snapshot frames are only
  delayed: a stream missing a chunk is refused by its receiver, which is tested elsewhere);
- ``heal``: everything passes again (frames already held are still delivered, in order).

``--seed`` seeds the delays and drops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import struct
import sys
import time

log = logging.getLogger("proxy")

_FRAME = struct.Struct(">IB")
_HELLO = struct.Struct(">QQQ")
_HELLO_KIND = 1
_MESSAGES_KIND = 2


class Proxies:
    """Every member's proxy, and the partition they enforce."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.max_delay = 0.0  # chaos: seconds a frame may be held
        self.drop = 0.0  # chaos: probability of dropping a frame of Raft messages
        self.names: dict[int, str] = {}  # member id -> name
        self.isolated: set[str] = set()
        self.one_way: set[tuple[str, str]] = set()  # (sender, receiver)
        self.mode = "blackhole"
        self.conns: set[_Conn] = set()
        self.dropped = 0

    def blocked(self, sender: str | None, receiver: str) -> bool:
        return (
            receiver in self.isolated
            or sender in self.isolated
            or (str(sender), receiver) in self.one_way
        )

    def _apply(self, mode: str) -> None:
        self.mode = mode
        if mode == "cut":
            for conn in list(self.conns):
                if self.blocked(conn.sender, conn.receiver):
                    conn.close()

    def isolate(self, name: str, mode: str) -> None:
        self.isolated.add(name)
        self._apply(mode)

    def block(self, sender: str, receiver: str, mode: str) -> None:
        self.one_way.add((sender, receiver))
        self._apply(mode)

    def chaos(self, max_delay: float, drop: float) -> None:
        self.max_delay, self.drop = max_delay, drop

    def heal(self) -> None:
        self.isolated.clear()
        self.one_way.clear()
        self.max_delay = self.drop = 0.0

    async def serve(self, name: str, listen: int, target: int) -> asyncio.Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = _Conn(self, name, reader, writer, target)
            self.conns.add(conn)
            try:
                await conn.run()
            finally:
                self.conns.discard(conn)
                conn.close()

        return await asyncio.start_server(accept, "127.0.0.1", listen)


class _Conn:
    def __init__(
        self,
        proxies: Proxies,
        receiver: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: int,
    ) -> None:
        self.proxies = proxies
        self.receiver = receiver
        self.sender_id: int | None = None
        self.reader = reader
        self.writer = writer
        self.target = target
        self.upstream: asyncio.StreamWriter | None = None
        self.held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()  # (release time, frame)
        self.last_release = 0.0

    @property
    def sender(self) -> str | None:
        """The sending member's name (its id until the ``id`` command names it)."""
        if self.sender_id is None:
            return None
        return self.proxies.names.get(self.sender_id, f"{self.sender_id:x}")

    def close(self) -> None:
        self.writer.close()
        if self.upstream is not None:
            self.upstream.close()

    async def run(self) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
            head = await self.reader.readexactly(_FRAME.size)
            length, kind = _FRAME.unpack(head)
            payload = await self.reader.readexactly(length)
            if kind == _HELLO_KIND and len(payload) == _HELLO.size:
                _, self.sender_id, _ = _HELLO.unpack(payload)
            if self.proxies.mode == "cut" and self.proxies.blocked(self.sender, self.receiver):
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            self.upstream = up_writer
            up_writer.write(head + payload)
            back = asyncio.ensure_future(self._pipe_back(up_reader))
            release = asyncio.ensure_future(self._release(up_writer))
            try:
                await self._forward(up_writer)
            finally:
                back.cancel()
                release.cancel()

    async def _forward(self, up: asyncio.StreamWriter) -> None:
        proxies = self.proxies
        while True:
            head = await self.reader.readexactly(_FRAME.size)
            length, kind = _FRAME.unpack(head)
            payload = await self.reader.readexactly(length)
            if proxies.blocked(self.sender, self.receiver):
                proxies.dropped += 1
                if proxies.mode == "cut":
                    return
                continue
            if proxies.drop and kind == _MESSAGES_KIND and proxies.rng.random() < proxies.drop:
                proxies.dropped += 1
                continue
            if proxies.max_delay or not self.held.empty():
                # Held frames keep their order: none is released before the one ahead of it.
                at = time.monotonic() + proxies.rng.uniform(0, proxies.max_delay)
                self.last_release = max(self.last_release, at)
                self.held.put_nowait((self.last_release, head + payload))
                continue
            up.write(head + payload)
            await up.drain()

    async def _release(self, up: asyncio.StreamWriter) -> None:
        """Write the held frames out, each at its release time."""
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                at, data = await self.held.get()
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                up.write(data)
                await up.drain()
                self.held.task_done()

    async def _pipe_back(self, up: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await up.read(65536):
                self.writer.write(data)
                await self.writer.drain()
        self.writer.close()


async def _main(routes: list[tuple[str, int, int]], seed: int) -> None:
    proxies = Proxies(seed)
    servers = [await proxies.serve(name, listen, target) for name, listen, target in routes]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode():
        words = line.split()
        if not words:
            continue
        if words[0] == "id":
            proxies.names[int(words[2], 16)] = words[1]
        elif words[0] == "isolate":
            proxies.isolate(words[1], words[2])
        elif words[0] == "block":
            proxies.block(words[1], words[2], words[3])
        elif words[0] == "chaos":
            proxies.chaos(float(words[1]) / 1000, float(words[2]))
        elif words[0] == "heal":
            proxies.heal()
        log.info("%s (frames dropped so far: %d)", line.strip(), proxies.dropped)
        print("ok", flush=True)
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("routes", nargs="+", help="NAME=LISTEN:TARGET")
    parser.add_argument("--seed", type=int, default=0, help="seeds the delays and drops")
    args = parser.parse_args(argv)
    routes = []
    for spec in args.routes:
        name, _, ports = spec.partition("=")
        listen, _, target = ports.partition(":")
        routes.append((name, int(listen), int(target)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s proxy %(message)s")
    asyncio.run(_main(routes, args.seed))


if __name__ == "__main__":
    main()
