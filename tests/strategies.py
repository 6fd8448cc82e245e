"""Hypothesis strategies for the DP2 models, derived from the dataclasses themselves.

Every field is generated, optional ones sometimes None, with small sizes so a hundred
examples of a whole Envelope stay fast. Values stay inside what Avro can carry:
aware UTC datetimes at microsecond precision, 32-bit ints (valid for int and long).
"""

import dataclasses
import types
import typing
from datetime import UTC, date, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar

from hypothesis import strategies as st

from schemas.models import (
    RECORD_TYPES,
    ContactRecord,
    Envelope,
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
