"""Writing bbolt database files: the format etcd's tools expect a backend snapshot in.

etcd's backend is a bbolt file, and what its Snapshot RPC streams is that file:
``etcdctl snapshot status`` and ``snapshot restore`` open the saved stream
with bbolt. Our backend is LMDB, so the Snapshot RPC exports the committed
buckets as a bbolt file instead (see ``cluster.server.maintenance``); this
module writes one, front to back, from buckets and keys given in byte order.

The layout, bbolt's (1.3 and later, as etcd 3.4 to 3.6 read it; little-endian,
``PAGE_SIZE`` pages, page ``n`` at offset ``n * PAGE_SIZE``):

- every page starts with ``id u64, flags u16, count u16, overflow u32``; a
  page longer than one page size spans ``overflow`` more pages;
- pages 0 and 1 are the two meta pages (magic, version 2, page size, the root
  bucket's root page, the freelist page, the high-water page id, the txid and
  an FNV-1a 64 checksum of the fields before it); page 2 an empty freelist;
- a bucket is a B+tree: leaf pages hold ``(flags, pos, ksize, vsize)``
  elements, then the keys and values they point to (``pos`` is relative to
  the element); branch pages hold ``(pos, ksize, child page id)`` elements
  whose key is the first key under that child;
- the root bucket's leaves list the buckets: flag ``0x01``, the value the
  bucket's header ``(root page id, sequence)``.

Every page below the high-water mark is reachable from the root and none is
free, so bbolt's consistency check (``tx.Check``, which ``snapshot status``
runs first) finds nothing to report.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import IO

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2

_BRANCH_PAGE = 0x01
_LEAF_PAGE = 0x02
_META_PAGE = 0x04
_FREELIST_PAGE = 0x10
_BUCKET_LEAF = 0x01  # a leaf element that is a nested bucket
_MAX_COUNT = 0xFFFF  # a page's element count is a u16

_PAGE = struct.Struct("<QHHI")
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_BUCKET = struct.Struct("<QQ")  # root pgid, sequence
_META = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, seq, freelist,
# high-water pgid, txid; the u64 checksum follows

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1


def fnv1a_64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _U64
    return h


class BoltWriter:
    """Writes a bbolt file to ``out`` (seekable, positioned at 0, empty).

    ``bucket(name)`` returns the writer of one bucket: ``put`` its keys in
    increasing byte order, then ``close`` it. Buckets too must come in
    increasing name order, one at a time. ``finish`` writes the root and the
    meta pages and returns the file's size.
    """

    def __init__(self, out: IO[bytes], page_size: int = PAGE_SIZE) -> None:
        self._out = out
        self.page_size = page_size
        out.write(bytes(3 * page_size))  # metas and freelist: written by finish
        self._next_pgid = 3
        self._root = _TreeWriter(self)
        self._open: BucketWriter | None = None
        self._finished = False

    def bucket(self, name: bytes) -> BucketWriter:
        if self._open is not None:
            raise ValueError(f"bolt: bucket {self._open.name!r} is still open")
        if self._finished:
            raise ValueError("bolt: the file is finished")
        self._root.check_order(name)
        self._open = BucketWriter(self, name)
        return self._open

    def _bucket_closed(self, name: bytes, root: int) -> None:
        self._open = None
        self._root.add(name, _BUCKET.pack(root, 0), _BUCKET_LEAF)

    def write_bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> None:
        bucket = self.bucket(name)
        for key, value in items:
            bucket.put(key, value)
        bucket.close()

    def finish(self) -> int:
        if self._open is not None:
            raise ValueError(f"bolt: bucket {self._open.name!r} is still open")
        if self._finished:
            raise ValueError("bolt: the file is finished")
        self._finished = True
        root = self._root.finish()
        high_water = self._next_pgid
        out, ps = self._out, self.page_size
        out.seek(0)
        for pgid in (0, 1):
            meta = _META.pack(MAGIC, VERSION, ps, 0, root, 0, 2, high_water, pgid)
            page = _PAGE.pack(pgid, _META_PAGE, 0, 0) + meta + fnv1a_64(meta).to_bytes(8, "little")
            out.write(page.ljust(ps, b"\0"))
        out.write(_PAGE.pack(2, _FREELIST_PAGE, 0, 0).ljust(ps, b"\0"))
        out.seek(0, 2)
        out.flush()
        return high_water * ps

    def _write_page(self, flags: int, count: int, body: bytes) -> int:
        """Append one page (with overflow pages if ``body`` needs them); its id."""
        ps = self.page_size
        size = _PAGE.size + len(body)
        npages = -(-size // ps)
        pgid = self._next_pgid
        self._next_pgid += npages
        self._out.write(_PAGE.pack(pgid, flags, count, npages - 1))
        self._out.write(body)
        self._out.write(bytes(npages * ps - size))
        return pgid


class BucketWriter:
    """One bucket of a ``BoltWriter``: ``put`` in increasing key order, then ``close``."""

    def __init__(self, writer: BoltWriter, name: bytes) -> None:
        self.name = name
        self._writer = writer
        self._tree = _TreeWriter(writer)
        self._closed = False

    def put(self, key: bytes, value: bytes) -> None:
        if self._closed:
            raise ValueError(f"bolt: bucket {self.name!r} is closed")
        self._tree.check_order(key)
        self._tree.add(key, value, 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer._bucket_closed(self.name, self._tree.finish())


class _TreeWriter:
    """Leaves as keys arrive (each page filled up to the page size), then the branch levels."""

    def __init__(self, writer: BoltWriter) -> None:
        self._writer = writer
        self._last: bytes | None = None
        self._leaf: list[tuple[int, bytes, bytes]] = []
        self._leaf_size = _PAGE.size
        self._leaves: list[tuple[bytes, int]] = []  # (first key, page id)

    def check_order(self, key: bytes) -> None:
        if not key:
            raise ValueError("bolt: empty key")
        if self._last is not None and key <= self._last:
            raise ValueError(f"bolt: key {key!r} is not after {self._last!r}")
        self._last = key

    def add(self, key: bytes, value: bytes, flags: int) -> None:
        need = _LEAF_ELEMENT.size + len(key) + len(value)
        if self._leaf and (
            self._leaf_size + need > self._writer.page_size or len(self._leaf) == _MAX_COUNT
        ):
            self._flush_leaf()
        self._leaf.append((flags, key, value))
        self._leaf_size += need

    def _flush_leaf(self) -> None:
        elems, data = bytearray(), bytearray()
        n = len(self._leaf)
        for i, (flags, key, value) in enumerate(self._leaf):
            pos = (n - i) * _LEAF_ELEMENT.size + len(data)
            elems += _LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
            data += key
            data += value
        first = self._leaf[0][1] if self._leaf else b""
        pgid = self._writer._write_page(_LEAF_PAGE, n, bytes(elems + data))
        self._leaves.append((first, pgid))
        self._leaf, self._leaf_size = [], _PAGE.size

    def finish(self) -> int:
        """Write what is left and the branch pages above the leaves; the root page's id."""
        if self._leaf or not self._leaves:
            self._flush_leaf()  # an empty tree is one empty leaf
        level = self._leaves
        while len(level) > 1:
            level = self._branch_level(level)
        return level[0][1]

    def _branch_level(self, children: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        ps = self._writer.page_size
        parents: list[tuple[bytes, int]] = []
        group: list[tuple[bytes, int]] = []
        size = _PAGE.size
        for key, pgid in children:
            need = _BRANCH_ELEMENT.size + len(key)
            # At least two children a page, so that every level is smaller than the one below.
            if len(group) >= 2 and (size + need > ps or len(group) == _MAX_COUNT):
                parents.append(self._write_branch(group))
                group, size = [], _PAGE.size
            group.append((key, pgid))
            size += need
        parents.append(self._write_branch(group))
        return parents

    def _write_branch(self, group: list[tuple[bytes, int]]) -> tuple[bytes, int]:
        elems, data = bytearray(), bytearray()
        n = len(group)
        for i, (key, child) in enumerate(group):
            pos = (n - i) * _BRANCH_ELEMENT.size + len(data)
            elems += _BRANCH_ELEMENT.pack(pos, len(key), child)
            data += key
        return group[0][0], self._writer._write_page(_BRANCH_PAGE, n, bytes(elems + data))


# -- reading (for tests and checks) ---------------------------------------------------


def read_bolt(data: bytes) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """The buckets of a bbolt file written as above: ``{name: [(key, value), ...]}``.

    A small reader for checking exports (top-level buckets of plain keys,
    page-based or inline); raises ``ValueError`` on a bad meta page.
    """
    meta = _read_meta(data)
    ps = meta["page_size"]
    out: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value, flags in _walk(data, ps, meta["root"]):
        if not flags & _BUCKET_LEAF:
            raise ValueError(f"bolt: {name!r} in the root is not a bucket")
        root, _seq = _BUCKET.unpack_from(value)
        if root == 0:
            out[name] = [(k, v) for k, v, _ in _walk_page(data, value, _BUCKET.size, ps)]
        else:
            out[name] = [(k, v) for k, v, _ in _walk(data, ps, root)]
    return out


def _read_meta(data: bytes) -> dict[str, int]:
    best: dict[str, int] | None = None
    for pgid in (0, 1):
        off = pgid * PAGE_SIZE + _PAGE.size
        raw = data[off : off + _META.size]
        if len(raw) < _META.size:
            continue
        magic, version, ps, _f, root, _s, freelist, high, txid = _META.unpack(raw)
        (checksum,) = struct.unpack_from("<Q", data, off + _META.size)
        if magic != MAGIC or version != VERSION or checksum != fnv1a_64(raw):
            continue
        if best is None or txid > best["txid"]:
            best = {"page_size": ps, "root": root, "freelist": freelist, "pgid": high, "txid": txid}
    if best is None:
        raise ValueError("bolt: no valid meta page")
    return best


def _walk(data: bytes, ps: int, pgid: int) -> Iterable[tuple[bytes, bytes, int]]:
    yield from _walk_page(data, data, pgid * ps, ps)


def _walk_page(data: bytes, buf: bytes, off: int, ps: int) -> Iterable[tuple[bytes, bytes, int]]:
    _pgid, flags, count, _overflow = _PAGE.unpack_from(buf, off)
    base = off + _PAGE.size
    if flags & _BRANCH_PAGE:
        for i in range(count):
            _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(buf, base + i * 16)
            yield from _walk(data, ps, child)
    elif flags & _LEAF_PAGE:
        for i in range(count):
            at = base + i * 16
            eflags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(buf, at)
            key = bytes(buf[at + pos : at + pos + ksize])
            yield key, bytes(buf[at + pos + ksize : at + pos + ksize + vsize]), eflags
    else:
        raise ValueError(f"bolt: page at {off} has flags {flags:#x}")
