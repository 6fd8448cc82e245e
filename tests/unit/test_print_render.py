"""The remote-print PDF (connectors.print.render) and the address check, read back with pypdf."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.generic import DictionaryObject, StreamObject
from reportlab.pdfgen.canvas import Canvas

from connectors.print.connector import AddressError, check_address
from connectors.print.render import (
    Addressee,
    Letter,
    PrintDocument,
    PrintFile,
    danish_date,
    html_to_text,
    render,
    render_to,
)
from schemas.models import ContactRecord, ContactStatus, IdType, PostalAddress

ADDRESSEE = Addressee(name="Inge Madsen", street="Algade 7", postcode="4000", city="Roskilde")
LONG_TEXT = "\n\n".join(
    f"Afsnit {n}: Kommunen har behandlet din ansøgning om boligstøtte og fundet, at du "
    "opfylder betingelserne. Støtten udbetales månedligt fra næste måned. " * 3
    for n in range(1, 41)
)


def _pdf(*texts: str) -> bytes:
    """A PDF with one page per text, made with reportlab."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer)
    for text in texts:
        canvas.drawString(72, 720, text)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _letter(*documents: PrintDocument, addressee: Addressee = ADDRESSEE) -> Letter:
    return Letter(
        reference="8f2c1b9e-1111-4222-8333-444455556666",
        subject="Afgørelse om boligstøtte",
        sender_label="Aarhus Kommune",
        sender_cvr="55133018",
        date=date(2026, 3, 12),
        addressee=addressee,
        documents=documents,
        return_address="Aarhus Kommune\nRådhuspladsen 2\n8000 Aarhus C",
    )


def _texts(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


SCAN_WIDTH = 600  # pixels per row of a scanned page's image, RGB at 8 bits


def write_scan(path: Path, pages: int, page_bytes: int) -> tuple[str, list[str]]:
    """Write a PDF of ``pages`` A4 pages, each one RGB image of about ``page_bytes`` random
    bytes (as incompressible as a scan's JPEG), a page at a time; the SHA-256 of the file
    and of each page's image."""
    rows = page_bytes // (SCAN_WIDTH * 3)
    digest = hashlib.sha256()
    images: list[str] = []
    offsets: dict[int, int] = {}
    with path.open("wb") as out:

        def emit(data: bytes) -> None:
            out.write(data)
            digest.update(data)

        def obj(number: int, head: bytes, stream: bytes | None = None) -> None:
            offsets[number] = out.tell()
            emit(b"%d 0 obj\n%s" % (number, head))
            if stream is not None:
                emit(b"\nstream\n" + stream + b"\nendstream")
            emit(b"\nendobj\n")

        emit(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        kids = b" ".join(b"%d 0 R" % (3 + 3 * n) for n in range(pages))
        obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        obj(2, b"<< /Type /Pages /Count %d /Kids [%s] >>" % (pages, kids))
        draw = b"q 500 0 0 460 47 191 cm /Scan Do Q"
        for n in range(pages):
            page, content, image = 3 + 3 * n, 4 + 3 * n, 5 + 3 * n
            obj(
                page,
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R"
                b" /Resources << /XObject << /Scan %d 0 R >> >> >>" % (content, image),
            )
            obj(content, b"<< /Length %d >>" % len(draw), draw)
            pixels = os.urandom(rows * SCAN_WIDTH * 3)
            images.append(hashlib.sha256(pixels).hexdigest())
            obj(
                image,
                b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB"
                b" /BitsPerComponent 8 /Length %d >>" % (SCAN_WIDTH, rows, len(pixels)),
                pixels,
            )
        xref, size = out.tell(), 3 + 3 * pages
        emit(b"xref\n0 %d\n0000000000 65535 f \n" % size)
        emit(b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, size)))
        emit(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref))
    return digest.hexdigest(), images


