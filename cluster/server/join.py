"""Joining an existing cluster: ``--initial-cluster-state existing`` with an empty data dir.

A member added with MemberAdd does not know the cluster's id, nor its own
member id (MemberAdd hashed the current time into it, as etcd does, so a
re-added member never reuses a removed one's id). As etcd, it asks the peers
named in ``--initial-cluster`` for the member list, checks that list against
its own ``--initial-cluster`` (same members, same peer URLs), and takes the
ids from it. A member whose entry already has client URLs was started before:
etcd refuses to bootstrap it twice, and so do we.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cluster.config import URL, ConfigError, MemberConfig, parse_url
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.storage.codec import CodecError
from cluster.tls import peer_client_context

from .transport import PeerProtocolError, query_members

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExistingCluster:
    cluster_id: int
    member_id: int  # this member's id, as MemberAdd assigned it
    members: tuple[pb.Member, ...]


def describe_members(cluster_id: int, members: list[pb.Member]) -> bytes:
    """A member's answer to a MEMBERS_QUERY: its cluster id and member list."""
    resp = pb.MemberListResponse(members=members)
    resp.header.cluster_id = cluster_id
    return resp.SerializeToString()


async def discover(cfg: MemberConfig, timeout: float = 2.0) -> ExistingCluster:
    """The existing cluster this member joins; ``ConfigError`` if it cannot be found or fits not."""
    own = _url_set(cfg.initial_advertise_peer_urls)
    problems: list[str] = []
    for name, urls in cfg.initial_cluster.items():
        if _url_set(urls) == own:
            continue
        for url in urls:
            tls = peer_client_context(cfg.peer_tls) if cfg.peer_tls else None
            try:
                payload = await query_members(url.host, url.port, timeout, tls)
                resp = pb.MemberListResponse.FromString(payload)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                problems.append(f"{name} at {url}: {exc or type(exc).__name__}")
                continue
            except (PeerProtocolError, CodecError, DecodeError) as exc:
                problems.append(f"{name} at {url}: {exc}")
                continue
            return match(cfg, resp.header.cluster_id, list(resp.members))
    detail = "; ".join(problems) or "no other member in --initial-cluster"
    raise ConfigError(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information "
        f"from the given URLs ({detail})"
    )


def match(cfg: MemberConfig, cluster_id: int, members: list[pb.Member]) -> ExistingCluster:
    """etcd's ValidateClusterAndAssignIDs: ``--initial-cluster`` must list the cluster's members."""
    if len(members) != len(cfg.initial_cluster):
        raise ConfigError(
            f"error validating peerURLs: member count is unequal (--initial-cluster names "
            f"{len(cfg.initial_cluster)}, the cluster has {len(members)})"
        )
    remote = {}
    for member in members:
        parsed = frozenset(str(_parse(u)) for u in member.peerURLs if _parse(u) is not None)
        remote[parsed] = member
    local_id = 0
    for name, urls in cfg.initial_cluster.items():
        found = remote.get(_url_set(urls))
        if found is None:
            raise ConfigError(
                f"error validating peerURLs: unmatched member while checking PeerURLs "
                f"({name}={','.join(map(str, urls))} is not a member of the cluster)"
            )
        if _url_set(urls) == _url_set(cfg.initial_advertise_peer_urls):
            local_id = found.ID
            if found.clientURLs:
                raise ConfigError(f"member {found.ID:x} has already been bootstrapped")
    if local_id == 0:
        raise ConfigError(
            "error validating peerURLs: this member's --initial-advertise-peer-urls are not "
            "in --initial-cluster"
        )
    log.info("joining cluster %x as member %x", cluster_id, local_id)
    return ExistingCluster(cluster_id, local_id, tuple(members))


def _url_set(urls: tuple[URL, ...] | list[URL]) -> frozenset[str]:
    return frozenset(str(u) for u in urls)


def _parse(text: str) -> URL | None:
    try:
        return parse_url(text, "peer-urls")
    except ConfigError:
        return None
