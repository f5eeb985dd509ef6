"""How keys and values travel through the API.

Key ids: a key's bytes in unpadded base64url (RFC 4648 section 5), used as the path segment
``/api/v1/keys/<key_id>/``, so any bytes round-trip (``..``, ``/``, ``%2F``, spaces, non-UTF-8).
Values (and keys in bodies) are UTF-8 text with ``encoding: "utf-8"`` or standard base64 with
``encoding: "base64"``.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from cluster.client import KeyValue
from console import keys
from console.api.errors import BadRequest

__all__ = [
    "ID_PATTERN",
    "INT64_MAX",
    "KEY_ID_PATTERN",
    "MAX_REQUEST_BYTES",
    "UINT64_MAX",
    "Encoding",
    "decode_key_id",
    "decode_value",
    "kv_dict",
    "parse_id",
    "parse_int",
    "text_or_base64",
]

Encoding = Literal["utf-8", "base64"]

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1  # member ids
# etcd's default --max-request-bytes (1.5 MiB): a larger write is refused by the cluster.
MAX_REQUEST_BYTES = 1536 * 1024
# Room for the rest of the request (the protobuf framing, the transaction around the put).
REQUEST_OVERHEAD = 512

# Canonical unpadded base64url of at least one byte: the last group's spare bits are zero.
KEY_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{4}|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048]"
    r"|[A-Za-z0-9_-][AQgw])$"
)


def decode_key_id(key_id: str, *, what: str = "key", allow_empty: bool = False) -> bytes:
    """The key bytes of a key id (``keys.decode_key``); ``BadRequest`` when it is not one."""
    try:
        return keys.decode_key(key_id, allow_empty=allow_empty)
    except keys.InvalidKeyError as exc:
        raise BadRequest(
            f"{what}: {exc} (expected the key's bytes in unpadded base64url, A-Z a-z 0-9 - _)"
        ) from None


def decode_value(value: str, encoding: str, *, field: str = "value") -> bytes:
    """Bytes of a body field given as UTF-8 text or standard base64 (``keys.from_text``)."""
    try:
        return keys.from_text(value, encoding)
    except UnicodeEncodeError:
        raise BadRequest(
            f"{field} is not valid UTF-8 (a lone surrogate?); send it with encoding 'base64'"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"{field}: {exc}") from None


def text_or_base64(data: bytes, force_base64: bool = False) -> tuple[str, Encoding]:
    """``(text, "utf-8")`` when ``data`` is valid UTF-8 (unless forced), else base64."""
    if force_base64:
        return base64.b64encode(data).decode("ascii"), "base64"
    return keys.to_text(data)


def kv_dict(kv: KeyValue, *, keys_only: bool = False, force_base64: bool = False) -> dict[str, Any]:
    """A key-value as the API shows it (``KeyValue`` serializer)."""
    key, key_encoding = text_or_base64(kv.key, force_base64)
    out: dict[str, Any] = {
        "key": key,
        "key_encoding": key_encoding,
        "key_id": keys.encode_key(kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }
    if not keys_only:
        out["value"], out["encoding"] = text_or_base64(kv.value, force_base64)
    return out


def parse_int(raw: Any, what: str, *, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """A decimal integer in ``[minimum, maximum]`` from a query string or header, else 400."""
    text = str(raw).strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{what} must be a non-negative decimal integer, got {text[:40]!r}")
    if len(text) > 20 or not minimum <= int(text) <= maximum:
        raise BadRequest(f"{what} must be between {minimum} and {maximum}, got {text[:40]!r}")
    return int(text)


ID_PATTERN = r"^(?:[0-9]{1,20}|0[xX][0-9a-fA-F]{1,16})$"


def parse_id(raw: str, what: str, *, maximum: int = INT64_MAX) -> int:
    """A lease or member id from a path: decimal, or hex with ``0x`` (as etcdctl prints it)."""
    text = raw.strip()
    if text[:2].lower() == "0x":
        digits = text[2:]
        if (
            not digits
            or len(digits) > 16
            or any(ch not in "0123456789abcdefABCDEF" for ch in digits)
        ):
            raise BadRequest(f"{what} must be decimal or 0x-prefixed hex, got {text[:40]!r}")
        value = int(digits, 16)
        if not 1 <= value <= maximum:
            raise BadRequest(f"{what} must be between 1 and {maximum}, got {text[:40]!r}")
        return value
    return parse_int(text, what, minimum=1, maximum=maximum)
