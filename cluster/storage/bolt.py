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

``BoltReader`` reads such files back, and those real bbolt writes (etcd's own
snapshots: inline buckets, free pages, two metas of which the newer counts),
from bytes or an mmap, lazily and checking the structure as it goes: each
problem is a ``BoltError`` carrying the byte offset where it was found
(``cluster.snapshot`` status and restore use it).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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

Buffer = bytes | bytearray | memoryview | mmap.mmap
"""What the reader reads: the whole file in memory, or mapped."""


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


# -- reading ---------------------------------------------------------------------------


class BoltError(ValueError):
    """A bbolt file that does not verify; ``offset`` is the byte where the problem is."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class BoltMeta:
    """The meta page bbolt opens a file with (the newer of the two that verify)."""

    page_size: int
    root: int  # the root bucket's root page
    freelist: int
    high_water: int  # the first page id past the data (bbolt's meta.pgid)
    txid: int

    @property
    def size(self) -> int:
        """The data's size in bytes (bbolt's ``tx.Size()``)."""
        return self.high_water * self.page_size


def read_meta(buf: Buffer) -> BoltMeta:
    """The newer valid meta page; ``BoltError`` if neither verifies or the file is short.

    Meta 1 is found with the page size meta 0 gives (``PAGE_SIZE`` if meta 0 is bad).
    """
    page_size = PAGE_SIZE
    found: list[BoltMeta] = []
    for pgid in (0, 1):
        off = pgid * page_size + _PAGE.size
        if len(buf) < off + _META.size + 8:
            continue
        raw = bytes(buf[off : off + _META.size])
        magic, version, ps, _flags, root, _seq, freelist, high, txid = _META.unpack(raw)
        (checksum,) = struct.unpack_from("<Q", buf, off + _META.size)
        if magic != MAGIC or version != VERSION or checksum != fnv1a_64(raw):
            continue
        if ps < 512 or ps > 1 << 16 or ps & (ps - 1):
            continue
        if pgid == 0:
            page_size = ps
        found.append(BoltMeta(ps, root, freelist, high, txid))
    if not found:
        raise BoltError(0, "not a bbolt file: no valid meta page (magic, version, checksum)")
    meta = max(found, key=lambda m: m.txid)
    if meta.size > len(buf):
        raise BoltError(
            len(buf), f"truncated: the meta page says {meta.size} bytes, the file has {len(buf)}"
        )
    if not 2 <= meta.root < meta.high_water:
        raise BoltError(_PAGE.size, f"the root page {meta.root} is out of range")
    return meta


class BoltReader:
    """Reads the buckets of a bbolt file (bytes or an mmap), checking its structure.

    Checks what bbolt's ``tx.Check`` would report for a file holding etcd's data: page
    headers that name another page, pages past the high-water mark or referenced twice,
    unknown page types, elements that run past their page, keys out of order. Each
    problem is a ``BoltError`` with the offset it was found at. ``on_pages`` is called
    with the number of pages read each time a page (and its overflow) is visited.
    """

    def __init__(self, buf: Buffer, on_pages: Callable[[int], None] | None = None) -> None:
        self.buf = buf
        self.meta = read_meta(buf)
        self._on_pages = on_pages
        self._seen: set[int] = set()

    def buckets(self) -> Iterator[tuple[bytes, Iterator[tuple[bytes, bytes]]]]:
        """Every top-level bucket in name order, with its records read lazily in key order."""
        last: bytes | None = None
        for name, value, flags, at in self._tree(self.meta.root):
            if not flags & _BUCKET_LEAF:
                raise BoltError(at, f"{name!r} in the root is not a bucket")
            if last is not None and name <= last:
                raise BoltError(at, f"bucket {name!r} is out of order")
            last = name
            if len(value) < _BUCKET.size:
                raise BoltError(at, f"bucket {name!r} has a {len(value)}-byte header")
            yield name, self._records(name, value, at)

    def _records(self, name: bytes, value: bytes, at: int) -> Iterator[tuple[bytes, bytes]]:
        root, _seq = _BUCKET.unpack_from(value)
        elements = (
            self._page(value, _BUCKET.size, None, len(value), at) if root == 0 else self._tree(root)
        )
        last: bytes | None = None
        for key, val, flags, where in elements:
            if flags & _BUCKET_LEAF:
                raise BoltError(where, f"bucket {name!r}: nested bucket {key!r} is not supported")
            if last is not None and key <= last:
                raise BoltError(where, f"bucket {name!r}: key {key!r} is out of order")
            last = key
            yield key, val

    def _tree(self, pgid: int) -> Iterator[tuple[bytes, bytes, int, int]]:
        meta = self.meta
        if not 2 <= pgid < meta.high_water:  # 0 and 1 are the metas
            raise BoltError(meta.size, f"page {pgid} is out of range (2 to {meta.high_water - 1})")
        off = pgid * meta.page_size
        _id, _flags, _count, overflow = _PAGE.unpack_from(self.buf, off)
        if pgid + overflow >= meta.high_water:
            raise BoltError(off, f"page {pgid} and its {overflow} overflow pages pass the end")
        for p in range(pgid, pgid + overflow + 1):
            if p in self._seen:
                raise BoltError(off, f"page {p} is referenced twice")
            self._seen.add(p)
        if self._on_pages is not None:
            self._on_pages(overflow + 1)
        end = off + (overflow + 1) * meta.page_size
        yield from self._page(self.buf, off, pgid, end, off)

    def _page(
        self, buf: Buffer, off: int, pgid: int | None, end: int, where: int
    ) -> Iterator[tuple[bytes, bytes, int, int]]:
        """The elements of the page at ``off`` of ``buf`` (``pgid`` None: an inline page;
        ``where`` is its offset in the file, for errors)."""
        if off + _PAGE.size > end:
            raise BoltError(where, "truncated page header")
        page_id, flags, count, _overflow = _PAGE.unpack_from(buf, off)
        if pgid is not None and page_id != pgid:
            raise BoltError(where, f"page {pgid}: its header says page {page_id}")
        base = off + _PAGE.size
        size = _LEAF_ELEMENT.size  # == _BRANCH_ELEMENT.size
        if base + count * size > end:
            raise BoltError(where, f"page {page_id}: {count} elements do not fit")
        if flags & _BRANCH_PAGE and pgid is not None:
            for i in range(count):
                _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(buf, base + i * size)
                yield from self._tree(child)
        elif flags & _LEAF_PAGE:
            for i in range(count):
                at = base + i * size
                eflags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(buf, at)
                start = at + pos
                stop = start + ksize + vsize
                here = where + (at - off)
                if stop > end:
                    raise BoltError(here, f"page {page_id}: element {i} runs past it")
                key, value = bytes(buf[start : start + ksize]), bytes(buf[start + ksize : stop])
                yield key, value, eflags, here
        else:
            raise BoltError(where, f"page {page_id} has type {flags:#x}, not a branch or leaf")


def read_bolt(data: Buffer) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """The buckets of a bbolt file: ``{name: [(key, value), ...]}`` (``BoltError``, a
    ``ValueError``, if it does not verify)."""
    return {name: list(items) for name, items in BoltReader(data).buckets()}
