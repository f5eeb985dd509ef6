"""A member's configuration, from etcd's flags and their ETCD_* environment variables.

Names, defaults and the member/cluster id derivation follow etcd, so a data
dir, a script or an ``etcdctl member list`` reads the same as with etcd.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MiB = 1024 * 1024
GiB = 1024 * MiB


class ConfigError(ValueError):
    """A flag or environment value that cannot be used; the message is one line."""


@dataclass(frozen=True)
class URL:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class TLSFiles:
    """A TLS server's certificate and key, the CA its clients must be signed by, and
    whether a client certificate is required (etcd's ``--client-cert-auth``)."""

    cert_file: str
    key_file: str
    trusted_ca_file: str = ""
    client_cert_auth: bool = False


@dataclass(frozen=True)
class MemberConfig:
    name: str
    data_dir: str
    listen_client_urls: tuple[URL, ...]
    advertise_client_urls: tuple[URL, ...]
    listen_peer_urls: tuple[URL, ...]
    initial_advertise_peer_urls: tuple[URL, ...]
    initial_cluster: dict[str, tuple[URL, ...]] = field(hash=False)
    initial_cluster_state: str
    initial_cluster_token: str
    heartbeat_interval_ms: int
    election_timeout_ms: int
    snapshot_count: int
    max_snapshots: int
    max_wals: int
    max_request_bytes: int
    max_txn_ops: int
    quota_backend_bytes: int
    auto_compaction_mode: str
    auto_compaction_retention: str
    snapshot_catchup_entries: int = 5000
    gc_max_pause_ms: int = 20  # cluster.gcpauses; 0 leaves the collector as Python has it
    grpc_server: str = "grpcio"  # cluster.server.grpcserver: grpcio's asyncio server or native
    strict_reconfig_check: bool = True
    client_tls: TLSFiles | None = None  # https client URLs
    peer_tls: TLSFiles | None = None  # https peer URLs
    listen_client_http_urls: tuple[URL, ...] = ()  # JSON gateway, health, metrics, version
    listen_metrics_urls: tuple[URL, ...] = ()  # metrics and health only
    log_level: str = "info"
    log_format: str = "json"

    @property
    def member_id(self) -> int:
        return compute_member_id(self.initial_advertise_peer_urls, self.initial_cluster_token)

    @property
    def cluster_id(self) -> int:
        ids = [
            compute_member_id(urls, self.initial_cluster_token)
            for urls in self.initial_cluster.values()
        ]
        return compute_cluster_id(ids)

    @property
    def election_ticks(self) -> int:
        """The Raft core's election timeout in heartbeat ticks."""
        return self.election_timeout_ms // self.heartbeat_interval_ms


def compute_member_id(peer_urls: Sequence[URL], token: str, now: int | None = None) -> int:
    """etcd's member id: the first 8 bytes of SHA-1(sorted peer URLs joined, then the token).

    MemberAdd also appends the current Unix time (``now``), as etcd does, so a member
    added again with the URLs of a removed one gets a new id.
    """
    joined = "".join(sorted(str(u) for u in peer_urls)) + token
    if now is not None:
        joined += str(now)
    return int.from_bytes(hashlib.sha1(joined.encode()).digest()[:8], "big")


def compute_cluster_id(member_ids: Sequence[int]) -> int:
    """etcd's cluster id: the first 8 bytes of SHA-1 of the sorted member ids (big-endian)."""
    packed = b"".join(i.to_bytes(8, "big") for i in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(packed).digest()[:8], "big")


def parse_url(text: str, flag: str) -> URL:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"--{flag}: {text!r}: URL scheme must be http or https")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--{flag}: {text!r}: {exc}") from exc
    if not parts.hostname or port is None:
        raise ConfigError(f"--{flag}: {text!r}: URL must have a host and a port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--{flag}: {text!r}: URL must not have a path, query or fragment")
    return URL(parts.scheme, parts.hostname, port)


def parse_urls(text: str, flag: str) -> tuple[URL, ...]:
    urls = tuple(parse_url(part, flag) for part in text.split(",") if part.strip())
    if not urls:
        raise ConfigError(f"--{flag}: at least one URL is required")
    return urls


