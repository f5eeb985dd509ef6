"""The console's key domain layer: browse, read, write, history, export/import of etcd keys.

Views (``console/views/keys.py``) and the REST API (``console/api``) both call these functions;
everything goes to the cluster through ``console.etcd.client()``. Keys and values are ``bytes``
throughout (etcd keys are arbitrary bytes); helpers convert them for URLs and JSON.

- URLs: :func:`encode_key` / :func:`decode_key` (base64url of the raw bytes, no padding).
- JSON / text: :func:`to_text` / :func:`from_text` (``"utf-8"`` or ``"base64"`` encoding flag).
- Tree: :func:`list_children` (one folder level, keys-only ranges with ``limit``, paging by a
  start-after cursor, counts per child folder), :func:`count_prefix`, :func:`count_prefix_at`.
- Read: :func:`get_key`, :func:`get_version`, :func:`describe_value`, :func:`lease_info`,
  :func:`history`, :func:`diff_lines`.
- Write (every write is a transaction guarded by what the caller saw; a concurrent change raises
  :class:`ConflictError` carrying the current state): :func:`create_key`, :func:`update_key`,
  :func:`put_key`, :func:`delete_key`, :func:`restore_version`, :func:`delete_prefix`
  (guarded by the revision the keys were counted at: :class:`PrefixChangedError`).
- Export / import: :func:`iter_prefix`, :func:`export_document`, :func:`export_chunks`,
  :func:`parse_export`, :func:`plan_import`, :func:`apply_import`.

Errors from the cluster are ``console.etcd.EtcdError`` subclasses and pass through unchanged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import difflib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from django.conf import settings

from cluster.client import (
    CompactedError,
    Compare,
    DeleteResponse,
    FutureRevisionError,
    GetResponse,
    KeyValue,
    Op,
    prefix_range_end,
)
from console import etcd

__all__ = [
    "EXPORT_FORMAT",
    "MAX_TXN_OPS",
    "ConflictError",
    "DiffLine",
    "ExportDocument",
    "History",
    "ImportConflictError",
    "ImportFormatError",
    "ImportPlan",
    "ImportResult",
    "InvalidKeyError",
    "LeaseInfo",
    "Listing",
    "PlannedChange",
    "PrefixChangedError",
    "TreeEntry",
    "ValueView",
    "VersionNotFoundError",
    "apply_import",
    "count_prefix",
    "count_prefix_at",
    "create_key",
    "decode_key",
    "delete_key",
    "delete_prefix",
    "describe_value",
    "diff_lines",
    "display",
    "encode_key",
    "export_chunks",
    "export_document",
    "folder_of",
    "from_text",
    "get_key",
    "get_version",
    "hexdump",
    "history",
    "iter_prefix",
    "lease_info",
    "list_children",
    "page_size",
    "parent_folders",
    "parse_export",
    "plan_import",
    "put_key",
    "restore_version",
    "separator",
    "to_text",
    "update_key",
]

EXPORT_FORMAT = "etcd-console-export/1"
MAX_TXN_OPS = 100  # below etcd's default --max-txn-ops (128)
HEXDUMP_LIMIT = 64 * 1024  # bytes shown in a hex dump
PRETTY_LIMIT = 1024 * 1024  # values above this are not parsed as JSON / YAML

Encoding = Literal["utf-8", "base64"]
ValueFormat = Literal["json", "yaml", "text", "binary", "empty"]


# --- errors -------------------------------------------------------------------------------


class InvalidKeyError(ValueError):
    """A key token that is not canonical base64url, or an empty key."""


class ConflictError(Exception):
    """A guarded write found the key changed: ``current`` is its state now (None: absent)."""

    def __init__(self, key: bytes, current: KeyValue | None, expected_mod_revision: int) -> None:
        self.key = key
        self.current = current
        self.expected_mod_revision = expected_mod_revision
        now = current.mod_revision if current is not None else 0
        super().__init__(
            f"key {display(key)!r} changed: expected mod revision {expected_mod_revision}, "
            f"found {now if current is not None else 'no key'}"
        )

    @property
    def current_mod_revision(self) -> int:
        """The revision to guard a retry with (0: the key does not exist now)."""
        return self.current.mod_revision if self.current is not None else 0


class PrefixChangedError(Exception):
    """A guarded prefix delete found keys written since they were counted."""

    def __init__(self, prefix: bytes, count: int, revision: int) -> None:
        self.prefix = prefix
        self.count = count
        self.revision = revision
        super().__init__(f"keys under {display(prefix)!r} changed: {count} keys now")


class VersionNotFoundError(LookupError):
    """No version of the key with that mod revision (compacted, or never existed)."""


class ImportFormatError(ValueError):
    """An uploaded export file that is not a valid export document."""


class ImportConflictError(Exception):
    """Applying an import plan stopped: keys changed since the plan was made.

    ``applied`` keys were written (whole transactions); ``conflicting`` are the keys of the
    transaction that failed its guard. Make a new plan (dry run) and apply that.
    """

    def __init__(self, applied: int, conflicting: list[bytes]) -> None:
        self.applied = applied
        self.conflicting = conflicting
        super().__init__(
            f"{len(conflicting)} keys changed since the dry run ({applied} changes applied)"
        )


# --- settings, encodings ------------------------------------------------------------------


def separator() -> bytes:
    """The folder separator (setting ``CONSOLE_KEY_SEPARATOR``, default ``"/"``)."""
    sep = getattr(settings, "CONSOLE_KEY_SEPARATOR", "/")
    return sep.encode() if isinstance(sep, str) else bytes(sep)


def page_size() -> int:
    """Entries per tree page (setting ``CONSOLE_KEYS_PAGE_SIZE``, default 100)."""
    return max(1, int(getattr(settings, "CONSOLE_KEYS_PAGE_SIZE", 100)))


def encode_key(key: bytes) -> str:
    """A URL-safe token for ``key``: base64url of the raw bytes without padding."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def decode_key(token: str, *, allow_empty: bool = False) -> bytes:
    """The key of a token made by :func:`encode_key`; ``InvalidKeyError`` if not canonical."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidKeyError(f"not a key token: {token!r}") from exc
    if encode_key(raw) != token:
        raise InvalidKeyError(f"not a canonical key token: {token!r}")
    if not raw and not allow_empty:
        raise InvalidKeyError("the key is empty")
    return raw


def display(data: bytes) -> str:
    """Text to show for key or value bytes: UTF-8, invalid bytes as ``\\xNN`` escapes."""
    return data.decode("utf-8", errors="backslashreplace")


def to_text(data: bytes) -> tuple[str, Encoding]:
    """``(text, encoding)`` for JSON: UTF-8 when the bytes decode cleanly, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def from_text(text: str, encoding: str) -> bytes:
    """Inverse of :func:`to_text`; ``ValueError`` for a bad encoding name or bad base64."""
    if encoding == "utf-8":
        return text.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError(f"invalid base64: {exc}") from exc
    raise ValueError(f"unknown encoding {encoding!r} (use 'utf-8' or 'base64')")


