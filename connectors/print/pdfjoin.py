"""One PDF from the pages of others, written an object at a time: a letter never held whole.

Why it exists: pypdf's ``PdfWriter`` keeps every object of every page it is given in
memory until it writes, so the print-ready letter of a 99.5 MB scan cost a copy of the
scan and more (measured: a print process at 86 MB at rest peaked at 688 MB). Here each
source's objects go to the output file as they are read, and each is dropped from
pypdf's cache once written, so memory is bounded by the largest single object (one
page's image, a few MB in a scan; a PDF that is one 90 MB image still costs 90 MB),
not by the document. pypdf still does the reading — parsing, object streams, repairs
of damaged cross-reference tables, decryption (the output is not encrypted) — this
module only renumbers the objects and writes them.

What is copied from each source: every page, with what it inherits from its page tree
(resources, media box, crop box, rotation), and everything it refers to — contents,
images, fonts, annotations — each object once, renumbered. The source's catalog and
page tree are not copied (a reference to them becomes ``null``), so neither are its
outline, forms or named destinations: as with pypdf's ``add_page``. The output is
PDF 1.7 with a classic cross-reference table; the page order is set last
(:meth:`PdfJoiner.finish`), so the cover, drawn once the others are counted, comes first.

A source that fails half way is taken back: the output is cut back to where that
source began (``out`` must be seekable: a file, or ``io.BytesIO``). A failure to read
the source (a damaged file: whatever pypdf raises) is :class:`UnreadablePdfError`; any
other error, such as a full disk under ``out``, is raised as it is — it is not the
sender's file that is wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import BinaryIO, TypeVar

from pypdf import PdfReader
from pypdf.generic import (
    ArrayObject,
    DictionaryObject,
    IndirectObject,
    NameObject,
    NullObject,
    PdfObject,
    StreamObject,
)

_A = TypeVar("_A")
_T = TypeVar("_T")
_CATALOG, _PAGES = 1, 2  # the output's own two objects; copied ones are numbered from 3
_HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"  # a binary comment: transfer tools keep it binary
Numbering = Callable[[IndirectObject], int | None]


class UnreadablePdfError(Exception):
    """A source PDF failed while its pages were read (damaged); none of it was kept."""


class PdfJoiner:
    """Writes one PDF to ``out`` (at its start) from the pages of :meth:`add`'s sources."""

    def __init__(self, out: BinaryIO, file_id: bytes) -> None:
        """``file_id``: the trailer's /ID (16 bytes: the same letter, the same id)."""
        self._out = out
        self._file_id = file_id.hex().encode()
        self._offsets: dict[int, int] = {}
        self._next = _PAGES + 1
        out.write(_HEADER)

    def add(self, reader: PdfReader) -> list[int]:
        """Copy every page of ``reader`` and what it uses; the pages' numbers, in order.

        Whatever it raises, nothing of this source is left in the output.
        """
        start, first = self._out.tell(), self._next
        try:
            return self._copy(reader)
        except BaseException:
            self._out.seek(start)
            self._out.truncate()
            self._next = first
            self._offsets = {n: at for n, at in self._offsets.items() if n < first}
            raise

    def finish(self, parts: Sequence[Sequence[int]]) -> int:
        """Write the page tree of ``parts`` (page numbers from :meth:`add`, in print order),
        the catalog and the cross-reference table; the number of pages."""
        kids = [number for part in parts for number in part]
        refs = b" ".join(b"%d 0 R" % number for number in kids)
        self._raw(_PAGES, b"<< /Type /Pages /Count %d /Kids [%s] >>" % (len(kids), refs))
        self._raw(_CATALOG, b"<< /Type /Catalog /Pages %d 0 R >>" % _PAGES)
        out, size = self._out, self._next
        xref = out.tell()
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % size)
        for number in range(1, size):  # every number taken was written (or taken back)
            out.write(b"%010d 00000 n \n" % self._offsets[number])
        out.write(
            b"trailer\n<< /Size %d /Root %d 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
            % (size, _CATALOG, self._file_id, self._file_id, xref)
        )
        return len(kids)

    # --- copying ---------------------------------------------------------------------
    def _take(self) -> int:
        number, self._next = self._next, self._next + 1
        return number

    def _copy(self, reader: PdfReader) -> list[int]:
        numbers: dict[tuple[int, int], int] = {}
        waiting: deque[IndirectObject] = deque()
        never = _read(_page_tree, reader)

        def number(ref: IndirectObject) -> int | None:
            key = (ref.idnum, ref.generation)
            if key in never:
                return None
            if key not in numbers:
                numbers[key] = self._take()
                waiting.append(ref)
            return numbers[key]

        pages = _read(list, reader.pages)
        ordered: list[int] = []
        for page in pages:  # numbered first: a link to another page finds it
            own = self._take()
            ref = page.indirect_reference
            if ref is not None:
                numbers.setdefault((ref.idnum, ref.generation), own)
            ordered.append(own)
        for page, own in zip(pages, ordered, strict=True):
            self._object(own, page, number, parent=True)
        while waiting:
            ref = waiting.popleft()
            value = _read(reader.get_object, ref)
            if value is None:  # not in the file: pypdf says so, the reference reads null
                value = NullObject()
            self._object(numbers[(ref.idnum, ref.generation)], value, number)
            reader.resolved_objects.pop((ref.generation, ref.idnum), None)  # written: let it go
        return ordered

    def _raw(self, number: int, body: bytes) -> None:
        self._offsets[number] = self._out.tell()
        self._out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))

    def _object(
        self, number: int, value: PdfObject, numbering: Numbering, *, parent: bool = False
    ) -> None:
        self._offsets[number] = self._out.tell()
        self._out.write(b"%d 0 obj\n" % number)
        if parent and isinstance(value, DictionaryObject):  # a page: its parent is ours
            self._dictionary(value, numbering, {"/Parent": b"%d 0 R" % _PAGES})
        else:
            self._value(value, numbering)
        self._out.write(b"\nendobj\n")

    def _value(self, value: PdfObject, numbering: Numbering) -> None:
        out = self._out
        if isinstance(value, IndirectObject):
            target = numbering(value)
            out.write(b"null" if target is None else b"%d 0 R" % target)
        elif isinstance(value, StreamObject):
            data = value._data
            self._dictionary(value, numbering, {"/Length": b"%d" % len(data)})
            out.write(b"\nstream\n")
            out.write(data)
            out.write(b"\nendstream")
        elif isinstance(value, DictionaryObject):
            self._dictionary(value, numbering)
        elif isinstance(value, ArrayObject):
            out.write(b"[")
            for index, item in enumerate(list.__iter__(value)):
                if index:
                    out.write(b" ")
                self._value(item, numbering)
            out.write(b"]")
        else:  # names, numbers, strings, booleans, null: pypdf writes them
            value.write_to_stream(out)

    def _dictionary(
        self,
        value: DictionaryObject,
        numbering: Numbering,
        replaced: dict[str, bytes] | None = None,
    ) -> None:
        out = self._out
        replaced = replaced or {}
        out.write(b"<<")
        for key, item in dict.items(value):  # as stored: references stay references
            if key in replaced:
                continue
            out.write(b"\n")
            NameObject(key).write_to_stream(out)
            out.write(b" ")
            self._value(item, numbering)
        for key, raw in replaced.items():
            out.write(b"\n")
            NameObject(key).write_to_stream(out)
            out.write(b" " + raw)
        out.write(b"\n>>")