def parse_initial_cluster(text: str) -> dict[str, tuple[URL, ...]]:
    """``name1=http://a:2380,name2=http://b:2380`` (a name may appear with several URLs)."""
    cluster: dict[str, tuple[URL, ...]] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, url = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--initial-cluster: {part!r} is not name=peer-url")
        cluster[name.strip()] = (*cluster.get(name.strip(), ()), parse_url(url, "initial-cluster"))
    if not cluster:
        raise ConfigError("--initial-cluster: no members given")
    return cluster


_DURATION = re.compile(r"^(\d+)(ms|s|m|h)?$")


def validate_retention(mode: str, retention: str) -> None:
    """etcd: periodic takes a duration ("1h", "30m") or whole hours; revision takes a count."""
    if mode == "revision":
        if not retention.isdigit():
            raise ConfigError(
                f"--auto-compaction-retention: {retention!r} must be a number of revisions"
            )
    elif not _DURATION.match(retention):
        raise ConfigError(
            f"--auto-compaction-retention: {retention!r} must be a duration such as 1h or 30m"
        )


LOG_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")
"""etcd's --log-level values (zap's); "warning" and upper case are accepted too."""

GRPC_SERVERS = ("grpcio", "native")  # --experimental-grpc-server: cluster.server.grpcserver


@dataclass(frozen=True)
class _Flag:
    name: str
    default: str
    help: str
    choices: tuple[str, ...] | None = None
    integer: bool = False
    boolean: bool = False  # given alone (``--client-cert-auth``) it means true, as etcd's

    @property
    def env(self) -> str:
        return "ETCD_" + self.name.upper().replace("-", "_")


