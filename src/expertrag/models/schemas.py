"""Which JSON Schema keywords structured output guarantees, and how.

Every keyword of a ``json_schema`` falls in one of four classes, decided before any token
is generated (:func:`prepare_schema`):

* **enforced** by the grammar while decoding (xgrammar): ``type``, ``properties``,
  ``required``, ``additionalProperties``, ``enum``, ``const``, ``items``, ``prefixItems``,
  ``minItems``/``maxItems``, ``minLength``/``maxLength``, ``pattern``, numeric bounds,
  ``multipleOf`` (integers), ``$ref``/``$defs``, ``anyOf``, ``oneOf`` (disjoint branches),
  ``minProperties``/``maxProperties``, ``propertyNames``, ``patternProperties``;
* **rewritten** into an equivalent (or stricter) schema the grammar does enforce:
  ``format`` (email, date, date-time, time, uri, uuid, ipv4, ipv6, hostname) becomes a
  bounded ``pattern``, so a string cannot run away; ``allOf`` and ``$ref`` with sibling
  keywords are merged; ``enum``/``const`` are filtered by their sibling keywords;
  ``multipleOf`` on numbers becomes an integer type or a finite ``enum``; ``required``
  names missing from ``properties`` are added; a length bound beside a simple ``pattern``
  moves into the pattern's quantifier;
* **post-checked**: ``uniqueItems`` (no grammar can say "no repeats" compactly). The output
  is validated; repeated items are dropped when the array still validates without them,
  otherwise the row is generated again (sampling, a bounded number of times);
* **refused** up front with :class:`~expertrag.errors.UnsupportedSchemaError`, which names
  the keyword: ``not``, ``if``/``then``/``else``, ``contains``, ``dependentRequired``,
  ``dependentSchemas``, ``unevaluatedItems``, ``$dynamicRef``, non-local ``$ref``,
  overlapping ``oneOf``, unsatisfiable combinations, patterns the grammar cannot compile.

Annotations (``title``, ``description``, ``default``, ``examples``, ...) and unknown keywords
constrain nothing (a JSON Schema validator ignores them too) and are dropped from the grammar.
Every result is validated with ``jsonschema`` (formats included) before it is returned.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from expertrag.errors import UnsupportedSchemaError

#: keyword classes, for documentation, the benchmark and tests
ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "enum", "const", "items",
    "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "$ref", "$defs",
    "definitions", "anyOf", "oneOf", "minProperties", "maxProperties", "propertyNames",
    "patternProperties", "unevaluatedProperties",
})
REWRITTEN = frozenset({"format", "allOf"})
POST_CHECKED = frozenset({"uniqueItems"})
REFUSED = frozenset({
    "not", "if", "then", "else", "contains", "minContains", "maxContains",
    "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedItems",
    "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "contentSchema",
})
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
    "discriminator", "$anchor", "$vocabulary", "nullable", "example",
})

_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_ONE = ("additionalProperties", "items", "propertyNames", "unevaluatedProperties")
_SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")

# ------------------------------------------------------------------ formats as patterns
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DATE = (r"[12][0-9]{3}-(((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01]))"
         r"|((0[469]|11)-(0[1-9]|[12][0-9]|30))|(02-(0[1-9]|1[0-9]|2[0-8])))")
_TIME = (r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?"
         r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?"  # at most 16 characters
#: format -> (pattern, shortest, longest match): every match is valid for the format and at
#: most `longest` characters long, so the grammar must close the string in time
FORMAT_PATTERNS: dict[str, tuple[str, int, int]] = {
    "email": (rf"^[A-Za-z0-9_%+-]{{1,20}}([.][A-Za-z0-9_%+-]{{1,20}})?@({_LABEL}[.]){{1,2}}"
              r"[a-z]{2,6}$", 6, 20 + 21 + 1 + 2 * 17 + 6),
    "date": (rf"^{_DATE}$", 10, 10),
    "time": (rf"^{_TIME}$", 9, 21),
    "date-time": (rf"^{_DATE}T{_TIME}$", 20, 32),
    "uri": (rf"^https?://({_LABEL}[.]){{1,2}}[a-z]{{2,6}}(/[A-Za-z0-9_~-]{{1,16}}){{0,3}}"
            r"([?][a-z0-9_]{1,12}=[A-Za-z0-9_~-]{1,16})?$", 12, 8 + 34 + 6 + 51 + 30),
    "uuid": (r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
             36, 36),
    "ipv4": (rf"^({_OCTET}[.]){{3}}{_OCTET}$", 7, 15),
    "ipv6": (r"^([0-9a-f]{1,4}:){7}[0-9a-f]{1,4}$", 15, 39),
    "hostname": (rf"^{_LABEL}([.]{_LABEL}){{0,3}}$", 1, 4 * 17),
}

_SIMPLE_PATTERN = re.compile(
    r"^\^?(\[(?:[^\]\\]|\\.)+\]|\\[dwsDWS]|\.|[A-Za-z0-9])(\+|\*|\{(\d+)(,(\d*))?\})\$?$"
)


@dataclass(frozen=True)
class PreparedSchema:
    """The schema the grammar compiles, and what is checked after decoding."""

    original: dict[str, Any]
    grammar: dict[str, Any]
    post_checked: frozenset[str]


def _refuse(keyword: str, path: str, why: str) -> UnsupportedSchemaError:
    where = path or "the root"
    return UnsupportedSchemaError(
        f"JSON Schema keyword {keyword!r} at {where}: {why}", keyword=keyword, path=path
    )


def _types(schema: dict[str, Any]) -> set[str] | None:
    t = schema.get("type")
    if t is None:
        return None
    return {t} if isinstance(t, str) else set(t)


class _Preparer:
    def __init__(self, root: dict[str, Any], strict: bool) -> None:
        self.root = root
        self.strict = strict
        self.post: set[str] = set()

    # -- helpers
    def refuse(self, keyword: str, path: str, why: str) -> None:
        if self.strict:
            raise _refuse(keyword, path, why)

    def resolve(self, ref: str, path: str) -> dict[str, Any] | None:
        if not ref.startswith("#"):
            self.refuse("$ref", path, f"only local references ('#/...') are supported, got "
                        f"{ref!r}")
            return None
        node: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                self.refuse("$ref", path, f"reference {ref!r} does not resolve")
                return None
            node = node[part]
        return node if isinstance(node, dict) else None

    # -- the walk
    def walk(self, schema: Any, path: str) -> Any:
        if isinstance(schema, bool) or not isinstance(schema, dict):
            return schema
        for key in schema:
            if key in REFUSED:
                self.refuse(key, path, "the grammar cannot enforce it and a retry could not "
                            "make it hold; remove it or validate yourself")
        if "allOf" in schema or ("$ref" in schema and self._constraining(
                schema, {"$ref", "$defs", "definitions"})):
            schema = self.merge_all_of(schema, path)
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in ANNOTATIONS or key in REFUSED:
                continue
            if key not in ENFORCED and key not in REWRITTEN and key not in POST_CHECKED:
                continue  # unknown keyword: an annotation to a validator too
            if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
                out[key] = {k: self.walk(v, f"{path}/{key}/{k}") for k, v in value.items()}
            elif key in _SUBSCHEMA_ONE and isinstance(value, dict):
                out[key] = self.walk(value, f"{path}/{key}")
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                out[key] = [self.walk(v, f"{path}/{key}/{i}") for i, v in enumerate(value)]
            elif key == "items" and isinstance(value, list):  # draft-7 tuple form
                out["prefixItems"] = [self.walk(v, f"{path}/items/{i}")
                                      for i, v in enumerate(value)]
                extra = schema.get("additionalItems", True)
                out["items"] = self.walk(extra, f"{path}/additionalItems")
            else:
                out[key] = value
        if "$ref" in out:
            self.resolve(out["$ref"], path)
        self.check_required(out, path)
        self.check_format(out, path)
        self.check_pattern(out, path)
        self.check_multiple_of(out, path)
        self.check_enum(out, path)
        self.check_one_of(out, path)
        self.check_unique(out, path)
        return out

    @staticmethod
    def _constraining(schema: dict[str, Any], skip: set[str]) -> bool:
        return any(k not in ANNOTATIONS and k not in skip for k in schema)

    def merge_all_of(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        parts = [dict(p) for p in schema.get("allOf", []) if isinstance(p, dict)]
        base = {k: v for k, v in schema.items() if k != "allOf"}
        if "$ref" in base:  # 2020-12: $ref applies beside its siblings, like allOf
            parts.insert(0, {"$ref": base.pop("$ref")})
        merged: dict[str, Any] = base
        for part in parts:
            seen: set[str] = set()
            while "$ref" in part:  # inline local references (not recursive ones)
                ref = part.pop("$ref")
                if ref in seen:
                    self.refuse("allOf", path, "a recursive $ref inside allOf")
                    break
                seen.add(ref)
                target = self.resolve(ref, path) or {}
                part = {**target, **part}
            if "allOf" in part:
                part = self.merge_all_of(part, path)
            for key, value in part.items():
                if key in ANNOTATIONS:
                    merged.setdefault(key, value)
                elif key not in merged:
                    merged[key] = copy.deepcopy(value)
                elif key == "required":
                    merged[key] = list(dict.fromkeys([*merged[key], *value]))
                elif key == "properties":
                    for name, sub in value.items():
                        if name in merged[key] and merged[key][name] != sub:
                            merged[key][name] = {"allOf": [merged[key][name], sub]}
                        else:
                            merged[key][name] = sub
                elif merged[key] != value:
                    if key in ("minimum", "minLength", "minItems", "exclusiveMinimum",
                               "minProperties"):
                        merged[key] = max(merged[key], value)
                    elif key in ("maximum", "maxLength", "maxItems", "exclusiveMaximum",
                                 "maxProperties"):
                        merged[key] = min(merged[key], value)
                    elif key == "type":
                        a, b = _types({"type": merged[key]}), _types({"type": value})
                        both = (a or set()) & (b or set())
                        if "number" in (a or set()) and "integer" in (b or set()):
                            both.add("integer")
                        if "integer" in (a or set()) and "number" in (b or set()):
                            both.add("integer")
                        if not both:
                            self.refuse("allOf", path, f"types {merged[key]!r} and {value!r} "
                                        "have no value in common")
                        merged[key] = sorted(both) if len(both) > 1 else next(iter(both), value)
                    else:
                        self.refuse("allOf", path, f"its parts give {key!r} two different "
                                    "values, which cannot be merged")
        return merged

    def check_required(self, schema: dict[str, Any], path: str) -> None:
        required = schema.get("required")
        if not isinstance(required, list):
            return
        props = schema.setdefault("properties", {}) if required else schema.get("properties")
        extra = schema.get("additionalProperties", True)
        for name in required:
            if name in props:
                continue
            if extra is False:
                self.refuse("required", path, f"requires {name!r}, which properties does not "
                            "define and additionalProperties forbids")
                continue
            props[name] = extra if isinstance(extra, dict) else {}

    def check_format(self, schema: dict[str, Any], path: str) -> None:
        fmt = schema.get("format")
        if fmt not in FORMAT_PATTERNS:
            return  # other formats: shaped by xgrammar where it knows them, else annotations
        if "pattern" in schema:
            self.refuse("format", path, "format together with pattern cannot both be "
                        "enforced; keep one")
            return
        pattern, lo, hi = FORMAT_PATTERNS[fmt]
        min_len, max_len = schema.get("minLength", 0), schema.get("maxLength")
        if min_len > lo or (max_len is not None and max_len < hi):
            self.refuse("format", path, f"format {fmt!r} with minLength/maxLength is only "
                        f"supported when the bounds allow {lo}..{hi} characters")
            return
        schema.pop("format")
        schema.pop("minLength", None)
        schema.pop("maxLength", None)
        schema["pattern"] = pattern

    def check_pattern(self, schema: dict[str, Any], path: str) -> None:
        pattern = schema.get("pattern")
        if not isinstance(pattern, str):
            return
        try:
            re.compile(pattern)
            _regex_compiles(pattern)
        except (re.error, RuntimeError, ValueError) as exc:
            why = re.sub(r"^\[[^]]*\] \S+: ", "", str(exc).splitlines()[-1])[:120]
            self.refuse("pattern", path, f"the grammar cannot express {pattern!r} ({why})")
            return
        schema["pattern"] = grammar_regex(pattern)
        if "minLength" not in schema and "maxLength" not in schema:
            return
        m = _SIMPLE_PATTERN.match(pattern)
        if not m or not pattern.startswith("^") or not pattern.endswith("$"):
            self.refuse("pattern", path, "pattern together with minLength/maxLength is only "
                        "supported for a single repeated character class such as "
                        "'^[a-z]+$'; put the length into the pattern")
            return
        atom, quant, lo_s, comma, hi_s = m.group(1), m.group(2), m.group(3), m.group(4), \
            m.group(5)
        lo = {"+": 1, "*": 0}.get(quant, int(lo_s) if lo_s else 0)
        hi = None if quant in "+*" or (comma and not hi_s) else int(hi_s if comma else lo_s)
        lo = max(lo, schema.pop("minLength", 0))
        max_len = schema.pop("maxLength", None)
        if max_len is not None:
            hi = max_len if hi is None else min(hi, max_len)
        if hi is not None and hi < lo:
            self.refuse("maxLength", path, "no string satisfies both the pattern and the "
                        "length bounds")
            return
        schema["pattern"] = f"^{atom}{{{lo},{'' if hi is None else hi}}}$"

    def check_multiple_of(self, schema: dict[str, Any], path: str) -> None:
        m = schema.get("multipleOf")
        if m is None:
            return
        types = _types(schema) or {"number"}
        integral = float(m).is_integer()
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        # xgrammar enforces multipleOf on integers only without a range (with one it warns
        # and ignores multipleOf): a bounded range becomes an enum of the multiples
        unbounded = lo is None and hi is None
        if types == {"integer"} and not integral and (1 / m).is_integer():
            schema.pop("multipleOf")  # every integer is a multiple of 1/k
            return
        if types <= {"integer", "number"} and integral and unbounded:
            schema["type"] = "integer"
            schema["multipleOf"] = int(m)
            return
        if types <= {"integer", "number"} and lo is not None and hi is not None \
                and (hi - lo) / m <= 200:
            check = {k: v for k, v in schema.items() if k != "enum"}
            values = []
            start = int(-(-lo // m))
            for k in range(start, int(hi // m) + 1):
                v = round(k * m, 10)
                v = int(v) if float(v).is_integer() and "integer" in types else v
                if _valid(v, check):
                    values.append(v)
            if not values:
                self.refuse("multipleOf", path, "no number satisfies multipleOf and the bounds")
                return
            for key in ("type", "multipleOf", "minimum", "maximum", "exclusiveMinimum",
                        "exclusiveMaximum"):
                schema.pop(key, None)
            schema["enum"] = values
            return
        self.refuse("multipleOf", path, f"multipleOf {m} needs either no bounds (integral "
                    "steps) or a minimum and a maximum at most 200 steps apart")

    def check_enum(self, schema: dict[str, Any], path: str) -> None:
        for key in ("enum", "const"):
            if key not in schema:
                continue
            siblings = {k: v for k, v in schema.items() if k not in ("enum", "const")}
            if not siblings or "$ref" in json.dumps(siblings):
                continue
            values = schema["enum"] if key == "enum" else [schema["const"]]
            kept = [v for v in values if _valid(v, siblings)]
            if not kept:
                self.refuse(key, path, "no listed value satisfies the sibling keywords")
                return
            if key == "enum":
                schema["enum"] = kept
            for k in list(siblings):  # the values now carry every sibling constraint
                schema.pop(k)

    def check_one_of(self, schema: dict[str, Any], path: str) -> None:
        branches = schema.get("oneOf")
        if not isinstance(branches, list):
            return
        resolved = [self._deref(b, path) for b in branches]
        for i in range(len(resolved)):
            for j in range(i + 1, len(resolved)):
                if not _disjoint(resolved[i], resolved[j]):
                    self.refuse("oneOf", path, f"branches {i} and {j} may both match, so "
                                "exactly-one cannot be enforced; use anyOf, or make them "
                                "disjoint (a distinct const on a required property)")
                    return
        if "anyOf" not in schema:
            schema["anyOf"] = schema.pop("oneOf")  # disjoint branches: anyOf is the same set

    def _deref(self, schema: Any, path: str) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 16:
            target = self.resolve(schema["$ref"], path)
            schema = {**(target or {}), **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def check_unique(self, schema: dict[str, Any], path: str) -> None:
        if not schema.get("uniqueItems"):
            schema.pop("uniqueItems", None)
            return
        items = self._deref(schema.get("items", {}), path)
        values = _finite_values(items)
        need = schema.get("minItems", 0)
        if values is not None and len(values) < need:
            self.refuse("uniqueItems", path, f"minItems {need} distinct items, but the items "
                        f"allow only {len(values)} values")
            return
        if values is not None and schema.get("maxItems", len(values) + 1) > len(values):
            schema["maxItems"] = len(values)
        self.post.add("uniqueItems")


def grammar_regex(pattern: str) -> str:
    """`pattern` with each optional group ``(X)?`` spelled ``(X|)``: the same language.

    xgrammar 0.2.9 compiles a JSON-string pattern wrongly when an optional group ends in a
    repetition (``^[0-5][0-9](b[0-9]+)?Z$`` accepts "4233Z"); the ``|)`` spelling is exact."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern[i:i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i:i + 1] == "]":  # a literal ']' first in the class
                out.append("]")
                i += 1
            continue
        elif c == ")" and pattern[i + 1:i + 2] == "?" and pattern[i + 2:i + 3] not in ("?", "+"):
            out.append("|)")
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _finite_values(schema: Any) -> list[Any] | None:
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    if _types(schema) == {"boolean"}:
        return [True, False]
    if _types(schema) == {"null"}:
        return [None]
    return None