def scan_images(pages: Sequence[PageObject]) -> list[str]:
    """The SHA-256 of each page's scanned image (as write_scan made it), in order."""
    digests = []
    for page in pages:
        resources = page["/Resources"]
        assert isinstance(resources, DictionaryObject)
        xobjects = resources["/XObject"]
        assert isinstance(xobjects, DictionaryObject)
        image = xobjects["/Scan"]
        assert isinstance(image, StreamObject)
        digests.append(hashlib.sha256(image.get_data()).hexdigest())
    return digests


def test_a_letter_has_the_cover_then_every_text_page_then_the_pdf_pages_unchanged() -> None:
    """Cover + the text's pages + both pages of the PDF, with address, sender and label on p. 1."""
    attachment = _pdf("Bilag side 1: plan for Ågade", "Bilag side 2: tegning")
    text_only = render(_letter(PrintDocument("Afgørelse", [PrintFile("a.txt", "text/plain", b"")])))
    rendered = render(
        _letter(
            PrintDocument("Afgørelse", [PrintFile("a.txt", "text/plain", LONG_TEXT.encode())]),
            PrintDocument("Bilag", [PrintFile("plan.pdf", "application/pdf", attachment)]),
        )
    )
    pages = _texts(rendered.pdf)
    text_pages = len(pages) - 1 - 2
    assert text_pages >= 2, "the long text wraps onto more than one page"
    assert rendered.pages == len(pages) == 1 + text_pages + 2
    assert text_only.pages == 2, "an empty text file still gets its page"
    cover = pages[0]
    for expected in (
        "Inge Madsen",
        "Algade 7",
        "4000 Roskilde",
        "Aarhus Kommune",
        "CVR 55133018",
        "Afgørelse om boligstøtte",
        "12. marts 2026",
        "Aarhus Kommune, Rådhuspladsen 2, 8000 Aarhus C",
        "plan.pdf, 2 sider",
    ):
        assert expected in cover, expected
    assert "DANMARK" not in cover, "no country line on a Danish address"
    original = _texts(attachment)
    assert pages[-2:] == original, "imported pages keep their text"
    body = " ".join(pages[1:-2])
    assert "Afsnit 1:" in body and "Afsnit 40:" in body, "no paragraph is lost"


def test_danish_letters_survive_and_others_fall_back_to_their_base_letter() -> None:
    """æøåÆØÅ and € print as they are; ő becomes o and a character Helvetica lacks becomes ?."""
    text = "Blåbærgrød på Ærø, Øster Å: 100 € — Győr ✓".encode()
    rendered = render(
        _letter(
            PrintDocument("Særlige tegn", [PrintFile("t.txt", "text/plain; charset=utf-8", text)]),
            addressee=Addressee(name="Søren Ærbø", street="Åvej 1", postcode="8000", city="Århus"),
        )
    )
    cover, page = _texts(rendered.pdf)
    assert "Søren Ærbø" in cover and "Åvej 1" in cover and "8000 Århus" in cover
    assert "Blåbærgrød på Ærø, Øster Å: 100 € — Gyor ?" in page


def test_an_unsupported_file_is_listed_on_the_cover_not_dropped() -> None:
    """A video and a damaged PDF add no pages but are each named on the cover with their type."""
    rendered = render(
        _letter(
            PrintDocument(
                "Bilag",
                [
                    PrintFile("film.mp4", "video/mp4", b"\x00\x00\x00\x18ftypmp42"),
                    PrintFile("broken.pdf", "application/pdf", b"%PDF-1.7 not really"),
                ],
            )
        )
    )
    assert rendered.pages == 1
    cover = _texts(rendered.pdf)[0]
    assert "not printable: film.mp4 (video/mp4)" in cover
    assert "not printable: broken.pdf (application/pdf)" in cover


