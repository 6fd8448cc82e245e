"""Hypothesis strategies for the DP2 models, derived from the dataclasses themselves.

Every field is generated, optional ones sometimes None, with small sizes so a hundred
examples of a whole Envelope stay fast. Values stay inside what Avro can carry:
aware UTC datetimes at microsecond precision, 32-bit ints (valid for int and long).

`memo_envelopes` narrows that to what MeMo can carry, following the project's own
description of the XSDs (schemas.memo_structure): per version, every element the XSD
requires is set, counts stay within maxOccurs, and values within their simple types.
"""

import dataclasses
import types
import typing
from datetime import UTC, date, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar

from hypothesis import strategies as st

from schemas import memo_structure as xsd
from schemas.memo_rules import ABSENT, Slot, slots
from schemas.models import (
    RECORD_TYPES,
    ContactRecord,
    Envelope,
    InlineContent,
    LifecycleEvent,
    NotificationRequest,
    NotificationResult,
    Record,
)

T = TypeVar("T")

_SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=6),
    bytes: st.binary(max_size=6),
    int: st.integers(min_value=-(2**31), max_value=2**31 - 1),
    bool: st.booleans(),
    datetime: st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC),
    ),
    date: st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)),
}


@cache
def _for(hint: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType or origin is typing.Union:
        options = [_for(a) for a in args if a is not type(None)]
        none = [st.none()] if type(None) in args else []
        return st.one_of(*none, *options)
    if origin is list:
        return st.lists(_for(args[0]), max_size=2)
    if origin is dict:
        return st.dictionaries(_for(args[0]), _for(args[1]), max_size=2)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return st.sampled_from(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return model(hint)
    return _SCALARS[hint]


def model(cls: type[T]) -> st.SearchStrategy[T]:
    """Instances of the model dataclass `cls`, every field (also defaulted ones) generated."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return st.builds(cls, **{f.name: _for(hints[f.name]) for f in fields})


def envelopes() -> st.SearchStrategy[Envelope]:
    """Whole envelopes, header and body."""
    return model(Envelope)


def lifecycle_events() -> st.SearchStrategy[LifecycleEvent]:
    """Lifecycle events."""
    return model(LifecycleEvent)


def notification_requests() -> st.SearchStrategy[NotificationRequest]:
    """Notification requests."""
    return model(NotificationRequest)


def notification_results() -> st.SearchStrategy[NotificationResult]:
    """Notification results."""
    return model(NotificationResult)


def contact_records() -> st.SearchStrategy[ContactRecord]:
    """Contact register records."""
    return model(ContactRecord)


def records() -> st.SearchStrategy[Record]:
    """Any top-level record."""
    return st.one_of(*(model(cls) for cls in RECORD_TYPES))


def memo_envelopes() -> st.SearchStrategy[Envelope]:
    """Plaintext envelopes of MeMo 1.1 or 1.2 that the XSDs accept, so to_xml must write them."""
    return st.one_of(*(_memo_record(Envelope, xsd.MESSAGE, v) for v in xsd.VERSIONS))


_XML_CHAR = st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff")
_MEMO_TEXT = st.text(st.one_of(_XML_CHAR, st.sampled_from("\t\n\r")), max_size=6)
_MEMO_LEAVES: dict[str, st.SearchStrategy[Any]] = {
    "text": _MEMO_TEXT,
    "notification": _MEMO_TEXT,
    "comment": _MEMO_TEXT,
    "licenseNumber": _MEMO_TEXT,
    "uuid": st.uuids(version=4).map(str),
    "boolean": st.booleans(),
    "dateTime": _SCALARS[datetime],
    "date": _SCALARS[date],
    "language": st.from_regex(r"[a-zA-Z]{1,2}", fullmatch=True),
    "anyURI": st.from_regex(r"https://[a-z]{1,8}\.dk(/[a-z0-9]{1,6})?", fullmatch=True),
    "base64Binary": st.builds(InlineContent, data=st.binary(max_size=12)),
    "gln": st.integers(0, 9_999_999_999_999).map(str),
    "pNumber": st.integers(0, 9_999_999_999).map(str),
}


@cache
def _memo_record(cls: type[Any], tag: str, version: str) -> st.SearchStrategy[Any]:
    """Instances of `cls` standing for element `tag` in MeMo `version`."""
    by_element = {slot.element: slot for slot in slots(cls)}
    fields: dict[str, st.SearchStrategy[Any]] = {}
    choices: list[list[tuple[str, st.SearchStrategy[Any]]]] = []
    for place in xsd.children(version, tag) or ():
        options = []
        for name in place.names:
            slot = by_element[xsd.local(name)]
            value = (
                _memo_record(slot.kind, name, version) if slot.is_record else _memo_leaf(slot, name)
            )
            options.append((slot.field, value))
            fields[slot.field] = _counted(slot, place, value)
        if len(options) > 1:  # a choice (Action's target): at most one of them is set
            choices.append(options)
            for field, _ in options:
                fields[field] = st.none()
    if cls is Envelope:
        fields["memoVersion"] = st.just(version)
        fields["memoSchVersion"] = st.just("1.1.0") if version == "1.1" else st.none()
    built = st.builds(cls, **fields)
    for options in choices:
        built = built.flatmap(lambda record, options=options: _one_of_choice(record, options))
    return built


def _one_of_choice(
    record: Any, options: list[tuple[str, st.SearchStrategy[Any]]]
) -> st.SearchStrategy[Any]:
    """`record` as it is, or with one of the choice's fields set."""
    return st.one_of(
        st.just(record),
        *(
            value.map(lambda v, f=field: dataclasses.replace(record, **{f: v}))
            for field, value in options
        ),
    )


def _memo_leaf(slot: Slot, tag: str) -> st.SearchStrategy[Any]:
    if isinstance(slot.kind, type) and issubclass(slot.kind, Enum):
        return st.sampled_from([m for m in slot.kind if m.value != "UNKNOWN"])
    return _MEMO_LEAVES[xsd.leaf_type(tag)]


def _counted(
    slot: Slot, place: xsd.Particle, value: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`value` as often as the XSD allows: a list, required, absent or None."""
    if slot.many:
        return st.lists(value, min_size=place.min, max_size=min(place.max or 2, 2))
    if place.min == 1:
        return value
    if slot.required:  # the model needs a value where MeMo lets the element out
        return st.one_of(st.just(ABSENT[slot.kind]), value)
    if slot.default is not dataclasses.MISSING and slot.default is not None:
        return value  # reply: its default, false, is simply not written
    return st.one_of(st.none(), value)