def folder_of(prefix: bytes) -> bytes:
    """The folder a prefix is in: everything up to and including its last separator."""
    sep = separator()
    i = prefix.rfind(sep)
    return prefix[: i + len(sep)] if i >= 0 else b""


def parent_folders(folder: bytes) -> list[tuple[bytes, bytes]]:
    """Breadcrumbs: ``(folder_prefix, label)`` for each folder from the root down to ``folder``."""
    sep = separator()
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while True:
        i = folder.find(sep, pos)
        if i < 0:
            break
        out.append((folder[: i + len(sep)], folder[pos : i + len(sep)]))
        pos = i + len(sep)
    return out


# --- tree -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    """One row of a folder: a child folder (``count`` keys under it) or a key."""

    name: bytes  # the full key, or the folder's prefix (ending with the separator)
    label: bytes  # the part after the parent folder
    is_folder: bool
    count: int | None = None
    kv: KeyValue | None = None  # keys: revisions, version, lease (no value)

    @property
    def token(self) -> str:
        return encode_key(self.name)


@dataclass(frozen=True)
class Listing:
    """One page of a folder level. ``next_after``: the cursor for the next page (None: last)."""

    prefix: bytes
    folder: bytes
    entries: list[TreeEntry]
    next_after: bytes | None
    revision: int
    requests: int  # range requests it took (counts not included)


