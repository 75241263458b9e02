"""Structured output keeps its promise for every JSON Schema keyword (tiny random model).

Each keyword is enforced by the grammar, rewritten into one the grammar enforces, post-checked
(uniqueItems: repeats dropped, else a bounded retry), or refused before any token with an
UnsupportedSchemaError naming it. The battery (tests/schema_battery.py) must come out 100%
valid-or-refused-up-front.
"""

from __future__ import annotations

import json

import pytest
from schema_battery import CASES, run_case
from tiny_models import tiny_llm

from expertrag.errors import StructuredOutputError, UnsupportedSchemaError
from expertrag.models import ExpertLLM
from expertrag.models.schemas import (
    FORMAT_PATTERNS,
    format_checker,
    grammar_regex,
    prepare_schema,
)
from expertrag.models.structured import SchemaViolation, parse_json

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def llm() -> ExpertLLM:
    return tiny_llm(name="schemas")


def test_battery_is_big_and_varied() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    groups = {c.group for c in CASES}
    assert {"format", "uniqueItems", "refs", "anyOf/oneOf", "numeric", "pattern",
            "enum/const", "objects", "arrays", "refused"} <= groups
    assert sum(c.name.startswith("pyd_") for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_battery_on_a_tiny_model_is_valid_or_refused_up_front(llm: ExpertLLM, case) -> None:
    assert run_case(llm, case, max_new_tokens=24) == ("refused" if case.refused else "valid")


@pytest.mark.parametrize("name", ["unique_ints", "format_email", "format_uri", "pyd_order",
                                  "pattern_optional_group", "pyd_event"])
def test_sampled_and_cut_short_still_valid(llm: ExpertLLM, name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    for seed in range(3):
        assert run_case(llm, case, max_new_tokens=10, temperature=1.0, seed=seed) == "valid"


def test_refusal_happens_before_any_token_and_names_the_keyword(llm: ExpertLLM,
                                                                monkeypatch) -> None:
    def no_generation(*_a, **_k):
        raise AssertionError("generated despite an unsupported schema")

    monkeypatch.setattr(llm, "_generate_rows", no_generation)
    for schema, keyword in [({"not": {"type": "string"}}, "not"),
                            ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
                            ({"type": "string", "pattern": "(?=x)x"}, "pattern"),
                            ({"type": "array", "items": {"type": "boolean"},
                              "uniqueItems": True, "minItems": 3}, "uniqueItems"),
                            ({"type": "object", "properties": {"a": {"$ref": "#/$defs/no"}}},
                             "$ref"),
                            ({"type": "strin"}, "type")]:
        with pytest.raises(UnsupportedSchemaError) as info:
            llm.generate(HELLO, json_schema=schema)
        assert info.value.keyword == keyword, info.value
        assert keyword in str(info.value)
    with pytest.raises(UnsupportedSchemaError, match="'not' at /properties/x"):
        prepare_schema({"type": "object", "properties": {"x": {"not": {}}}})


def test_formats_become_bounded_patterns_the_validator_agrees_with() -> None:
    import re

    samples = {"email": "john.doe@example.com", "date": "2024-02-28",
               "date-time": "2024-02-28T12:00:00Z", "time": "23:59:59+02:00",
               "uri": "https://example.com/a?x=1", "uuid": "123e4567-e89b-12d3-a456-426614174000",
               "ipv4": "10.0.0.1", "ipv6": "2001:db8:0:0:0:0:2:1", "hostname": "example.com"}
    for fmt, (pattern, lo, hi) in FORMAT_PATTERNS.items():
        grammar = prepare_schema({"type": "string", "format": fmt}).grammar
        assert "format" not in grammar and grammar["pattern"] == grammar_regex(pattern)
        assert re.fullmatch(pattern.strip("^$"), samples[fmt]) and lo <= len(samples[fmt]) <= hi
        assert format_checker().conforms(samples[fmt], fmt)
    for fmt, bad in [("date", "2023-02-31"), ("date-time", "2023-01-01T25:00:00Z"),
                     ("ipv4", "256.1.1.1"), ("uuid", "1234"), ("uri", "hello")]:
        assert not format_checker().conforms(bad, fmt)


def test_xgrammar_optional_group_workaround() -> None:
    assert grammar_regex(r"^a(\.[0-9]+)?(Z|b)$") == r"^a(\.[0-9]+|)(Z|b)$"
    assert grammar_regex(r"^[)?](x)??$") == r"^[)?](x)??$"  # classes and lazy ? untouched
    assert grammar_regex(r"^\(a\)?$") == r"^\(a\)?$"  # escaped parentheses untouched


def test_rewrites() -> None:
    def grammar(schema):
        return prepare_schema(schema).grammar

    assert grammar({"type": "string", "pattern": "^[a-z]+$", "maxLength": 6}) == {
        "type": "string", "pattern": "^[a-z]{1,6}$"}
    assert grammar({"enum": ["a", "bb", "ccc"], "maxLength": 2}) == {"enum": ["a", "bb"]}
    assert grammar({"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 1.5}) == {
        "enum": [0, 0.5, 1, 1.5]}
    assert grammar({"type": "number", "multipleOf": 2})["type"] == "integer"
    assert grammar({"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 20}) == {
        "enum": [5, 10, 15, 20]}  # xgrammar ignores multipleOf beside a range
    merged = grammar({"allOf": [{"type": "object", "properties": {"a": {}}, "required": ["a"]},
                                {"properties": {"b": {}}, "required": ["b"]}]})
    assert merged["required"] == ["a", "b"] and set(merged["properties"]) == {"a", "b"}
    assert grammar({"type": "object", "required": ["id"]})["properties"] == {"id": {}}
    assert grammar({"oneOf": [{"type": "string"}, {"type": "null"}]}) == {
        "anyOf": [{"type": "string"}, {"type": "null"}]}
    unique = prepare_schema({"type": "array", "items": {"enum": [1, 2]}, "uniqueItems": True})
    assert unique.grammar["maxItems"] == 2 and unique.post_checked == {"uniqueItems"}
    assert "title" not in grammar({"title": "T", "type": "string", "x-extension": 1})


def test_properties_come_out_in_the_declared_order(llm: ExpertLLM) -> None:
    """Key order is part of a schema for its user (and for a tool call: "name" first); the
    grammar cache must not sort it away, nor share one grammar between two orders."""
    first = {"type": "object", "properties": {"z": {"type": "integer"}, "a": {"type": "integer"}},
             "required": ["z", "a"]}
    second = {"type": "object", "properties": {"a": {"type": "integer"}, "z": {"type": "integer"}},
              "required": ["a", "z"]}
    assert list(prepare_schema(first).grammar["properties"]) == ["z", "a"]
    assert list(prepare_schema(second).grammar["properties"]) == ["a", "z"]
    for schema in (first, second):
        res = llm.generate(HELLO, json_schema=schema, max_new_tokens=24)
        assert list(json.loads(res.text)) == list(schema["properties"])


def test_repeats_are_dropped_when_the_array_still_validates() -> None:
    schema = {"type": "object", "properties": {"t": {"type": "array", "uniqueItems": True,
                                                     "items": {"type": "string"}}}}
    assert parse_json('{"t": ["a", "b", "a"]}', schema) == {"t": ["a", "b"]}
    tight = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "minItems": 3}
    with pytest.raises(SchemaViolation) as info:
        parse_json("[1, 1, 2]", tight)
    assert info.value.keywords == ["minItems"]


def test_repaired_text_matches_parsed(llm: ExpertLLM, monkeypatch) -> None:
    import expertrag.models.llm as llm_module

    real = llm_module.parse_json

    def duplicated(text, schema):
        return real('["a", "a", "b"]', schema)

    monkeypatch.setattr(llm_module, "parse_json", duplicated)
    res = llm.generate(HELLO, max_new_tokens=8, json_schema={
        "type": "array", "items": {"type": "string"}, "uniqueItems": True})
    assert res.parsed == ["a", "b"] and json.loads(res.text) == res.parsed


def test_a_post_check_failure_is_retried_a_bounded_number_of_times(llm: ExpertLLM,
                                                                   monkeypatch) -> None:
    import expertrag.models.llm as llm_module

    calls = []
    real = llm_module.parse_json

    def flaky(text, schema):
        calls.append(text)
        if len(calls) < 2:
            raise SchemaViolation("repeated items (uniqueItems)", ["uniqueItems"])
        return real(text, schema)

    monkeypatch.setattr(llm_module, "parse_json", flaky)
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    res = llm.generate(HELLO, json_schema=schema, max_new_tokens=8)
    assert len(calls) == 2 and res.parsed is not None
    assert res.completion_tokens > 0

    def never(text, schema):
        calls.append(text)
        raise SchemaViolation("repeated items (uniqueItems)", ["uniqueItems"])

    calls.clear()
    monkeypatch.setattr(llm_module, "parse_json", never)
    with pytest.raises(StructuredOutputError, match="after 2 retries"):
        llm.generate(HELLO, json_schema=schema, max_new_tokens=8)
    assert len(calls) == 1 + llm_module.SCHEMA_RETRIES