def _read(read: Callable[[_A], _T], argument: _A) -> _T:
    """``read(argument)``, reading the source: what it raises is UnreadablePdfError."""
    try:
        return read(argument)
    except Exception as exc:  # pypdf raises many kinds of error on a damaged file
        raise UnreadablePdfError(f"the PDF cannot be read: {type(exc).__name__}") from exc


def _page_tree(reader: PdfReader) -> set[tuple[int, int]]:
    """The catalog and page-tree nodes of ``reader``: never copied (the pages are, alone)."""
    nodes: set[tuple[int, int]] = set()
    root = reader.trailer.raw_get("/Root")
    if isinstance(root, IndirectObject):
        nodes.add((root.idnum, root.generation))
    waiting = [reader.root_object.raw_get("/Pages")]
    while waiting:
        ref = waiting.pop()
        if not isinstance(ref, IndirectObject) or (ref.idnum, ref.generation) in nodes:
            continue
        node = ref.get_object()
        if not isinstance(node, DictionaryObject) or "/Kids" not in node:
            continue  # a page (or nothing): pages are copied
        nodes.add((ref.idnum, ref.generation))
        kids = node["/Kids"]  # resolved, as pypdf resolves it to find the pages
        if isinstance(kids, ArrayObject):
            waiting.extend(list.__iter__(kids))
    return nodes


__all__ = ["PdfJoiner", "UnreadablePdfError"]