def test_html_is_printed_as_text_and_a_foreign_address_gets_its_country_line() -> None:
    """HTML loses its tags, scripts and styles; a Swedish address ends with SVERIGE."""
    html = (
        "<html><head><title>t</title><style>p {color: red}</style></head><body>"
        "<h1>Indkaldelse</h1><p>Mød op &amp; medbring <b>sygesikringskort</b>.</p>"
        "<script>alert(1)</script><ul><li>kl. 10</li><li>lokale 2</li></ul></body></html>"
    )
    assert html_to_text(html) == (
        "Indkaldelse\n\nMød op & medbring sygesikringskort.\n\n- kl. 10\n\n- lokale 2"
    )
    swede = Addressee(
        name="Anna Berg", street="Storgatan 1", postcode="211 22", city="Malmö", country="SE"
    )
    rendered = render(
        _letter(
            PrintDocument(None, [PrintFile("i.html", "text/html", html.encode())]), addressee=swede
        )
    )
    cover, page = _texts(rendered.pdf)
    assert "211 22 Malmö\nSVERIGE" in cover
    assert "Indkaldelse" in page and "alert" not in page and "color" not in page
    assert danish_date(date(2026, 1, 5)) == "5. januar 2026"


def _record(**changes: object) -> ContactRecord:
    fields: dict[str, object] = {
        "recipientRef": "psn-test",
        "idType": IdType.CPR,
        "status": ContactStatus.EXEMPT,
        "name": "Inge Madsen",
        "address": PostalAddress(street="Algade 7", postcode="4000", city="Roskilde"),
        "updatedAt": datetime.now(UTC),
    }
    fields.update(changes)
    return ContactRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (None, "ADDRESS_UNKNOWN"),
        (_record(name=None), "ADDRESS_NAME_MISSING"),
        (_record(name="  "), "ADDRESS_NAME_MISSING"),
        (_record(address=None), "ADDRESS_INCOMPLETE"),
        (
            _record(address=PostalAddress(street="Algade 7", postcode="", city="Roskilde")),
            "ADDRESS_INCOMPLETE",
        ),
        (
            _record(address=PostalAddress(street="Algade 7", postcode="400", city="Roskilde")),
            "ADDRESS_POSTCODE_INVALID",
        ),
        (
            _record(
                address=PostalAddress(
                    street="Storgatan 1", postcode="211 22", city="Malmö", country="SE"
                )
            ),
            "FOREIGN_ADDRESS_UNSUPPORTED",
        ),
    ],
)
def test_an_unprintable_address_is_refused_with_its_code_and_a_fix(
    record: ContactRecord | None, code: str
) -> None:
    """Each unprintable address gets its own reason code and a hint that says what to fix."""
    with pytest.raises(AddressError) as caught:
        check_address(record, frozenset({"DK"}))
    assert caught.value.reason_code == code
    assert "contact" in caught.value.hint or "countries" in caught.value.hint


def test_a_good_address_is_printable_and_a_configured_country_too() -> None:
    """A complete Danish address passes as it is; SE passes once the provider delivers there."""
    record = _record(
        address=PostalAddress(co="Jens Hansen", street="Algade 7", postcode="4000", city="Roskilde")
    )
    assert check_address(record, frozenset({"DK"})).lines() == [
        "Inge Madsen",
        "c/o Jens Hansen",
        "Algade 7",
        "4000 Roskilde",
    ]
    swede = _record(
        address=PostalAddress(street="Storgatan 1", postcode="211 22", city="Malmö", country="se")
    )
    assert check_address(swede, frozenset({"DK", "SE"})).lines()[-1] == "SVERIGE"