def _type_set(schema: dict[str, Any]) -> set[str] | None:
    types = _types(schema)
    values = _finite_values(schema)
    if values is not None:
        return {_json_type(v) for v in values}
    if types and "number" in types:
        types = types | {"integer"}
    return types


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}[type(value)]


def _disjoint(a: Any, b: Any) -> bool:
    """True when no JSON value can match both schemas (a sufficient check, not exact)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    ta, tb = _type_set(a), _type_set(b)
    if ta is not None and tb is not None and not ta & tb:
        return True
    va, vb = _finite_values(a), _finite_values(b)
    if va is not None and vb is not None:
        return not any(x == y for x in va for y in vb)
    pa, pb = a.get("properties") or {}, b.get("properties") or {}
    shared = set(a.get("required") or []) & set(b.get("required") or []) & set(pa) & set(pb)
    for name in shared:
        xa, xb = _finite_values(pa[name]), _finite_values(pb[name])
        if xa is not None and xb is not None and not any(x == y for x in xa for y in xb):
            return True
    return False


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    return not any(validator(schema).iter_errors(value))


@lru_cache(maxsize=256)
def _regex_compiles(pattern: str) -> None:
    import xgrammar as xgr

    xgr.Grammar.from_regex(pattern)


# ------------------------------------------------------------------ validation
def _check_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", value):
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _check_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return _check_datetime("2000-01-01T" + value)


def _check_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(
        re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]*", value))


def _check_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    labels = value.split(".")
    return len(value) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels)


def _check_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36 and all(value[i] == "-" for i in (8, 13, 18, 23))


def _check_ip(version: int):
    def check(value: object) -> bool:
        if not isinstance(value, str):
            return True
        try:
            return ipaddress.ip_address(value).version == version
        except ValueError:
            return False
    return check


@lru_cache(maxsize=1)
def format_checker() -> Any:
    """jsonschema's FormatChecker, with checks for the formats it leaves to optional
    packages (date-time, time, uri, hostname): every shaped format is really checked."""
    import jsonschema

    checker = jsonschema.FormatChecker()
    for name, fn in (("date-time", _check_datetime), ("time", _check_time),
                     ("uri", _check_uri), ("hostname", _check_hostname),
                     ("uuid", _check_uuid), ("ipv4", _check_ip(4)), ("ipv6", _check_ip(6))):
        checker.checks(name)(fn)
    return checker


def validator(schema: dict[str, Any]) -> Any:
    return _validator(json.dumps(schema, sort_keys=True))


@lru_cache(maxsize=128)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema, format_checker=format_checker())


def check_schema(schema: Any) -> None:
    """Refuse a value that is not a JSON Schema at all."""
    import jsonschema

    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(
            f"json_schema must be a dict, got {type(schema).__name__}", keyword="", path="")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        parts = [str(p) for p in exc.path]
        keyword = next((p for p in reversed(parts) if not p.isdigit()), "")
        path = "/" + "/".join(parts[:-1]) if len(parts) > 1 else ""
        raise UnsupportedSchemaError(
            f"not a valid JSON Schema: keyword {keyword!r} at {path or 'the root'}: "
            f"{exc.message}", keyword=keyword, path=path) from exc


def prepare_schema(schema: dict[str, Any], strict: bool = True) -> PreparedSchema:
    """Classify every keyword of `schema` and build the schema the grammar compiles.

    With `strict` (structured output), a keyword that can be neither enforced nor
    post-checked raises :class:`UnsupportedSchemaError` naming it; without (tool
    parameters, which are not validated), such keywords are left to the grammar."""
    # Key order is kept: it is the order the grammar emits properties in.
    key = json.dumps(schema)
    return _prepare(key, strict)


@lru_cache(maxsize=128)
def _prepare(schema_json: str, strict: bool) -> PreparedSchema:
    schema = json.loads(schema_json)
    if strict:
        check_schema(schema)
    prep = _Preparer(schema, strict)
    grammar = prep.walk(copy.deepcopy(schema), "")
    return PreparedSchema(schema, grammar, frozenset(prep.post))


def classify(schema: Any) -> dict[str, set[str]]:
    """The keywords used in `schema` by class (for reports): enforced, rewritten,
    post_checked, refused, annotation (unknown keywords count as annotations)."""
    found: dict[str, set[str]] = {c: set() for c in ("enforced", "rewritten", "post_checked",
                                                      "refused", "annotation")}

    def visit(node: Any, in_map: bool = False) -> None:
        if isinstance(node, list):
            for v in node:
                visit(v)
        if not isinstance(node, dict):
            return
        for k, v in node.items():
            if in_map:
                visit(v)
                continue
            cls = ("refused" if k in REFUSED else "post_checked" if k in POST_CHECKED
                   else "rewritten" if k in REWRITTEN else "enforced" if k in ENFORCED
                   else "annotation")
            found[cls].add(k)
            if k in _SUBSCHEMA_MAPS or k == "dependentSchemas":
                visit(v, in_map=True)
            elif isinstance(v, dict | list) and k not in ("enum", "const", "examples",
                                                          "default", "required"):
                visit(v)

    visit(schema)
    return found


def dedupe_arrays(value: Any, errors: list[Any]) -> Any:
    """Drop repeated items from the arrays that failed uniqueItems (first occurrence kept);
    innermost arrays first, so an outer array's indices stay valid."""
    for error in sorted(errors, key=lambda e: -len(e.absolute_path)):
        parent: Any = None
        node = value
        path = list(error.absolute_path)
        for part in path:
            parent, node = node, node[part]
        if not isinstance(node, list):
            continue
        kept: list[Any] = []
        keys: set[str] = set()
        for item in node:
            k = json.dumps(item, sort_keys=True)
            if k not in keys:
                keys.add(k)
                kept.append(item)
        if parent is None:
            value = kept
        else:
            parent[path[-1]] = kept
    return value
