"""Notification texts: who sent new post, maybe its label, and "log in to read it".

Pure functions over values. A text never holds anything but the sender's name, the
label the caller passes (only when the sender marked it non-sensitive), a count for a
digest, and the instruction to log in to the mailbox. Danish is the default; English
is used when the recipient's language is ``"en"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.notify.channels import NotificationError

SMS_MAX_CHARS = 160
_ELLIPSIS = "..."  # GSM-7 has no "…"; with it an SMS splits after 70 characters
_MIN_SHOWN = 3  # characters of a label worth showing before the ellipsis


@dataclass(frozen=True)
class Rendered:
    """A notification ready to send; ``subject`` is None for SMS."""

    subject: str | None
    text: str


@dataclass(frozen=True)
class _Phrases:
    subject_one: str
    subject_many: str  # takes {count}
    new_from: str  # takes {sender}
    new_unnamed: str
    many: str  # takes {count}
    many_from: str  # takes {count} and {sender}
    label: str  # takes {label}
    read_one: str
    read_many: str


_DA = _Phrases(
    subject_one="Du har fået digital post",
    subject_many="Du har fået {count} nye breve",
    new_from="Du har fået ny digital post fra {sender}.",
    new_unnamed="Du har fået ny digital post.",
    many="Du har fået {count} nye breve i din digitale postkasse.",
    many_from="Du har fået {count} nye breve fra {sender}.",
    label="Emne: {label}.",
    read_one="Log på din digitale postkasse for at læse den.",
    read_many="Log på din digitale postkasse for at læse dem.",
)

_EN = _Phrases(
    subject_one="You have new digital post",
    subject_many="You have {count} new letters",
    new_from="You have new digital post from {sender}.",
    new_unnamed="You have new digital post.",
    many="You have {count} new letters in your digital mailbox.",
    many_from="You have {count} new letters from {sender}.",
    label="Subject: {label}.",
    read_one="Log in to your digital mailbox to read it.",
    read_many="Log in to your digital mailbox to read them.",
)


def render(
    channel: str,
    language: str = "da",
    *,
    count: int,
    sender_label: str | None,
    label: str | None,
) -> Rendered:
    """The notification for ``count`` new letters on ``channel`` ("EMAIL" or "SMS").

    ``label`` is shown only when given; SMS texts are cut to 160 characters by
    shortening the label (then the sender's name) with "...".
    """
    if channel not in ("EMAIL", "SMS"):
        raise ValueError(f"unknown notification channel {channel!r}; use 'EMAIL' or 'SMS'")
    if count < 1:
        raise ValueError(f"a notification is for at least one letter, not {count}")
    phrases = _EN if language == "en" else _DA
    sender = _one_line(sender_label)
    shown_label = _one_line(label)
    text = _text(phrases, count, sender, shown_label)
    if channel == "SMS":
        if len(text) > SMS_MAX_CHARS and shown_label is not None:
            shown_label = _fit(shown_label, len(shown_label) - (len(text) - SMS_MAX_CHARS))
            text = _text(phrases, count, sender, shown_label)
        if len(text) > SMS_MAX_CHARS and sender is not None:
            # Only a sender name of well over 100 characters gets here.
            sender = _fit(sender, len(sender) - (len(text) - SMS_MAX_CHARS))
            text = _text(phrases, count, sender, shown_label)
        return Rendered(subject=None, text=text)
    subject = phrases.subject_one if count == 1 else phrases.subject_many.format(count=count)
    return Rendered(subject=subject, text=text)


def nemsms(text: str) -> Rendered:
    """A sender's own NemSMS text, sent as it is; longer than 160 characters is refused."""
    if len(text) > SMS_MAX_CHARS:
        raise NotificationError(
            f"the NemSMS text has {len(text)} characters, more than {SMS_MAX_CHARS}",
            kind="permanent",
            reason_code="NEMSMS_TOO_LONG",
            hint=f"Shorten the nemSmsText attribute to at most {SMS_MAX_CHARS} characters.",
        )
    return Rendered(subject=None, text=text)


def _text(phrases: _Phrases, count: int, sender: str | None, label: str | None) -> str:
    if count == 1:
        first = phrases.new_from.format(sender=sender) if sender else phrases.new_unnamed
    else:
        first = (
            phrases.many_from.format(count=count, sender=sender)
            if sender
            else phrases.many.format(count=count)
        )
    parts = [first]
    if label:
        parts.append(phrases.label.format(label=label))
    parts.append(phrases.read_one if count == 1 else phrases.read_many)
    return " ".join(parts)


def _one_line(value: str | None) -> str | None:
    """Collapse whitespace so a sender's string cannot add lines to the notification."""
    if value is None:
        return None
    collapsed = " ".join(value.split()).rstrip(".")
    return collapsed or None


def _fit(value: str, room: int) -> str | None:
    """``value`` in at most ``room`` characters, ending in "..." when shortened.

    None when not even a few characters fit: a lone "..." tells the reader nothing.
    """
    if len(value) <= room:
        return value
    if room < _MIN_SHOWN + len(_ELLIPSIS):
        return None
    return value[: room - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
