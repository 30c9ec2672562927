"""HPACK coding with ``hpack``'s results for less work: an encoder that writes what ``hpack.Encoder``
writes, byte for byte, and a decoder that reads what ``hpack.Decoder`` reads.

Theory of operation
-------------------
``hpack.Encoder`` looks every field up in its dynamic table by scanning the table (about fifty
entries at the default 4 KiB), logs each field at DEBUG level (two logging calls per field, even
with DEBUG off) and converts each name and value again. ``Encoder`` below keeps the same table (the
same entries, order, sizes and evictions: ``hpack.table.HeaderTable``'s ``dynamic_entries``) and the
same choice for every field (indexed, literal with an indexed name, literal; incremental indexing, or
never indexed for a ``NeverIndexedHeaderTuple`` or a third tuple item that is true; Huffman coding
as asked), so its output is ``hpack.Encoder``'s; what differs is how it finds an entry: two dicts,
``(name, value)`` and ``name`` to the sequence number of their newest entry, whose index follows
from the number of entries added since (entries are added at index 62 and move up one per later
addition; the oldest are evicted first, so a dict entry goes when the entry it names does).

One deliberate difference: a table size set twice to the same value before the next block (a peer's
SETTINGS_HEADER_TABLE_SIZE repeated) is still announced at the start of that block. ``hpack.Encoder``
clears its flag on the repeat and announces nothing, so the peer's decoder keeps its old table size:
it reads indices past the end of its table when ours grew, and refuses the block when ours shrank.

``Decoder`` reads the most common representation, an indexed field whose index fits the first
octet, in place (``hpack.Decoder`` makes a view of the rest of the block, decodes the integer and logs
twice for each), and hands every other one to ``hpack.Decoder``'s own methods, in the same order and
with the same checks (the header list size, the table size), so results, errors and table are hpack's.

h2 takes any object with ``encode`` and ``header_table_size`` as its encoder: each ``H2Link`` gives
its connection a new ``Encoder`` before it sends anything, and makes the connection's decoder a
``Decoder`` (a change of class: the limits the side set on it stay).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.hpack import INDEX_INCREMENTAL, INDEX_NEVER
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable, table_entry_size

__all__ = ["Decoder", "Encoder"]

_STATIC = HeaderTable.STATIC_TABLE_MAPPING
_FIRST_DYNAMIC = HeaderTable.STATIC_TABLE_LENGTH + 1
# The indexed representation of each index below 127 (one octet).
_INDEXED = [bytes([0x80 | i]) for i in range(127)]


def _to_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    return (value if type(value) is str else str(value)).encode("utf-8")


class _Table(HeaderTable):
    """``HeaderTable`` with an index of its dynamic entries (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._added = 0  # entries ever added: the newest has sequence number ``_added - 1``
        self._full: dict[tuple[bytes, bytes], int] = {}
        self._names: dict[bytes, int] = {}

    def _clear(self) -> None:
        self.dynamic_entries.clear()
        self._current_size = 0
        self._full.clear()
        self._names.clear()

    def add(self, name: bytes, value: bytes) -> None:
        size = table_entry_size(name, value)
        if size > self._maxsize:
            self._clear()
            return
        seq = self._added
        self._added = seq + 1
        self.dynamic_entries.appendleft((name, value))
        self._full[(name, value)] = seq
        self._names[name] = seq
        self._current_size += size
        self._shrink()

    def _shrink(self) -> None:
        entries = self.dynamic_entries
        cursize = self._current_size
        maxsize = self._maxsize
        while cursize > maxsize:
            seq = self._added - len(entries)  # (the oldest entry's)
            name, value = entries.pop()
            cursize -= table_entry_size(name, value)
            key = (name, value)
            if self._full.get(key) == seq:
                del self._full[key]
            if self._names.get(name) == seq:
                del self._names[name]
        self._current_size = cursize

    @property  # type: ignore[override]
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        newmax = int(newmax)
        oldmax = self._maxsize
        self._maxsize = newmax
        self.resized = newmax != oldmax
        if newmax <= 0:
            self._clear()
        elif oldmax > newmax:
            self._shrink()

    def search(self, name: bytes, value: bytes) -> tuple[int, bytes, bytes | None] | None:
        partial = None
        static = _STATIC.get(name)
        if static:
            index = static[1].get(value)
            if index is not None:
                return index, name, value
            partial = (static[0], name, None)
        seq = self._full.get((name, value))
        if seq is not None:
            return _FIRST_DYNAMIC + self._added - 1 - seq, name, value
        if partial is None:
            seq = self._names.get(name)
            if seq is not None:
                partial = (_FIRST_DYNAMIC + self._added - 1 - seq, name, None)
        return partial


class Encoder(hpack.Encoder):
    """``hpack.Encoder`` with an indexed table and no per-field logging (see the module docstring)."""

    header_table: _Table

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _Table()

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if isinstance(headers, dict):
            return super().encode(headers, huffman)
        table = self.header_table
        block: list[bytes] = []
        # Every size change not yet announced, even when the last setting repeated the one before
        # (hpack's flag is cleared then, and the change was never announced: the peer's decoder would
        # keep its old table, read past the end of a smaller one or refuse a block that does not
        # shrink it).
        if table.resized or self.table_size_changes:
            block.append(self._encode_table_size_change())
            table.resized = False
        fields: Iterable[Any] = headers
        for header in fields:
            if isinstance(header, HeaderTuple):
                sensitive = not header.indexable
            elif len(header) > 2:
                sensitive = header[2]
            else:
                sensitive = False
            block.append(self.add((_to_bytes(header[0]), _to_bytes(header[1])), sensitive, huffman))
        return b"".join(block)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        indexbit = INDEX_NEVER if sensitive else INDEX_INCREMENTAL
        table = self.header_table
        match = table.search(name, value)
        if match is None:
            encoded = self._encode_literal(name, value, indexbit, huffman)
            if not sensitive:
                table.add(name, value)
            return encoded
        index, name, perfect = match
        if perfect is not None:
            return _INDEXED[index] if index < 127 else self._encode_indexed(index)
        encoded = self._encode_indexed_literal(index, value, indexbit, huffman)
        if not sensitive:
            table.add(name, value)
        return encoded


class Decoder(hpack.Decoder):
    """``hpack.Decoder`` reading a one-octet indexed field in place (``hpack.Decoder`` makes a view of
    the rest of the block, decodes the integer and logs twice for each); every other representation
    is ``hpack.Decoder``'s own code. Raw decoding only (what h2 asks for)."""

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)
        data_mem = memoryview(data)
        headers: list[HeaderTuple] = []
        get = self.header_table.get_by_index
        limit = self.max_header_list_size
        data_len = len(data)
        inflated_size = 0
        current_index = 0
        while current_index < data_len:
            current = data[current_index]
            if current & 0x80 and current != 0xFF:  # indexed, the index in this octet
                header = HeaderTuple(*get(current & 0x7F))
                consumed = 1
            elif current & 0x80:
                header, consumed = self._decode_indexed(data_mem[current_index:])
            elif current & 0x40:
                header, consumed = self._decode_literal_index(data_mem[current_index:])
            elif current & 0x20:
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                consumed = self._update_encoding_context(data_mem[current_index:])
                current_index += consumed
                continue
            else:
                header, consumed = self._decode_literal_no_index(data_mem[current_index:])
            headers.append(header)
            inflated_size += table_entry_size(header[0], header[1])
            if inflated_size > limit:
                raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
            current_index += consumed
        self._assert_valid_table_size()
        # (hpack copies each field into a new tuple of the same class and octets here.)
        return headers
