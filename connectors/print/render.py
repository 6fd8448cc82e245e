"""The print-ready PDF of a remote-print letter: values and documents in, one PDF out.

Page 1 is a cover letter for a left-window C5/C4 envelope. Its address field follows
DIN 5008 form B, the layout that the Danish and most EU window envelopes (DIN 680 /
EN ISO 269: a 90 x 45 mm window 20 mm from the left, about 45-50 mm from the top)
are cut for. Measured from the sheet's top-left corner, in mm:

    address field   x 20, y 45, 85 wide, 45 high
      return line   one 7 pt line ending 2 mm above the recipient zone (shown in the
                    window: where the post office returns an undeliverable letter)
      recipients    from y 62.7 down, at most 6 lines of 10 pt in 27.3 mm; text from
                    x 25 (the field's 5 mm inset, so folding tolerance cannot clip it)
    info block      x 125, y 50: sender and CVR, date (Danish format), reference
    subject         y 103.4, below the field and the upper fold: the message's label

Then each document's files in order: a PDF's pages imported unchanged, text and HTML
(tags stripped) set as wrapped 10 pt text, and any other file listed on the cover as
``not printable: <filename> (<mime>)`` — nothing is dropped silently.

The letter is written to a file (:func:`render_to`; :func:`render` gives it as bytes,
for small letters and tests), in flat memory: a big document is given by the path of
its plaintext (``PrintFile.data``), pypdf reads it lazily from there, and its pages
are copied to the output an object at a time (connectors.print.pdfjoin), so a 99.5 MB
scan is never held whole. The cover and text pages are drawn by reportlab in memory
(they are small); a text document is read whole.

Helvetica, a PDF standard font, covers Windows-1252: æøåÆØÅ, € and typographic
quotes print as they are; any other character is printed as its base letter (ő as o)
or, failing that, as "?".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pypdf import PasswordType, PdfReader
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from connectors.print.pdfjoin import PdfJoiner, UnreadablePdfError

PAGE_WIDTH, PAGE_HEIGHT = A4
FONT, BOLD = "Helvetica", "Helvetica-Bold"
ADDRESS_TEXT_LEFT = 25 * mm  # the field is at 20 mm; its text has a 5 mm inset
ADDRESS_TEXT_WIDTH = 80 * mm
RECIPIENT_TOP = 62.7 * mm
RECIPIENT_LEADING = 4.5 * mm  # 6 lines fit the 27.3 mm zone
INFO_LEFT = 125 * mm
INFO_TOP = 50 * mm
SUBJECT_TOP = 103.4 * mm
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 25 * mm, 20 * mm, 20 * mm, 20 * mm
BODY_WIDTH = PAGE_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
INFO_WIDTH = PAGE_WIDTH - INFO_LEFT - MARGIN_RIGHT
BODY_SIZE, BODY_LEADING = 10, 13
PDF_TYPES = frozenset({"application/pdf"})
TEXT_TYPES = frozenset({"text/plain"})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
MONTHS = (
    "januar",
    "februar",
    "marts",
    "april",
    "maj",
    "juni",
    "juli",
    "august",
    "september",
    "oktober",
    "november",
    "december",
)
#: The last line of a foreign address: the country's name in capitals, in Danish.
COUNTRY_NAMES = {
    "DE": "TYSKLAND",
    "FI": "FINLAND",
    "FO": "FÆRØERNE",
    "GB": "STORBRITANNIEN",
    "GL": "GRØNLAND",
    "IS": "ISLAND",
    "NL": "NEDERLANDENE",
    "NO": "NORGE",
    "PL": "POLEN",
    "SE": "SVERIGE",
}


@dataclass(frozen=True, slots=True)
class Addressee:
    """A checked postal address (connectors.print.connector validates it)."""

    name: str
    street: str
    postcode: str
    city: str
    country: str = "DK"
    co: str | None = None

    def lines(self) -> list[str]:
        """The address window's lines, top to bottom (country only when not DK)."""
        lines = [self.name]
        if self.co:
            lines.append(self.co if self.co.lower().startswith("c/o") else f"c/o {self.co}")
        lines += [self.street, f"{self.postcode} {self.city}"]
        if self.country != "DK":
            lines.append(COUNTRY_NAMES.get(self.country, self.country))
        return lines


@dataclass(frozen=True, slots=True)
class PrintFile:
    filename: str
    mime_type: str  # MeMo encodingFormat, parameters allowed ("text/plain; charset=...")
    data: bytes | Path  # the bytes, or the file that holds them (a big document: read lazily)


@dataclass(frozen=True, slots=True)
class PrintDocument:
    label: str | None
    files: Sequence[PrintFile]


@dataclass(frozen=True, slots=True)
class Letter:
    reference: str  # the message UUID, printed so the recipient can refer to it
    subject: str
    sender_label: str
    sender_cvr: str | None
    date: date
    addressee: Addressee
    documents: Sequence[PrintDocument] = ()
    return_address: str | None = None


