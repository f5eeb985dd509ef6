"""TLS for client and peer traffic from etcd's flags (``--cert-file`` ..., ``--peer-*``).

Clients speak gRPC (``grpc.ssl_server_credentials``); peers use asyncio streams over
``ssl.SSLContext``. With ``client_cert_auth`` only a certificate signed by the trusted CA
gets in. A member dialing a peer presents its peer certificate (so the other side's
``--peer-client-cert-auth`` accepts it) and verifies the peer's against the same CA.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from cluster.config import TLSFiles


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def grpc_server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.trusted_ca_file) if tls.trusted_ca_file else None,
        require_client_auth=tls.client_cert_auth,
    )


def grpc_channel_credentials(tls: TLSFiles) -> grpc.ChannelCredentials:
    """A member calling another member's client port (forwarding to the leader)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.trusted_ca_file) if tls.trusted_ca_file else None,
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def peer_server_context(tls: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.trusted_ca_file:
        ctx.load_verify_locations(tls.trusted_ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_cert_auth else ssl.CERT_NONE
    return ctx


def peer_client_context(tls: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.trusted_ca_file:
        ctx.load_verify_locations(tls.trusted_ca_file)
    else:
        ctx.load_default_certs()
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx
