"""The remote-print PDF (connectors.print.render) and the address check, read back with pypdf."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime

import pytest
from pypdf import PdfReader
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