FLAGS: tuple[_Flag, ...] = (
    _Flag("name", "default", "human-readable name for this member"),
    _Flag("data-dir", "", "path to the data directory (default: ${name}.etcd)"),
    _Flag("listen-client-urls", "http://localhost:2379", "URLs to listen on for client traffic"),
    _Flag(
        "advertise-client-urls", "http://localhost:2379", "client URLs advertised to the cluster"
    ),
    _Flag(
        "listen-client-http-urls",
        "",
        "URLs to listen on for HTTP clients: the JSON gateway (/v3/...), /health, /livez, "
        "/readyz, /version and /metrics (none by default)",
    ),
    _Flag(
        "listen-metrics-urls",
        "",
        "URLs to listen on for /metrics and the health endpoints (none by default)",
    ),
    _Flag("listen-peer-urls", "http://localhost:2380", "URLs to listen on for peer traffic"),
    _Flag(
        "initial-advertise-peer-urls",
        "http://localhost:2380",
        "this member's peer URLs advertised to the rest of the cluster",
    ),
    _Flag("initial-cluster", "default=http://localhost:2380", "initial cluster: name=peer-url,..."),
    _Flag(
        "initial-cluster-state",
        "new",
        "new for a new cluster, existing to join one",
        choices=("new", "existing"),
    ),
    _Flag("initial-cluster-token", "etcd-cluster", "initial cluster token, part of the ids"),
    _Flag(
        "heartbeat-interval", "100", "time (in milliseconds) of a heartbeat interval", integer=True
    ),
    _Flag(
        "election-timeout",
        "1000",
        "time (in milliseconds) for an election to timeout",
        integer=True,
    ),
    _Flag(
        "snapshot-count",
        "10000",
        "committed transactions to trigger a snapshot to disk",
        integer=True,
    ),
    _Flag(
        "max-snapshots",
        "5",
        "maximum number of snapshot files to retain (0 is unlimited)",
        integer=True,
    ),
    _Flag("max-wals", "5", "maximum number of wal files to retain (0 is unlimited)", integer=True),
    _Flag(
        "max-request-bytes", str(1536 * 1024), "maximum client request size in bytes", integer=True
    ),
    _Flag(
        "max-txn-ops",
        "128",
        "maximum number of operations permitted in a transaction",
        integer=True,
    ),
    _Flag(
        "quota-backend-bytes",
        "0",
        "raise an alarm when the backend exceeds this size (0 is the default, 2 GiB)",
        integer=True,
    ),
    _Flag(
        "auto-compaction-mode",
        "periodic",
        "interpret retention as a duration or a revision count",
        choices=("periodic", "revision"),
    ),
    _Flag(
        "experimental-snapshot-catchup-entries",
        "5000",
        "entries kept behind a snapshot for slow followers to catch up from",
        integer=True,
    ),
    _Flag(
        "experimental-gc-max-pause-ms",
        "20",
        "freeze what survives a full garbage collection slower than this (0: never)",
        integer=True,
    ),
    _Flag(
        "experimental-grpc-server",
        "grpcio",
        "grpcio, or native: serve the first plaintext client URL with pygrpc-native",
        choices=GRPC_SERVERS,
    ),
    _Flag(
        "strict-reconfig-check",
        "true",
        "reject reconfiguration requests that would cause quorum loss",
        choices=("true", "false"),
    ),
    _Flag("cert-file", "", "path to the client server TLS cert file"),
    _Flag("key-file", "", "path to the client server TLS key file"),
    _Flag("trusted-ca-file", "", "path to the client server TLS trusted CA cert file"),
    _Flag(
        "client-cert-auth",
        "false",
        "accept only clients with a certificate signed by --trusted-ca-file",
        choices=("true", "false"),
        boolean=True,
    ),
    _Flag("peer-cert-file", "", "path to the peer server TLS cert file"),
    _Flag("peer-key-file", "", "path to the peer server TLS key file"),
    _Flag("peer-trusted-ca-file", "", "path to the peer server TLS trusted CA file"),
    _Flag(
        "peer-client-cert-auth",
        "false",
        "accept only peers with a certificate signed by --peer-trusted-ca-file",
        choices=("true", "false"),
        boolean=True,
    ),
    _Flag(
        "auto-compaction-retention",
        "0",
        "auto compaction retention for the mvcc key-value store (0 disables it)",
    ),
    _Flag("log-level", "info", f"log level, one of {', '.join(LOG_LEVELS)}"),
    _Flag(
        "log-format",
        "json",
        "json (one JSON object per line, as etcd) or text",
        choices=("json", "text", "console"),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster",
        description="Start one member of an etcd-compatible cluster. Every flag can also be "
        "set by its ETCD_* environment variable (e.g. --data-dir as ETCD_DATA_DIR).",
        allow_abbrev=False,
    )
    for flag in FLAGS:
        kwargs: dict[str, object] = {"default": None, "help": f"{flag.help} [{flag.env}]"}
        if flag.choices:
            kwargs["choices"] = flag.choices
        if flag.boolean:
            kwargs["nargs"] = "?"
            kwargs["const"] = "true"
        parser.add_argument(f"--{flag.name}", metavar=flag.name.upper().replace("-", "_"), **kwargs)  # type: ignore[arg-type]
    return parser


def load(argv: Sequence[str], env: Mapping[str, str]) -> MemberConfig:
    """The member's configuration from command-line flags and ETCD_* variables.

    A value given both ways is refused, as etcd does, rather than silently
    preferring one. Raises ConfigError (argparse itself exits on unknown flags).
    """
    args = vars(build_parser().parse_args(list(argv)))
    raw: dict[str, str] = {}
    for flag in FLAGS:
        given = args[flag.name.replace("-", "_")]
        from_env = env.get(flag.env)
        if given is not None and from_env is not None:
            raise ConfigError(
                f"conflicting environment variable {flag.env!r} is shadowed by the "
                f"--{flag.name} flag (unset one of them)"
            )
        value = given if given is not None else from_env if from_env is not None else flag.default
        if flag.choices and value not in flag.choices:
            raise ConfigError(f"--{flag.name}: {value!r} is not one of {', '.join(flag.choices)}")
        if flag.integer and not re.fullmatch(r"\d+", value.strip()):
            raise ConfigError(f"--{flag.name}: {value!r} is not a non-negative integer")
        raw[flag.name] = value.strip()
    return _build(raw)


def _build(raw: dict[str, str]) -> MemberConfig:
    def num(name: str) -> int:
        return int(raw[name])

    name = raw["name"]
    heartbeat, election = num("heartbeat-interval"), num("election-timeout")
    if heartbeat <= 0:
        raise ConfigError("--heartbeat-interval must be greater than 0")
    if election < 5 * heartbeat:
        raise ConfigError(
            f"--election-timeout ({election} ms) must be at least 5 times "
            f"--heartbeat-interval ({heartbeat} ms)"
        )
    if election > 50000:
        raise ConfigError(f"--election-timeout ({election} ms) must not exceed 50000 ms")
    validate_retention(raw["auto-compaction-mode"], raw["auto-compaction-retention"])
    initial_cluster = parse_initial_cluster(raw["initial-cluster"])
    advertise_peer = parse_urls(raw["initial-advertise-peer-urls"], "initial-advertise-peer-urls")
    if raw["initial-cluster-state"] == "new":
        mine = initial_cluster.get(name)
        if mine is None:
            raise ConfigError(
                f"--initial-cluster has no member named {name!r} (this member's --name)"
            )
        if sorted(map(str, mine)) != sorted(map(str, advertise_peer)):
            raise ConfigError(
                f"--initial-cluster lists {name}={','.join(map(str, mine))} but "
                f"--initial-advertise-peer-urls is {','.join(map(str, advertise_peer))}"
            )
    quota = num("quota-backend-bytes") or 2 * GiB
    if num("max-request-bytes") <= 0:
        raise ConfigError("--max-request-bytes must be greater than 0")
    if num("snapshot-count") <= 0:
        raise ConfigError("--snapshot-count must be greater than 0")
    client_urls = parse_urls(raw["listen-client-urls"], "listen-client-urls")
    peer_urls = parse_urls(raw["listen-peer-urls"], "listen-peer-urls")
    http_urls = _optional_urls(raw, "listen-client-http-urls")
    metrics_urls = _optional_urls(raw, "listen-metrics-urls")
    log_level = raw["log-level"].lower()
    if log_level == "warning":
        log_level = "warn"
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            f"--log-level: {raw['log-level']!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    return MemberConfig(
        name=name,
        data_dir=raw["data-dir"] or f"{name}.etcd",
        listen_client_urls=client_urls,
        advertise_client_urls=parse_urls(raw["advertise-client-urls"], "advertise-client-urls"),
        listen_peer_urls=peer_urls,
        initial_advertise_peer_urls=advertise_peer,
        initial_cluster=initial_cluster,
        initial_cluster_state=raw["initial-cluster-state"],
        initial_cluster_token=raw["initial-cluster-token"],
        heartbeat_interval_ms=heartbeat,
        election_timeout_ms=election,
        snapshot_count=num("snapshot-count"),
        max_snapshots=num("max-snapshots"),
        max_wals=num("max-wals"),
        max_request_bytes=num("max-request-bytes"),
        max_txn_ops=num("max-txn-ops"),
        quota_backend_bytes=quota,
        auto_compaction_mode=raw["auto-compaction-mode"],
        auto_compaction_retention=raw["auto-compaction-retention"],
        snapshot_catchup_entries=num("experimental-snapshot-catchup-entries"),
        gc_max_pause_ms=num("experimental-gc-max-pause-ms"),
        grpc_server=raw["experimental-grpc-server"],
        strict_reconfig_check=raw["strict-reconfig-check"] == "true",
        client_tls=_tls(raw, "", client_urls + http_urls + metrics_urls),
        peer_tls=_tls(raw, "peer-", peer_urls),
        listen_client_http_urls=http_urls,
        listen_metrics_urls=metrics_urls,
        log_level=log_level,
        log_format="text" if raw["log-format"] == "console" else raw["log-format"],
    )