class Rendered(NamedTuple):
    pdf: bytes
    pages: int


def render(letter: Letter) -> Rendered:
    """The letter as PDF bytes (small letters and tests; :func:`render_to` writes a file)."""
    buffer = io.BytesIO()
    pages = render_to(letter, buffer)
    return Rendered(buffer.getvalue(), pages)


def render_to(letter: Letter, out: BinaryIO) -> int:
    """Write the letter as one PDF to ``out`` (empty, seekable): the cover, then every
    printable page, in order. The number of pages."""
    joiner = PdfJoiner(out, hashlib.sha256(letter.reference.encode()).digest()[:16])
    contents: list[str] = []
    parts: list[list[int]] = []
    for document in letter.documents:
        for file in document.files:
            added = _add_file(joiner, document, file)
            name = f"{file.filename} ({mime_type_of(file.mime_type)})"
            if isinstance(added, str):
                contents.append(f"Kan ikke udskrives / not printable: {name}{added}")
            else:
                parts.append(added)
                title = document.label or file.filename
                pages = "1 side" if len(added) == 1 else f"{len(added)} sider"
                contents.append(f"{title}: {file.filename}, {pages}")
    cover = joiner.add(PdfReader(io.BytesIO(_cover(letter, contents))))
    return joiner.finish([cover, *parts])


def danish_date(day: date) -> str:
    """``12. marts 2026``."""
    return f"{day.day}. {MONTHS[day.month - 1]} {day.year}"


def mime_type_of(encoding_format: str) -> str:
    return encoding_format.partition(";")[0].strip().lower()


def _add_file(joiner: PdfJoiner, document: PrintDocument, file: PrintFile) -> list[int] | str:
    """Add the file's pages; their numbers, or why it cannot be printed."""
    kind = mime_type_of(file.mime_type)
    if kind in PDF_TYPES:
        return _add_pdf(joiner, file.data)
    if kind in TEXT_TYPES | HTML_TYPES:
        data = file.data.read_bytes() if isinstance(file.data, Path) else file.data
        text = _decode(data, file.mime_type)
        if kind in HTML_TYPES:
            text = html_to_text(text)
        title = document.label or file.filename
        heading = title if title == file.filename else f"{title} ({file.filename})"
        return _add_pdf(joiner, _text_pages(heading, text))
    return ""


def _add_pdf(joiner: PdfJoiner, data: bytes | Path) -> list[int] | str:
    damaged = " (filen er beskadiget)"
    with _opened(data) as stream:
        try:
            reader = PdfReader(stream)  # lazily: objects are read when they are copied
            if reader.is_encrypted and reader.decrypt("") is PasswordType.NOT_DECRYPTED:
                return " (beskyttet med adgangskode)"
        except Exception:  # pypdf raises many kinds of error on a damaged file; all mean one thing
            return damaged
        try:
            added = joiner.add(reader)  # a full disk is raised: it is not the file's fault
        except UnreadablePdfError:  # nothing of it stays in the letter
            return damaged
    return added if added else " (filen har ingen sider)"


@contextlib.contextmanager
def _opened(data: bytes | Path) -> Iterator[BinaryIO]:
    """A stream of ``data``. A path is opened, not read: pypdf given a path reads it whole."""
    if isinstance(data, Path):
        with data.open("rb") as handle:
            yield handle
    else:
        yield io.BytesIO(data)


