"""`python -m cluster`: run one member until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop

from cluster.config import ConfigError, MemberConfig, load
from cluster.gcpauses import GCPauseBound
from cluster.logging_setup import bind_member
from cluster.logging_setup import configure as configure_logging
from cluster.storage.backend import BackendError
from cluster.storage.snap import SnapshotError
from cluster.storage.wal import WALError

log = logging.getLogger("cluster")


async def serve(cfg: MemberConfig) -> int:
    """Run one member; the process's exit status (0: stopped cleanly)."""
    if not cfg.gc_max_pause_ms:
        return await _serve(cfg)
    gc_pauses = GCPauseBound(asyncio.get_running_loop(), cfg.gc_max_pause_ms / 1000)
    gc_pauses.install()  # process-wide: here, not in Member (tests run several per process)
    try:
        return await _serve(cfg)
    finally:
        gc_pauses.uninstall()


async def _serve(cfg: MemberConfig) -> int:
    from cluster.server.grpcserver import client_servers
    from cluster.server.http import MemberHttp
    from cluster.server.member import Member

    member = Member(cfg)
    await member.start()
    bind_member(member.id)
    http = MemberHttp(member)
    try:
        await http.start_metrics()  # as etcd: metrics and health before clients are served
    except OSError:
        await member.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Until a signal, or until this member applies its own removal (as etcd, it exits).
    ending = [
        loop.create_task(stop.wait()),
        loop.create_task(member.removed.wait()),
        loop.create_task(member.failed.wait()),
    ]
    # As etcd: serve clients once the cluster has this member's name and client URLs.
    published = loop.create_task(member.published.wait())
    await asyncio.wait([published, *ending], return_when=asyncio.FIRST_COMPLETED)
    published.cancel()
    try:
        servers = client_servers(cfg, member, http)
    except OSError:
        await http.stop()
        await member.stop()
        raise
    await servers.start()
    try:
        await http.start_clients()
    except OSError:
        await servers.stop(None)
        await http.stop()
        await member.stop()
        raise
    log.info(
        "member %x (%s) of cluster %x ready, serving clients on %s",
        member.id,
        cfg.name,
        member.cluster_id,
        ",".join(map(str, cfg.listen_client_urls)),
    )
    waits = ending
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if member.removed.is_set():
        log.info("this member was removed from the cluster")
    log.info("stopping: finishing in-flight requests")
    await http.stop()
    # a failed member answers nothing more: no grace for requests in flight
    await servers.stop(grace=0 if member.failed.is_set() else 2.0)
    await member.stop()
    if member.failed.is_set():
        print(f"error: {member.failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # --log-level / ETCD_LOG_LEVEL, --log-format / ETCD_LOG_FORMAT: JSON lines by default
    configure_logging(cfg.log_level, cfg.log_format, member=cfg.name)
    try:
        # uvloop: measurably faster peer streams and loop wake-ups than asyncio's own loop
        return uvloop.run(serve(cfg))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, BackendError, WALError, SnapshotError) as exc:
        # A data dir this member cannot use (another member's, corrupt, unreadable): one
        # line naming the file and what is wrong, never a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