def test_a_big_pdf_given_by_path_is_copied_into_the_letter_in_flat_memory(tmp_path: Path) -> None:
    """A 30 MB scan given by its path is copied page by page into a letter written to a
    file, allocating a few MB at most (a copy of it would be 30 MB), every image intact."""
    scan = tmp_path / "scan.pdf"
    _, images = write_scan(scan, 30, 1_000_000)
    letter = _letter(PrintDocument("Tegninger", [PrintFile("scan.pdf", "application/pdf", scan)]))
    tracemalloc.start()
    try:
        with (tmp_path / "letter.pdf").open("wb") as out:
            pages = render_to(letter, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"rendering a 30 MB scan allocated {peak / 1e6:.1f} MB at its peak")
    assert peak < 8_000_000, f"rendering allocated {peak / 1e6:.1f} MB at its peak"
    reader = PdfReader(tmp_path / "letter.pdf", strict=True)
    assert pages == len(reader.pages) == 31
    assert "scan.pdf, 30 sider" in reader.pages[0].extract_text()
    assert scan_images(reader.pages[1:]) == images


def _damaged_after_its_pages(pdf: bytes) -> bytes:
    """``pdf`` with its font object garbled: it opens, its pages list, copying them fails."""
    font = re.search(rb"\d+ 0 obj\n<<\n/BaseFont", pdf)
    assert font is not None
    start = font.start() + len(font.group()) - len(b"<<\n/BaseFont")
    return pdf[:start] + b"(((((((((((" + pdf[start + 11 :]


def test_a_pdf_that_breaks_half_way_leaves_none_of_it_in_the_letter() -> None:
    """A PDF whose font is garbled (found only while its pages are copied) is listed as
    damaged and none of it is in the letter, which stays a valid PDF with the next file's
    pages; a PDF encrypted without a user password prints, one with a password is listed."""
    good = _pdf("Bilag side 1", "Bilag side 2")
    open_one = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf("Krypteret side"))))
    open_one.encrypt("", "ejer", algorithm="AES-256")  # no user password: anyone opens it
    locked = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf("Hemmelig side"))))
    locked.encrypt("hemmelig", "ejer", algorithm="AES-256")
    encrypted: list[bytes] = []
    for writer in (open_one, locked):
        buffer = io.BytesIO()
        writer.write(buffer)
        encrypted.append(buffer.getvalue())
    damaged = _damaged_after_its_pages(_pdf("Beskadiget side 1", "Beskadiget side 2"))
    rendered = render(
        _letter(
            PrintDocument(
                "Bilag",
                [
                    PrintFile("damaged.pdf", "application/pdf", damaged),
                    PrintFile("plan.pdf", "application/pdf", good),
                    PrintFile("open.pdf", "application/pdf", encrypted[0]),
                    PrintFile("locked.pdf", "application/pdf", encrypted[1]),
                ],
            )
        )
    )
    reader = PdfReader(io.BytesIO(rendered.pdf), strict=True)
    pages = [page.extract_text().strip() for page in reader.pages]
    assert rendered.pages == len(pages) == 1 + 2 + 1
    assert pages[1:] == ["Bilag side 1", "Bilag side 2", "Krypteret side"]
    assert not reader.is_encrypted, "the letter itself is not encrypted"
    cover = pages[0]
    assert "not printable: damaged.pdf (application/pdf) (filen er beskadiget)" in cover
    assert "not printable: locked.pdf (application/pdf) (beskyttet med adgangskode)" in cover
    assert "Beskadiget" not in "".join(pages) and "Hemmelig" not in "".join(pages)


class _FailsOnce(io.BytesIO):
    """An output whose write fails once past ``room`` bytes (a disk that filled up)."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room: int | None = room

    def write(self, data: bytes, /) -> int:  # type: ignore[override]
        if self.room is not None and self.tell() + len(data) > self.room:
            self.room = None
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_a_write_error_on_the_letter_is_raised_not_blamed_on_the_document() -> None:
    """When the letter's file cannot be written while a PDF's pages are copied in, rendering
    fails with that error: the sender's PDF is not listed as damaged and left out."""
    attachment = _pdf(*(f"Bilag side {n}" for n in range(1, 30)))
    letter = _letter(PrintDocument("Bilag", [PrintFile("plan.pdf", "application/pdf", attachment)]))
    with pytest.raises(OSError, match="No space left"):
        render_to(letter, _FailsOnce(len(attachment) // 2))
