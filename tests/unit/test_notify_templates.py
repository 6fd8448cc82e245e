"""Notification texts: Danish by default, English on request, no content, SMS ≤ 160."""

from __future__ import annotations

import pytest

from connectors.notify.channels import NotificationError
from connectors.notify.templates import SMS_MAX_CHARS, Rendered, nemsms, render


def test_danish_email_names_sender_and_says_log_in() -> None:
    """A single Danish e-mail names the sender, has a subject and tells the reader to log in."""
    got = render("EMAIL", "da", count=1, sender_label="Skattestyrelsen", label=None)
    assert got.subject == "Du har fået digital post"
    assert got.text == (
        "Du har fået ny digital post fra Skattestyrelsen. "
        "Log på din digitale postkasse for at læse den."
    )


def test_english_when_asked() -> None:
    """Language "en" gives the English text and subject."""
    got = render("EMAIL", "en", count=1, sender_label="Danish Tax Agency", label=None)
    assert got.subject == "You have new digital post"
    assert got.text == (
        "You have new digital post from Danish Tax Agency. "
        "Log in to your digital mailbox to read it."
    )


@pytest.mark.parametrize("language", ["de", "", "EN-GB"])
def test_other_languages_fall_back_to_danish(language: str) -> None:
    """Any language but "en" gets the Danish text."""
    got = render("SMS", language, count=1, sender_label="Kommunen", label=None)
    assert got.text.startswith("Du har fået ny digital post fra Kommunen.")


def test_language_defaults_to_danish() -> None:
    """Leaving out the language gives Danish."""
    got = render("EMAIL", count=1, sender_label=None, label=None)
    assert got.text == "Du har fået ny digital post. Log på din digitale postkasse for at læse den."


def test_digest_counts_letters() -> None:
    """Several letters make one digest that gives their number, in both languages."""
    da = render("EMAIL", "da", count=3, sender_label=None, label=None)
    en = render("SMS", "en", count=3, sender_label=None, label=None)
    assert da.subject == "Du har fået 3 nye breve"
    assert da.text == (
        "Du har fået 3 nye breve i din digitale postkasse. "
        "Log på din digitale postkasse for at læse dem."
    )
    assert en == Rendered(
        None,
        "You have 3 new letters in your digital mailbox. "
        "Log in to your digital mailbox to read them.",
    )


def test_label_shown_only_when_given() -> None:
    """The label appears when the caller passes it and is absent otherwise."""
    with_label = render("SMS", "da", count=1, sender_label="Kommunen", label="Byggetilladelse")
    without = render("SMS", "da", count=1, sender_label="Kommunen", label=None)
    assert "Emne: Byggetilladelse." in with_label.text
    assert "Emne" not in without.text
    assert (
        "Subject: Parking permit."
        in render("EMAIL", "en", count=1, sender_label="Kommunen", label="Parking permit").text
    )


def test_label_cannot_add_lines() -> None:
    """Whitespace and newlines in a label collapse to single spaces."""
    got = render("SMS", "da", count=1, sender_label="A\nB", label="x\n\nClick  here")
    assert "\n" not in got.text
    assert "fra A B." in got.text
    assert "Emne: x Click here." in got.text


def test_sms_long_label_is_cut_with_ellipsis_to_160() -> None:
    """A long label is shortened with "..." so the SMS stays within 160 characters."""
    got = render("SMS", "da", count=1, sender_label="Skattestyrelsen", label="Årsopgørelse " * 20)
    assert len(got.text) == SMS_MAX_CHARS
    assert "Årsopgørelse Årsopgørelse" in got.text
    assert "...." in got.text
    assert got.text.endswith("Log på din digitale postkasse for at læse den.")


def test_sms_huge_sender_still_fits() -> None:
    """An absurdly long sender name is cut too, and a label with no room is dropped."""
    got = render("SMS", "en", count=1, sender_label="S" * 300, label="L" * 300)
    assert len(got.text) <= SMS_MAX_CHARS
    assert "..." in got.text
    assert got.text.endswith("Log in to your digital mailbox to read it.")


def test_email_label_is_not_cut() -> None:
    """E-mail has no length limit, so the label is shown whole."""
    label = "Årsopgørelse " * 20
    got = render("EMAIL", "da", count=1, sender_label="Skattestyrelsen", label=label)
    assert label.strip() in got.text


def test_unknown_channel_is_refused() -> None:
    """A channel other than EMAIL or SMS is a programming error."""
    with pytest.raises(ValueError, match="channel"):
        render("FAX", "da", count=1, sender_label=None, label=None)


def test_nemsms_text_is_sent_as_is() -> None:
    """A NemSMS text of up to 160 characters becomes the SMS unchanged."""
    assert nemsms("Husk tandlægen i morgen kl. 10.") == Rendered(
        None, "Husk tandlægen i morgen kl. 10."
    )
    assert nemsms("x" * 160).text == "x" * 160


def test_nemsms_too_long_is_permanent() -> None:
    """A NemSMS text over 160 characters is a permanent NEMSMS_TOO_LONG error."""
    with pytest.raises(NotificationError) as caught:
        nemsms("x" * 161)
    assert caught.value.reason_code == "NEMSMS_TOO_LONG"
    assert caught.value.kind == "permanent"
    assert not caught.value.retriable
