"""Schema evolution rules, and the consistency of models with their .avsc files."""

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from enum import Enum
from typing import Any

import pytest

from schemas import models
from schemas.codec import REGISTRY, load_schema
from schemas.compat import can_read, check_history

FAMILIES = REGISTRY.families


@pytest.mark.parametrize("family", FAMILIES)
def test_history_is_compatible_both_ways(family: str) -> None:
    """Every recorded version and the current schema can read each other's data."""
    assert check_history(family) == []


def test_every_schema_family_has_one_model_class() -> None:
    """Each schema family is carried by exactly one top-level model class."""
    assert sorted(m.SCHEMA_NAME for m in models.RECORD_TYPES) == sorted(FAMILIES)


def _header(schema: dict[str, Any]) -> dict[str, Any]:
    header: dict[str, Any] = schema["fields"][2]["type"]
    assert header["name"] == "MessageHeader"
    return header


def test_new_field_without_default_is_rejected() -> None:
    """A reader with a field that has no default cannot read data written without it."""
    old = load_schema("envelope")
    new = copy.deepcopy(old)
    _header(new)["fields"].append({"name": "priority", "type": "string"})
    assert can_read(new, old) == [
        "Envelope.header.priority: not in the writer's schema and has no default"
    ]
    assert can_read(old, new) == []  # old readers skip the unknown field


def test_new_field_with_default_is_accepted() -> None:
    """A field added with a default keeps both directions compatible."""
    old = load_schema("envelope")
    new = copy.deepcopy(old)
    field = {"name": "priority", "type": ["null", "string"], "default": None}
    _header(new)["fields"].append(field)
    assert can_read(new, old) == []
    assert can_read(old, new) == []


def test_removed_enum_symbol_without_default_is_rejected() -> None:
    """A reader enum lacking a writer symbol, and without a default, is rejected."""
    writer = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}
    reader = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}
    problems = can_read(reader, writer)
    assert len(problems) == 1
    assert "['BLUE']" in problems[0]
    assert can_read({**reader, "default": "RED"}, writer) == []


def test_enum_default_lets_old_readers_read_new_symbols() -> None:
    """Adding a LifecycleState symbol is compatible because the enum defaults to UNKNOWN."""
    old = load_schema("lifecycle_event")
    new = copy.deepcopy(old)
    state = next(f for f in new["fields"] if f["name"] == "state")
    state["type"]["symbols"].append("ARCHIVED")
    assert can_read(old, new) == []


def test_type_change_string_to_int_is_rejected() -> None:
    """Changing a field from string to int breaks both directions."""
    old = load_schema("envelope")
    new = copy.deepcopy(old)
    label = next(f for f in _header(new)["fields"] if f["name"] == "label")
    label["type"] = "int"
    assert can_read(new, old) == ["Envelope.header.label: reader expects int, writer has string"]
    assert can_read(old, new) == ["Envelope.header.label: reader expects string, writer has int"]


@pytest.mark.parametrize(
    ("writer", "reader", "ok"),
    [
        ("int", "long", True),
        ("long", "double", True),
        ("string", "bytes", True),
        ("long", "int", False),
        ("double", "float", False),
        ({"type": "long", "logicalType": "timestamp-micros"}, "long", True),
        ("string", ["null", "string"], True),
        (["null", "string"], "string", False),
        ({"type": "array", "items": "int"}, {"type": "array", "items": "long"}, True),
        ({"type": "map", "values": "string"}, {"type": "map", "values": "int"}, False),
        (
            {"type": "fixed", "name": "F", "size": 4},
            {"type": "fixed", "name": "F", "size": 8},
            False,
        ),
    ],
)
def test_primitive_and_container_rules(writer: Any, reader: Any, ok: bool) -> None:
    """Promotions, logical types, unions and containers follow the Avro resolution rules."""
    assert (can_read(reader, writer) == []) is ok


def test_renamed_field_with_alias_is_accepted() -> None:
    """A reader field renamed with the old name as alias reads the writer's field."""
    writer = {"type": "record", "name": "R", "fields": [{"name": "old", "type": "string"}]}
    reader = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "new", "aliases": ["old"], "type": "string"}],
    }
    assert can_read(reader, writer) == []


# --- models and schemas cannot drift -------------------------------------------------


def _named_types(schema: Any) -> Iterator[dict[str, Any]]:
    """Every record and enum defined (not merely referenced) in a raw schema."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _named_types(branch)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "enum"):
            yield schema
        for field in schema.get("fields", []):
            yield from _named_types(field["type"])
        if kind in ("array", "map"):
            yield from _named_types(schema.get("items", schema.get("values")))
        elif isinstance(kind, dict | list):
            yield from _named_types(kind)


ALL_NAMED = [t for family in FAMILIES for t in _named_types(load_schema(family))]


def _is_nullable(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    is_union = origin is types.UnionType or origin is typing.Union
    return is_union and type(None) in typing.get_args(hint)


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default.value if isinstance(f.default, Enum) else f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize("avro", ALL_NAMED, ids=lambda t: str(t["name"]))
def test_model_matches_schema(avro: dict[str, Any]) -> None:
    """The model class of a named type has its fields in order, nullability and defaults."""
    cls = getattr(models, avro["name"])
    if avro["type"] == "enum":
        assert [m.value for m in cls] == avro["symbols"]
        return
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == [f["name"] for f in avro["fields"]]
    for model_field, avro_field in zip(fields, avro["fields"], strict=True):
        avro_nullable = isinstance(avro_field["type"], list) and "null" in avro_field["type"]
        assert _is_nullable(hints[model_field.name]) == avro_nullable, model_field.name
        expected = avro_field.get("default", dataclasses.MISSING)
        assert _field_default(model_field) == expected, model_field.name


def test_every_model_class_is_in_a_schema() -> None:
    """Every dataclass and enum in schemas.models is a named type of some schema."""
    in_schemas = {t["name"] for t in ALL_NAMED}
    in_models = {
        name
        for name, obj in vars(models).items()
        if isinstance(obj, type)
        and obj.__module__ == models.__name__
        and (dataclasses.is_dataclass(obj) or issubclass(obj, Enum))
    }
    assert in_models == in_schemas


def _without_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_docs(v) for k, v in schema.items() if k != "doc"}
    if isinstance(schema, list):
        return [_without_docs(v) for v in schema]
    return schema


def test_shared_named_types_are_identical_across_files() -> None:
    """A named type defined in several files (e.g. IdType) is the same in all of them."""
    forms: dict[str, set[str]] = {}
    for t in ALL_NAMED:
        forms.setdefault(t["name"], set()).add(json.dumps(_without_docs(t), sort_keys=True))
    assert {name: len(f) for name, f in forms.items() if len(f) > 1} == {}


def test_optional_fields_default_to_null_and_arrays_to_empty() -> None:
    """Every union field has null first with default null; every array and map field a default."""
    for t in ALL_NAMED:
        for field in t.get("fields", []):
            ftype = field["type"]
            if isinstance(ftype, list) and "null" in ftype:
                assert ftype[0] == "null", (t["name"], field["name"])
                assert field.get("default", "missing") is None, (t["name"], field["name"])
            if isinstance(ftype, dict) and ftype["type"] in ("array", "map"):
                assert field["default"] in ([], {}), (t["name"], field["name"])


def test_history_v1_equals_current_for_now() -> None:
    """Until a change is released, history v1 is the current schema of each family."""
    for family in FAMILIES:
        assert load_schema(family, "v1") == load_schema(family)
