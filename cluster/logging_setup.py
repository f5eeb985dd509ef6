"""A member's logs on stderr, as etcd's: one JSON object per line (or plain text).

``configure`` sets the root logger from ``--log-level`` and ``--log-format``. A JSON
line carries etcd's (zap's) keys first, then this member's::

    {"level":"info","ts":"2026-01-02T03:04:05.678901+00:00","caller":"cluster/server/member.py:412",
     "msg":"member 8e9e05c52164694d became leader at term 2","logger":"cluster.server.member",
     "member":"infra1","member-id":"8e9e05c52164694d"}

``bind_member`` adds the member id once it is known (a joining member learns it from the
cluster). A record's exception goes in "stacktrace"; its ``extra`` fields are kept as keys.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, Final, TextIO

import cluster

LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "dpanic": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_NAMES: Final[dict[int, str]] = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}
# The attributes every LogRecord has: anything else came from ``extra=`` and is logged.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(cluster.__file__)))

# The member this process runs (one per process): its name, then its id once known.
_member: dict[str, str] = {}


def level_name(levelno: int) -> str:
    """zap's name for a logging level ("warn", not "WARNING")."""
    for threshold in sorted(_NAMES, reverse=True):
        if levelno >= threshold:
            return _NAMES[threshold]
    return "debug"


def _caller(record: logging.LogRecord) -> str:
    path = record.pathname
    inside = path.startswith(_ROOT + os.sep)
    return f"{path[len(_ROOT) + 1 :] if inside else os.path.basename(path)}:{record.lineno}"


class JSONFormatter(logging.Formatter):
    """etcd's JSON lines: level, ts, caller, msg, then logger, member and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "level": level_name(record.levelno),
            "ts": ts.isoformat(timespec="microseconds"),
            "caller": _caller(record),
            "msg": record.getMessage(),
            "logger": record.name,
            **_member,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["stacktrace"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``<ts> <level> <member> <logger>: <msg>`` (the format before JSON, plus the member)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(member)s%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        name = _member.get("member", "")
        record.member = f"{name} " if name else ""
        return super().format(record)


def configure(
    level: str = "info",
    fmt: str = "json",
    *,
    member: str = "",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt``.

    Replaces the root logger's handlers; returns the new handler.
    """
    _member.clear()
    if member:
        _member["member"] = member
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # no line per request
    return handler


def bind_member(member_id: int) -> None:
    """Add ``member-id`` (hex, as etcd prints it) to every later line."""
    _member["member-id"] = f"{member_id:x}"