def _start_after(after: bytes, folder: bytes) -> bytes | None:
    """The first key after cursor ``after`` (a key, or a child folder of ``folder``)."""
    sep = separator()
    if len(after) > len(folder) and after.endswith(sep):
        end = prefix_range_end(after)
        return None if end == b"\0" else end
    return after + b"\0"


def list_children(
    prefix: bytes = b"",
    *,
    after: bytes | None = None,
    limit: int | None = None,
    counts: bool = True,
) -> Listing:
    """One level of the tree under ``prefix``: child folders and direct keys, in key order.

    ``prefix`` is a folder (``b"/app/"``; ``b""`` is the root) or a folder plus a name filter
    (``b"/app/co"``: entries of ``/app/`` whose names start with ``co``). Keys-only ranges of at
    most ``limit + 1`` keys are read from the prefix; on meeting a key in a child folder the
    range start jumps past the whole folder (to the folder prefix's range end), so a child folder
    costs one request however many keys it holds. At most ``limit`` entries (default
    :func:`page_size`) are returned; ``next_after`` is the cursor for the next page (pass it as
    ``after``). With ``counts``, each folder's key count comes from count-only ranges, batched in
    read-only transactions. Every read is pinned to the revision of the first one.
    """
    c = etcd.client()
    sep = separator()
    limit = page_size() if limit is None else max(1, limit)
    folder = folder_of(prefix)
    end = prefix_range_end(prefix) if prefix else b"\0"
    start: bytes | None = prefix if prefix else b"\0"
    if after is not None and after.startswith(prefix):
        start = _start_after(after, folder)
        if start is not None and start < prefix:
            start = prefix
    entries: list[TreeEntry] = []
    revision = 0
    requests = 0
    more_entries = False
    while start is not None and (end == b"\0" or start < end):
        want = limit + 1 - len(entries)
        resp = c.get(start, range_end=end, keys_only=True, limit=want, revision=revision)
        requests += 1
        revision = revision or resp.header.revision
        next_start: bytes | None = start
        for kv in resp.kvs:
            k = kv.key
            if next_start is None or k < next_start:
                continue  # inside a child folder already listed
            if len(entries) == limit:
                more_entries = True
                break
            rest = k[len(folder) :]
            i = rest.find(sep) if sep else -1
            if i >= 0:
                child = folder + rest[: i + len(sep)]
                entries.append(TreeEntry(child, child[len(folder) :], True))
                end_of_child = prefix_range_end(child)
                next_start = None if end_of_child == b"\0" else end_of_child
            else:
                entries.append(TreeEntry(k, rest, False, kv=kv))
                next_start = k + b"\0"
        if more_entries or not resp.more:
            break
        start = next_start
    next_after = entries[-1].name if more_entries else None
    if counts:
        entries = _with_counts(entries, revision)
    return Listing(prefix, folder, entries, next_after, revision, requests)


def _with_counts(entries: list[TreeEntry], revision: int) -> list[TreeEntry]:
    folders = [e for e in entries if e.is_folder]
    found: dict[bytes, int] = {}
    for i in range(0, len(folders), MAX_TXN_OPS):
        chunk = folders[i : i + MAX_TXN_OPS]
        ops = [Op.get(e.name, prefix=True, count_only=True, revision=revision) for e in chunk]
        resp = etcd.client().txn(success=ops)
        for e, r in zip(chunk, resp.responses, strict=True):
            assert isinstance(r, GetResponse)
            found[e.name] = r.count
    return [
        TreeEntry(e.name, e.label, True, found.get(e.name)) if e.is_folder else e for e in entries
    ]


def count_prefix(prefix: bytes) -> int:
    """How many keys start with ``prefix`` (a count-only range; ``b""`` counts every key)."""
    return count_prefix_at(prefix)[0]


