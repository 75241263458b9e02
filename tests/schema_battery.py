"""A battery of JSON Schemas for structured output: Pydantic models and hand-written edge cases.

Each case names the class of keyword it exercises (``group``), a prompt that fits it, and
whether the schema must be refused up front (``UnsupportedSchemaError``) rather than decoded.
:func:`run_case` runs one case against an :class:`~expertrag.models.ExpertLLM` and returns
"valid" (the parsed value validates with ``jsonschema``, formats included), "refused" (refused
before any token) or "invalid: ..." (a failure: refused when it should not be, raised after
generating, or a result that does not validate). Used by the unit test (tiny random model),
the integration test and ``benchmarks/bench_schemas.py`` (the real 135M model).
"""

from __future__ import annotations

import datetime
import enum
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AnyUrl, BaseModel, Field, IPvAnyAddress


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    schema: dict[str, Any]
    prompt: str = "Fill in the JSON."
    refused: bool = False


# ------------------------------------------------------------------ pydantic models
class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Person(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=0, le=130)


class Address(BaseModel):
    street: str
    city: str
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Customer(BaseModel):
    person: Person
    address: Address
    vip: bool = False


class Item(BaseModel):
    sku: str = Field(max_length=12)
    quantity: int = Field(ge=1, le=99)
    price: float = Field(gt=0, le=10000)


class Order(BaseModel):
    order_id: uuid.UUID
    items: list[Item] = Field(min_length=1, max_length=3)
    placed: datetime.datetime


class Event(BaseModel):
    title: str = Field(max_length=60)
    day: datetime.date
    tags: set[str] = Field(max_length=4)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]


class Shape(BaseModel):
    color: Color
    sides: int | None = None


class Link(BaseModel):
    url: AnyUrl
    host: IPvAnyAddress | None = None


class Tree(BaseModel):
    label: str = Field(max_length=10)
    children: list[Tree] = Field(default_factory=list, max_length=2)


class Scores(BaseModel):
    scores: dict[str, int]
    pair: tuple[int, str]


class Contact(BaseModel):
    email: str = Field(json_schema_extra={"format": "email"})
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9]{7,12}$")