def _cover(letter: Letter, contents: Sequence[str]) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, invariant=True)  # same input, same bytes
    if letter.return_address:
        parts = [p.strip() for p in letter.return_address.splitlines() if p.strip()]
        _line(canvas, ", ".join(parts), top=RECIPIENT_TOP - 2 * mm, size=7)
    for number, line in enumerate(letter.addressee.lines()):
        _line(canvas, line, top=RECIPIENT_TOP + 3.5 * mm + number * RECIPIENT_LEADING)
    info = [(BOLD, 10, letter.sender_label)]
    if letter.sender_cvr:
        info.append((FONT, 9, f"CVR {letter.sender_cvr}"))
    info += [
        (FONT, 9, ""),
        (FONT, 9, f"Dato: {danish_date(letter.date)}"),
        (FONT, 9, "Reference:"),
        (FONT, 7, letter.reference),
    ]
    for number, (font, size, text) in enumerate(info):
        top = INFO_TOP + 3.5 * mm + number * 4.5 * mm
        _line(canvas, text, top=top, left=INFO_LEFT, width=INFO_WIDTH, font=font, size=size)
    top = SUBJECT_TOP
    for line in wrap(letter.subject, BOLD, 12, BODY_WIDTH):
        top += 6 * mm
        _line(canvas, line, top=top, left=MARGIN_LEFT, width=BODY_WIDTH, font=BOLD, size=12)
    sender = letter.sender_label + (f" (CVR {letter.sender_cvr})" if letter.sender_cvr else "")
    paragraphs = [
        f"Afsender: {sender}",
        "Dette brev er sendt til dig som fysisk post, fordi du ikke modtager Digital Post.",
        "Brevet indeholder:" if contents else "Brevet har ingen bilag.",
    ]
    top += 4 * mm
    for paragraph in paragraphs:
        for line in wrap(paragraph, FONT, BODY_SIZE, BODY_WIDTH):
            top += BODY_LEADING
            _line(canvas, line, top=top, left=MARGIN_LEFT, width=BODY_WIDTH)
        top += BODY_LEADING / 2
    indent = MARGIN_LEFT + 5 * mm
    for entry in contents:
        lines = wrap(entry, FONT, BODY_SIZE, BODY_WIDTH - 5 * mm)
        if top + BODY_LEADING * (len(lines) + 1) > PAGE_HEIGHT - MARGIN_BOTTOM:
            _line(canvas, "... (listen er afkortet)", top=top + BODY_LEADING, left=MARGIN_LEFT)
            break
        _line(canvas, "\u2022", top=top + BODY_LEADING, left=MARGIN_LEFT)  # a bullet
        for line in lines:
            top += BODY_LEADING
            _line(canvas, line, top=top, left=indent, width=BODY_WIDTH - 5 * mm)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _text_pages(heading: str, text: str) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, invariant=True)
    top = MARGIN_TOP
    for line in wrap(heading, BOLD, 12, BODY_WIDTH):
        top += 6 * mm
        _line(canvas, line, top=top, left=MARGIN_LEFT, width=BODY_WIDTH, font=BOLD, size=12)
    top += 4 * mm
    for line in wrap(text, FONT, BODY_SIZE, BODY_WIDTH):
        if top + BODY_LEADING > PAGE_HEIGHT - MARGIN_BOTTOM:
            canvas.showPage()
            top = MARGIN_TOP
        top += BODY_LEADING
        _line(canvas, line, top=top, left=MARGIN_LEFT, width=BODY_WIDTH)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _line(
    canvas: Canvas,
    text: str,
    *,
    top: float,
    left: float = ADDRESS_TEXT_LEFT,
    width: float = ADDRESS_TEXT_WIDTH,
    font: str = FONT,
    size: float = BODY_SIZE,
) -> None:
    """One line with its baseline ``top`` below the sheet's top edge, shrunk to ``width``.

    A line too long even at 6 pt (the smallest size DIN 5008 allows) is cut with "...".
    """
    text = printable(text)
    natural = stringWidth(text, font, size)
    if natural > width:
        size = max(size * width / natural, 6.0)
        while len(text) > 3 and stringWidth(text, font, size) > width:
            text = text[:-4] + "..."
    canvas.setFont(font, size)
    canvas.drawString(left, PAGE_HEIGHT - top, text)


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Lines of ``text`` that fit ``width``; a word longer than a line is broken."""
    lines: list[str] = []
    for paragraph in printable(text.expandtabs(4)).split("\n"):
        if not paragraph.strip():
            lines.append("")
            continue
        for line in simpleSplit(paragraph, font, size, width):
            rest = line
            while stringWidth(rest, font, size) > width:
                cut = len(rest) - 1
                while cut > 1 and stringWidth(rest[:cut], font, size) > width:
                    cut -= 1
                lines.append(rest[:cut])
                rest = rest[cut:]
            lines.append(rest)
    return lines


def printable(text: str) -> str:
    """``text`` in the characters Helvetica has (Windows-1252), line breaks as ``\\n``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    out: list[str] = []
    for char in text:
        if char == "\n" or (_in_font(char) and unicodedata.category(char) != "Cc"):
            out.append(char)
            continue
        if unicodedata.category(char) == "Cc":
            continue
        base = "".join(
            c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
        )
        out.append(base if base and all(_in_font(c) for c in base) else "?")
    return "".join(out)


def _in_font(char: str) -> bool:
    try:
        char.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _decode(data: bytes, mime_type: str) -> str:
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", mime_type, re.IGNORECASE)
    charset = match.group(1).lower() if match else "utf-8"
    if charset in {"utf-8", "utf8"}:
        charset = "utf-8-sig"  # a byte-order mark is not text
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return data.decode("cp1252", errors="replace")


class _HtmlText(HTMLParser):
    BLOCKS = frozenset(
        {"address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1"}
        | {"h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section"}
        | {"table", "tr", "ul"}
    )
    HIDDEN = frozenset({"head", "script", "style", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n- " if tag == "li" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(self._hidden - 1, 0)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """The readable text of an HTML document: tags stripped, blocks on their own lines."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


__all__ = [
    "Addressee",
    "Letter",
    "PrintDocument",
    "PrintFile",
    "Rendered",
    "danish_date",
    "html_to_text",
    "mime_type_of",
    "render",
    "render_to",
]