def count_prefix_at(prefix: bytes) -> tuple[int, int]:
    """``(count, revision)``: how many keys start with ``prefix``, and at which revision."""
    end = prefix_range_end(prefix) if prefix else b"\0"
    resp = etcd.client().get(prefix or b"\0", range_end=end, count_only=True)
    return resp.count, resp.revision


# --- reading ------------------------------------------------------------------------------


def get_key(key: bytes) -> KeyValue | None:
    """The key's current state, or None when it does not exist."""
    return etcd.client().get(key).kv


def get_version(key: bytes, mod_revision: int) -> KeyValue:
    """The version of ``key`` written at ``mod_revision``.

    ``VersionNotFoundError`` when the key had no version written at that revision, or the
    revision is compacted or in the future.
    """
    try:
        kv = etcd.client().get(key, revision=mod_revision).kv
    except CompactedError as exc:
        raise VersionNotFoundError(f"revision {mod_revision} has been compacted") from exc
    except FutureRevisionError as exc:
        raise VersionNotFoundError(f"revision {mod_revision} is in the future") from exc
    if kv is None or kv.mod_revision != mod_revision:
        raise VersionNotFoundError(f"no version of the key was written at revision {mod_revision}")
    return kv


@dataclass(frozen=True)
class ValueView:
    """How to show a value: its detected ``format`` and the ``text`` to display."""

    format: ValueFormat
    text: str  # pretty-printed JSON / YAML, the text, or a hex dump
    raw_text: str  # the value as text (UTF-8 with escapes); "" for binary
    size: int
    truncated: bool = False  # hex dump cut at HEXDUMP_LIMIT bytes


def hexdump(data: bytes, limit: int = HEXDUMP_LIMIT) -> str:
    """A classic hex dump: offset, 16 bytes in hex, the printable ASCII."""
    lines = []
    for off in range(0, min(len(data), limit), 16):
        chunk = data[off : off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        hexes = f"{hexes[:23]} {hexes[23:]}" if len(chunk) > 8 else hexes
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {hexes:<48}  |{text}|")
    return "\n".join(lines)


def _is_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in text) or "\x7f" in text:
        return None
    return text


def _yaml_pretty(text: str) -> str | None:
    """Re-dumped YAML for a mapping or sequence document without aliases, else None."""
    try:
        if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
            return None  # no alias expansion of untrusted input ("billion laughs")
        doc = yaml.safe_load(text)
        if not isinstance(doc, dict | list) or not doc:
            return None
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return None


def describe_value(value: bytes) -> ValueView:
    """Detect the value's format (JSON object/array, YAML mapping/sequence, text, binary).

    JSON and YAML are pretty-printed; binary values become a hex dump.
    """
    if not value:
        return ValueView("empty", "", "", 0)
    text = _is_text(value)
    if text is None:
        return ValueView(
            "binary", hexdump(value), "", len(value), truncated=len(value) > HEXDUMP_LIMIT
        )
    if len(value) <= PRETTY_LIMIT:
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict | list):
                return ValueView(
                    "json", json.dumps(doc, indent=2, ensure_ascii=False), text, len(value)
                )
        pretty = _yaml_pretty(text) if ("\n" in text or ": " in text) else None
        if pretty is not None:
            return ValueView("yaml", pretty, text, len(value))
    return ValueView("text", text, text, len(value))


@dataclass(frozen=True)
class LeaseInfo:
    """A lease's id, seconds left (-1: expired or revoked) and granted TTL."""

    id: int
    ttl: int
    granted_ttl: int

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"


def lease_info(lease_id: int) -> LeaseInfo | None:
    """The lease's remaining TTL (``time_to_live``), or None for lease 0."""
    if not lease_id:
        return None
    r = etcd.client().time_to_live(lease_id)
    return LeaseInfo(lease_id, r.ttl, r.granted_ttl)


