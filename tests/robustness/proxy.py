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
- ``heal``: everything passes again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import struct
import sys

log = logging.getLogger("proxy")

_FRAME = struct.Struct(">IB")
_HELLO = struct.Struct(">QQQ")
_HELLO_KIND = 1


class Proxies:
    """Every member's proxy, and the partition they enforce."""

    def __init__(self) -> None:
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

    def heal(self) -> None:
        self.isolated.clear()
        self.one_way.clear()

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
            try:
                await self._forward(up_writer)
            finally:
                back.cancel()

    async def _forward(self, up: asyncio.StreamWriter) -> None:
        proxies = self.proxies
        while True:
            head = await self.reader.readexactly(_FRAME.size)
            length, _ = _FRAME.unpack(head)
            payload = await self.reader.readexactly(length)
            if proxies.blocked(self.sender, self.receiver):
                proxies.dropped += 1
                if proxies.mode == "cut":
                    return
                continue
            up.write(head + payload)
            await up.drain()

    async def _pipe_back(self, up: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await up.read(65536):
                self.writer.write(data)
                await self.writer.drain()
        self.writer.close()


async def _main(routes: list[tuple[str, int, int]]) -> None:
    proxies = Proxies()
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
        elif words[0] == "heal":
            proxies.heal()
        log.info("%s (frames dropped so far: %d)", line.strip(), proxies.dropped)
        print("ok", flush=True)
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("routes", nargs="+", help="NAME=LISTEN:TARGET")
    args = parser.parse_args(argv)
    routes = []
    for spec in args.routes:
        name, _, ports = spec.partition("=")
        listen, _, target = ports.partition(":")
        routes.append((name, int(listen), int(target)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s proxy %(message)s")
    asyncio.run(_main(routes))


if __name__ == "__main__":
    main()