def _pyd(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


_STR = {"type": "string"}
_INT = {"type": "integer"}

CASES: list[Case] = [
    # --- pydantic-generated
    Case("pyd_person", "objects", _pyd(Person), "Invent a person: name and age."),
    Case("pyd_customer", "refs", _pyd(Customer), "Invent a customer with an address."),
    Case("pyd_order", "format", _pyd(Order), "Invent an order of one or two items."),
    Case("pyd_event", "uniqueItems", _pyd(Event), "Invent an event with a few tags."),
    Case("pyd_pet", "anyOf/oneOf", _pyd(Pet), "Describe a pet (a cat or a dog)."),
    Case("pyd_shape", "enum/const", _pyd(Shape), "Describe a shape with a color."),
    Case("pyd_link", "format", _pyd(Link), "Give a link to a web page."),
    Case("pyd_tree", "refs", _pyd(Tree), "A tiny tree of labels."),
    Case("pyd_scores", "objects", _pyd(Scores), "Some player scores and a pair."),
    Case("pyd_contact", "format", _pyd(Contact), "Invent a contact with an email address."),
    # --- types and enums
    Case("string", "types", _STR, "Say hello."),
    Case("integer", "types", _INT, "Pick a number."),
    Case("boolean", "types", {"type": "boolean"}, "Is the sky blue?"),
    Case("null_or_string", "types", {"type": ["string", "null"]}, "Say hello or nothing."),
    Case("enum_strings", "enum/const", {"enum": ["red", "green", "blue"]}, "Pick a color."),
    Case("enum_mixed", "enum/const", {"enum": [1, "two", None, True]}, "Pick one."),
    Case("const_object", "enum/const", {"const": {"ok": True}}, "Say ok."),
    Case("enum_filtered_by_length", "enum/const",
         {"type": "string", "enum": ["a", "bb", "cccc"], "maxLength": 2}, "Pick one."),
    # --- objects
    Case("nested_objects", "objects",
         {"type": "object", "properties": {"a": {"type": "object", "properties": {
             "b": {"type": "object", "properties": {"c": _INT}, "required": ["c"]}},
             "required": ["b"]}}, "required": ["a"]}, "Nest three levels."),
    Case("additional_false", "objects",
         {"type": "object", "properties": {"x": _INT}, "required": ["x"],
          "additionalProperties": False}, "Give x."),
    Case("additional_schema", "objects",
         {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
          "minProperties": 1, "maxProperties": 3}, "Count some fruit."),
    Case("required_not_in_properties", "objects",
         {"type": "object", "required": ["id"], "additionalProperties": _INT}, "Give an id."),
    Case("property_names", "objects",
         {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
          "additionalProperties": {"type": "boolean"}, "maxProperties": 2}, "Flags."),
    # --- arrays
    Case("array_bounds", "arrays",
         {"type": "array", "items": _STR, "minItems": 2, "maxItems": 3}, "Two or three fruits."),
    Case("prefix_items", "arrays",
         {"type": "array", "prefixItems": [_INT, _STR], "items": False, "minItems": 2},
         "A number and a word."),
    Case("array_of_objects", "arrays",
         {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
             "k": _STR, "v": _INT}, "required": ["k", "v"]}}, "Key-value pairs."),
    # --- uniqueItems (post-checked)
    Case("unique_ints", "uniqueItems",
         {"type": "array", "items": _INT, "uniqueItems": True, "minItems": 3, "maxItems": 5},
         "Three to five different numbers."),
    Case("unique_enum", "uniqueItems",
         {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True,
          "minItems": 2}, "Two or three letters."),
    Case("unique_strings_nested", "uniqueItems",
         {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True,
                                                    "items": {"type": "string", "maxLength": 8},
                                                    "maxItems": 4}}, "required": ["tags"]},
         "Tags for a blog post."),
    Case("unique_unsatisfiable", "uniqueItems",
         {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 3},
         refused=True),
    # --- $defs / $ref
    Case("defs_ref", "refs",
         {"$defs": {"pt": {"type": "object", "properties": {"x": _INT, "y": _INT},
                           "required": ["x", "y"]}},
          "type": "object", "properties": {"a": {"$ref": "#/$defs/pt"},
                                           "b": {"$ref": "#/$defs/pt"}}, "required": ["a"]},
         "Two points."),
    Case("ref_with_sibling", "refs",
         {"$defs": {"s": {"type": "string"}}, "type": "object",
          "properties": {"code": {"$ref": "#/$defs/s", "maxLength": 4}}, "required": ["code"]},
         "A short code."),
    Case("remote_ref", "refs", {"$ref": "https://example.com/schema.json"}, refused=True),
    # --- anyOf / oneOf / allOf
    Case("any_of", "anyOf/oneOf", {"anyOf": [_INT, {"type": "string", "maxLength": 5}]},
         "A number or a word."),
    Case("one_of_disjoint_types", "anyOf/oneOf", {"oneOf": [{"type": "boolean"}, _STR]},
         "Yes, no, or a word."),
    Case("one_of_overlapping", "anyOf/oneOf",
         {"oneOf": [_INT, {"type": "number"}]}, refused=True),
    Case("all_of_merge", "allOf",
         {"allOf": [{"type": "object", "properties": {"a": _INT}, "required": ["a"]},
                    {"properties": {"b": _STR}, "required": ["b"]}]}, "Give a and b."),
    Case("all_of_conflict", "allOf",
         {"allOf": [{"type": "string"}, {"type": "integer"}]}, refused=True),
    # --- numeric bounds
    Case("int_bounds", "numeric", {"type": "integer", "minimum": 10, "maximum": 20},
         "A number from 10 to 20."),
    Case("number_exclusive", "numeric",
         {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "A probability."),
    Case("int_multiple_of", "numeric", {"type": "integer", "multipleOf": 5},
         "A multiple of five."),
    Case("int_multiple_of_bounded", "numeric",
         {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100}, "A score."),
    Case("int_multiple_of_one_bound", "numeric",
         {"type": "integer", "multipleOf": 5, "maximum": 100}, refused=True),
    Case("number_multiple_of_bounded", "numeric",
         {"type": "number", "multipleOf": 0.25, "minimum": 0, "maximum": 5}, "A rating."),
    Case("number_multiple_of_unbounded", "numeric",
         {"type": "number", "multipleOf": 0.01}, refused=True),
    # --- string lengths and patterns
    Case("string_lengths", "strings", {"type": "string", "minLength": 3, "maxLength": 8},
         "A short word."),
    Case("pattern_code", "pattern", {"type": "string", "pattern": r"^[A-Z]{3}-[0-9]{3}$"},
         "A product code like ABC-123."),
    Case("pattern_optional_group", "pattern",
         {"type": "string", "pattern": r"^[0-9]{2}(\.[0-9]+)?%$"}, "A percentage."),
    Case("pattern_with_length", "pattern",
         {"type": "string", "pattern": "^[a-z]+$", "maxLength": 6}, "A lowercase word."),
    Case("pattern_complex_with_length", "pattern",
         {"type": "string", "pattern": "^(ab|cd)+$", "maxLength": 6}, refused=True),
    Case("pattern_lookahead", "pattern", {"type": "string", "pattern": "^(?=a)a+$"},
         refused=True),
    # --- formats
    Case("format_email", "format", {"type": "string", "format": "email"},
         "The email of John Doe at example.com."),
    Case("format_date", "format", {"type": "string", "format": "date"}, "Today's date."),
    Case("format_date_time", "format", {"type": "string", "format": "date-time"},
         "A meeting time."),
    Case("format_uri", "format", {"type": "string", "format": "uri"}, "A website."),
    Case("format_uuid", "format", {"type": "string", "format": "uuid"}, "An id."),
    Case("format_ipv4", "format", {"type": "string", "format": "ipv4"}, "A local IP address."),
    Case("format_email_short_max", "format",
         {"type": "string", "format": "email", "maxLength": 10}, refused=True),
    # --- refused keywords
    Case("not", "refused", {"not": _STR}, refused=True),
    Case("if_then", "refused",
         {"type": "object", "properties": {"a": _INT}, "if": {"required": ["a"]},
          "then": {"required": ["b"]}}, refused=True),
    Case("contains", "refused", {"type": "array", "contains": {"const": 3}}, refused=True),
    Case("dependent_required", "refused",
         {"type": "object", "properties": {"a": _INT, "b": _INT},
          "dependentRequired": {"a": ["b"]}}, refused=True),
]


def prompt_for(case: Case) -> list[dict[str, str]]:
    return [{"role": "user", "content": case.prompt}]


def run_case(llm: Any, case: Case, **kwargs: Any) -> str:
    """"valid", "refused", or "invalid: <why>" for one case (see the module doc)."""
    return evaluate(llm, case, **kwargs)[0]


def evaluate(llm: Any, case: Case, **kwargs: Any) -> tuple[str, Any]:
    """:func:`run_case`'s outcome and the GenerationResult (None when none was made)."""
    import jsonschema

    from expertrag.errors import UnsupportedSchemaError
    from expertrag.models.schemas import format_checker

    kwargs.setdefault("max_new_tokens", 64)
    try:
        res = llm.generate(prompt_for(case), json_schema=case.schema, **kwargs)
    except UnsupportedSchemaError as exc:
        return ("refused" if case.refused else f"invalid: refused ({exc})"), None
    except Exception as exc:
        return f"invalid: raised {type(exc).__name__}: {exc}", None
    if case.refused:
        return "invalid: should have been refused", res
    try:
        jsonschema.validate(res.parsed, case.schema, format_checker=format_checker())
    except jsonschema.ValidationError as exc:
        return f"invalid: {exc.message}", res
    return "valid", res