@dataclass(frozen=True)
class History:
    """Versions of a key, newest first, of its current life (since its create revision).

    ``complete``: reached the create revision; else ``compacted`` (older versions were
    compacted away) or ``truncated`` (stopped at the ``limit``).
    """

    key: bytes
    versions: list[KeyValue]
    complete: bool
    compacted: bool = False
    truncated: bool = False


def history(key: bytes, *, limit: int = 100, current: KeyValue | None = None) -> History:
    """Walk back through the key's versions still inside the compaction window.

    From the current version, a get at ``mod_revision - 1`` returns the previous version (its own
    mod revision), until the create revision (the first version) or a ``CompactedError``.
    Returns an empty history for a missing key. At most ``limit`` versions (one read each).
    """
    c = etcd.client()
    kv = current if current is not None else get_key(key)
    if kv is None:
        return History(key, [], complete=True)
    versions = [kv]
    while kv.mod_revision > kv.create_revision:
        if len(versions) >= limit:
            return History(key, versions, complete=False, truncated=True)
        try:
            prev = c.get(key, revision=kv.mod_revision - 1).kv
        except CompactedError:
            return History(key, versions, complete=False, compacted=True)
        if prev is None or prev.create_revision != kv.create_revision:
            break  # cannot happen within one life of the key; stop rather than loop
        versions.append(prev)
        kv = prev
    return History(key, versions, complete=True)


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff: ``kind`` is ``"add"``, ``"del"``, ``"ctx"`` or ``"hunk"``."""

    kind: Literal["add", "del", "ctx", "hunk", "file"]
    text: str


def _diff_text(value: bytes) -> list[str]:
    text = _is_text(value)
    if text is None:
        return hexdump(value).splitlines()
    return text.splitlines()


def diff_lines(
    old: bytes, new: bytes, old_label: str = "old", new_label: str = "new", *, context: int = 3
) -> list[DiffLine]:
    """A unified diff (difflib) of two values as plain data; templates escape the text.

    Text values are compared line by line, binary ones by their hex dumps. An empty list means
    the values are equal.
    """
    if old == new:
        return []
    out: list[DiffLine] = []
    for line in difflib.unified_diff(
        _diff_text(old), _diff_text(new), old_label, new_label, n=context, lineterm=""
    ):
        if line.startswith(("---", "+++")) and len(out) < 2:
            out.append(DiffLine("file", line))
        elif line.startswith("@@"):
            out.append(DiffLine("hunk", line))
        elif line.startswith("+"):
            out.append(DiffLine("add", line[1:]))
        elif line.startswith("-"):
            out.append(DiffLine("del", line[1:]))
        else:
            out.append(DiffLine("ctx", line[1:]))
    if not out:  # differ only in line endings / trailing newline
        out = [DiffLine("hunk", "values differ only in line endings or a trailing newline")]
    return out


# --- writing --------------------------------------------------------------------------------


def _check_key(key: bytes) -> None:
    if not key:
        raise InvalidKeyError("the key is empty")


def _current_on_failure(key: bytes, responses: list[Any]) -> KeyValue | None:
    for r in responses:
        if isinstance(r, GetResponse):
            return r.kv
    return get_key(key)


def put_key(
    key: bytes,
    value: bytes,
    expected_mod_revision: int,
    *,
    ttl: int | None = None,
    keep_lease: bool = True,
) -> int:
    """Write ``value`` if the key's mod revision is still ``expected_mod_revision``.

    ``expected_mod_revision`` 0 means "the key must not exist" (guard: create revision == 0).
    ``ttl`` (seconds) grants a new lease and attaches the key to it; otherwise an existing key
    keeps its lease when ``keep_lease``. Returns the revision of the write; raises
    :class:`ConflictError` (with the key's current state) when the guard fails.
    """
    _check_key(key)
    c = etcd.client()
    lease = 0
    if ttl is not None and ttl > 0:
        lease = c.grant(int(ttl)).id
    if expected_mod_revision == 0:
        guard = Compare.create_revision(key) == 0
        put = Op.put(key, value, lease=lease)
    else:
        guard = Compare.mod_revision(key) == expected_mod_revision
        put = Op.put(key, value, lease=lease, ignore_lease=keep_lease and not lease)
    resp = c.txn(compare=[guard], success=[put], failure=[Op.get(key)])
    if not resp.succeeded:
        if lease:
            c.revoke(lease)
        raise ConflictError(key, _current_on_failure(key, resp.responses), expected_mod_revision)
    return resp.revision


def create_key(key: bytes, value: bytes, *, ttl: int | None = None) -> int:
    """Create a new key (``ConflictError`` if it exists); optional ``ttl`` via a new lease."""
    return put_key(key, value, 0, ttl=ttl)


def update_key(key: bytes, value: bytes, expected_mod_revision: int) -> int:
    """Replace the value of a key last seen at ``expected_mod_revision`` (keeps its lease)."""
    return put_key(key, value, expected_mod_revision)


def delete_key(key: bytes, expected_mod_revision: int) -> int:
    """Delete a key last seen at ``expected_mod_revision``; ``ConflictError`` if it changed."""
    _check_key(key)
    c = etcd.client()
    resp = c.txn(
        compare=[Compare.mod_revision(key) == expected_mod_revision],
        success=[Op.delete(key)],
        failure=[Op.get(key)],
    )
    if not resp.succeeded:
        raise ConflictError(key, _current_on_failure(key, resp.responses), expected_mod_revision)
    return resp.revision


def restore_version(key: bytes, mod_revision: int, expected_mod_revision: int) -> int:
    """Write back the value the key had at ``mod_revision`` (a guarded write, see put_key)."""
    old = get_version(key, mod_revision)
    return put_key(key, old.value, expected_mod_revision)


def delete_prefix(prefix: bytes, *, seen_revision: int | None = None) -> int:
    """Delete every key starting with ``prefix`` (one prefix delete); returns how many.

    With ``seen_revision`` (the revision at which the caller counted the keys) the delete is
    guarded: if any key under the prefix was written after it, nothing is deleted and
    :class:`PrefixChangedError` says how many keys there are now. The empty prefix (the whole
    keyspace) is refused with ``InvalidKeyError``.
    """
    _check_key(prefix)
    c = etcd.client()
    if seen_revision is None:
        return c.delete(prefix, prefix=True).deleted
    resp = c.txn(
        compare=[Compare.mod_revision(prefix, prefix=True) < seen_revision + 1],
        success=[Op.delete(prefix, prefix=True)],
        failure=[Op.get(prefix, prefix=True, count_only=True)],
    )
    if not resp.succeeded:
        now = resp.responses[0]
        assert isinstance(now, GetResponse)
        raise PrefixChangedError(prefix, now.count, resp.revision)
    deleted = resp.responses[0]
    assert isinstance(deleted, DeleteResponse)
    return deleted.deleted


# --- export / import ----------------------------------------------------------------------


def iter_prefix(prefix: bytes, *, page: int = 500, revision: int = 0) -> Iterator[KeyValue]:
    """Every key-value under ``prefix`` in key order, read in pages at one revision."""
    c = etcd.client()
    start = prefix or b"\0"
    end = prefix_range_end(prefix) if prefix else b"\0"
    while True:
        resp = c.get(start, range_end=end, limit=page, revision=revision)
        revision = revision or resp.header.revision
        yield from resp.kvs
        if not resp.more or not resp.kvs:
            return
        start = resp.kvs[-1].key + b"\0"


def _export_header(prefix: bytes, revision: int) -> dict[str, Any]:
    text, enc = to_text(prefix)
    return {
        "format": EXPORT_FORMAT,
        "prefix": text,
        "prefix_encoding": enc,
        "revision": revision,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _export_item(kv: KeyValue) -> dict[str, str]:
    key, key_enc = to_text(kv.key)
    value, value_enc = to_text(kv.value)
    return {"key": key, "key_encoding": key_enc, "value": value, "value_encoding": value_enc}


def export_document(prefix: bytes) -> dict[str, Any]:
    """The export of ``prefix`` as a JSON-ready dict (leases are not exported).

    ``{"format", "prefix", "prefix_encoding", "revision", "exported_at", "keys": [{"key",
    "key_encoding", "value", "value_encoding"}]}``; encodings are ``"utf-8"`` or ``"base64"``.
    """
    revision = etcd.client().get(prefix or b"\0", count_only=True).header.revision
    doc = _export_header(prefix, revision)
    doc["keys"] = [_export_item(kv) for kv in iter_prefix(prefix, revision=revision)]
    return doc


def export_chunks(prefix: bytes) -> Iterator[str]:
    """The same document as :func:`export_document`, as JSON text chunks for streaming."""
    revision = etcd.client().get(prefix or b"\0", count_only=True).header.revision
    head = json.dumps(_export_header(prefix, revision), indent=1, ensure_ascii=False)
    yield head[:-2] + ',\n "keys": ['
    first = True
    for kv in iter_prefix(prefix, revision=revision):
        yield ("\n  " if first else ",\n  ") + json.dumps(_export_item(kv), ensure_ascii=False)
        first = False
    yield "\n ]\n}\n"


@dataclass(frozen=True)
class ExportDocument:
    """A parsed export file: its prefix and ``(key, value)`` items."""

    prefix: bytes
    items: list[tuple[bytes, bytes]]
    revision: int = 0


def parse_export(data: bytes | str | dict[str, Any]) -> ExportDocument:
    """Validate and decode an export document (file bytes, text or already-parsed JSON).

    ``ImportFormatError`` for anything malformed: bad JSON, an unknown format, a bad encoding,
    a duplicate key, or a key outside the document's prefix.
    """
    try:
        doc = json.loads(data) if isinstance(data, bytes | str) else data
    except (ValueError, RecursionError) as exc:
        raise ImportFormatError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise ImportFormatError(f"not an export document (expected format {EXPORT_FORMAT!r})")
    try:
        prefix = from_text(str(doc.get("prefix", "")), str(doc.get("prefix_encoding", "utf-8")))
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise ImportFormatError('"keys" must be a list')
        items: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        for n, item in enumerate(keys):
            if not isinstance(item, dict):
                raise ImportFormatError(f"keys[{n}] is not an object")
            key_text, value_text = item.get("key"), item.get("value")
            if not isinstance(key_text, str) or not isinstance(value_text, str):
                raise ImportFormatError(f'keys[{n}]: "key" and "value" must be strings')
            key = from_text(key_text, str(item.get("key_encoding", "utf-8")))
            value = from_text(value_text, str(item.get("value_encoding", "utf-8")))
            if not key:
                raise ImportFormatError(f"keys[{n}]: empty key")
            if not key.startswith(prefix):
                raise ImportFormatError(f"keys[{n}]: {display(key)!r} is outside the prefix")
            if key in seen:
                raise ImportFormatError(f"keys[{n}]: duplicate key {display(key)!r}")
            seen.add(key)
            items.append((key, value))
        revision = doc.get("revision", 0)
    except ValueError as exc:
        if isinstance(exc, ImportFormatError):
            raise
        raise ImportFormatError(str(exc)) from exc
    return ExportDocument(prefix, items, revision if isinstance(revision, int) else 0)


@dataclass(frozen=True)
class PlannedChange:
    """One write of an import: ``expected_mod_revision`` guards it (0: must not exist)."""

    action: Literal["create", "change", "delete"]
    key: bytes
    value: bytes  # the new value ("" for deletes)
    old_value: bytes  # the current value ("" for creates)
    expected_mod_revision: int


@dataclass(frozen=True)
class ImportPlan:
    """What importing a document would do, computed at ``revision`` (a dry run)."""

    prefix: bytes
    replace: bool
    revision: int
    changes: list[PlannedChange] = field(default_factory=list)
    unchanged: int = 0

    def of(self, action: str) -> list[PlannedChange]:
        return [c for c in self.changes if c.action == action]

    @property
    def creates(self) -> list[PlannedChange]:
        return self.of("create")

    @property
    def updates(self) -> list[PlannedChange]:
        return self.of("change")

    @property
    def deletes(self) -> list[PlannedChange]:
        return self.of("delete")

    def to_json(self) -> str:
        """Serialize (for keeping a dry run until it is applied)."""
        return json.dumps(
            {
                "prefix": encode_key(self.prefix),
                "replace": self.replace,
                "revision": self.revision,
                "unchanged": self.unchanged,
                "changes": [
                    [
                        c.action,
                        encode_key(c.key),
                        encode_key(c.value),
                        encode_key(c.old_value),
                        c.expected_mod_revision,
                    ]
                    for c in self.changes
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ImportPlan:
        """Inverse of :meth:`to_json`."""

        def dec(token: str) -> bytes:
            return decode_key(token, allow_empty=True)

        d = json.loads(text)
        changes = [
            PlannedChange(a, dec(k), dec(v), dec(o), int(m)) for a, k, v, o, m in d["changes"]
        ]
        return cls(
            dec(d["prefix"]), bool(d["replace"]), int(d["revision"]), changes, int(d["unchanged"])
        )


def plan_import(
    doc: ExportDocument, *, prefix: bytes | None = None, replace: bool = False
) -> ImportPlan:
    """A dry run: the creates, changes and (with ``replace``) deletes importing ``doc`` needs.

    ``prefix`` re-roots the document (its keys move from ``doc.prefix`` to ``prefix``; default:
    the document's own prefix). ``replace`` deletes existing keys under the prefix that the
    document does not hold. Reads the prefix once, at one revision; nothing is written.
    """
    target = doc.prefix if prefix is None else prefix
    if replace and not target:
        raise InvalidKeyError("replace needs a non-empty prefix")
    wanted = {target + k[len(doc.prefix) :]: v for k, v in doc.items}
    revision = etcd.client().get(target or b"\0", count_only=True).header.revision
    existing = {kv.key: kv for kv in iter_prefix(target, revision=revision)}
    changes: list[PlannedChange] = []
    unchanged = 0
    for key in sorted(set(wanted) | (set(existing) if replace else set())):
        kv = existing.get(key)
        if key not in wanted:
            assert kv is not None
            changes.append(PlannedChange("delete", key, b"", kv.value, kv.mod_revision))
        elif kv is None:
            changes.append(PlannedChange("create", key, wanted[key], b"", 0))
        elif kv.value != wanted[key]:
            changes.append(PlannedChange("change", key, wanted[key], kv.value, kv.mod_revision))
        else:
            unchanged += 1
    return ImportPlan(target, replace, revision, changes, unchanged)


@dataclass(frozen=True)
class ImportResult:
    """An applied plan: ``applied`` writes, the last transaction's ``revision``."""

    applied: int
    revision: int


def _change_ops(change: PlannedChange) -> tuple[Compare, Op]:
    if change.action == "create":
        return Compare.create_revision(change.key) == 0, Op.put(change.key, change.value)
    guard = Compare.mod_revision(change.key) == change.expected_mod_revision
    if change.action == "delete":
        return guard, Op.delete(change.key)
    return guard, Op.put(change.key, change.value)


def apply_import(plan: ImportPlan, *, chunk: int = MAX_TXN_OPS) -> ImportResult:
    """Apply a plan in transactions of up to ``chunk`` writes, each guarded key by key.

    Every write requires the key to be as the dry run saw it (mod revision, or absent), so a
    concurrent change is never overwritten: the failing transaction writes nothing and
    :class:`ImportConflictError` says how many changes were applied before it.
    """
    c = etcd.client()
    applied, revision = 0, 0
    for batch in _chunks(plan.changes, chunk):
        pairs = [_change_ops(ch) for ch in batch]
        resp = c.txn(compare=[g for g, _ in pairs], success=[op for _, op in pairs])
        if not resp.succeeded:
            raise ImportConflictError(applied, [ch.key for ch in batch if _changed(ch)])
        applied += len(batch)
        revision = resp.revision
    return ImportResult(applied, revision)


def _changed(change: PlannedChange) -> bool:
    kv = get_key(change.key)
    return (kv.mod_revision if kv is not None else 0) != change.expected_mod_revision


def _chunks(items: list[PlannedChange], size: int) -> Iterable[list[PlannedChange]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