def _optional_urls(raw: dict[str, str], flag: str) -> tuple[URL, ...]:
    return parse_urls(raw[flag], flag) if raw[flag] else ()


def _tls(raw: dict[str, str], prefix: str, urls: tuple[URL, ...]) -> TLSFiles | None:
    """The TLS files for the client (``prefix`` "") or peer ("peer-") side, checked."""
    cert, key, ca = (
        raw[f"{prefix}cert-file"],
        raw[f"{prefix}key-file"],
        raw[f"{prefix}trusted-ca-file"],
    )
    cert_auth = raw[f"{prefix}client-cert-auth"] == "true"
    side = "peer" if prefix else "client"
    https = [u for u in urls if u.scheme == "https"]
    if not https:
        if cert or key:
            raise ConfigError(
                f"--{prefix}cert-file is set but no {side} URL is https: use https:// URLs"
            )
        return None
    if not cert or not key:
        raise ConfigError(
            f"{side} URL {https[0]} is https but --{prefix}cert-file and --{prefix}key-file "
            "are not both set"
        )
    if cert_auth and not ca:
        raise ConfigError(f"--{prefix}client-cert-auth needs --{prefix}trusted-ca-file")
    for flag, path in (
        (f"{prefix}cert-file", cert),
        (f"{prefix}key-file", key),
        (f"{prefix}trusted-ca-file", ca),
    ):
        if path and not os.path.isfile(path):
            raise ConfigError(f"--{flag}: {path}: no such file")
    return TLSFiles(cert, key, ca, cert_auth)
