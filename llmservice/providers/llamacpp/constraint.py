"""Output constraints as llama.cpp grammars (GBNF)."""

from __future__ import annotations

import functools
import json

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from llmservice.kernel.types import Constraint

# What llama-cpp-python's schema-to-grammar converter enforces, plus annotations that
# constrain nothing. Any other keyword (minimum, multipleOf, uniqueItems, ...) would be
# silently ignored by it, so a schema using one is refused instead.
_ENFORCED = {
    "type",
    "format",
    "$ref",
    "oneOf",
    "anyOf",
    "allOf",
    "const",
    "enum",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "pattern",
    "minLength",
    "maxLength",
    "$defs",
    "definitions",
}
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
}
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'
_SUBSCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SUBSCHEMA_LISTS = {"oneOf", "anyOf", "allOf", "prefixItems"}


@functools.lru_cache(maxsize=64)  # validate() and stream() both ask, and clients repeat schemas
def grammar_for(constraint: Constraint) -> str:
    """The GBNF that admits exactly what `constraint` allows; ValueError if it cannot be built."""
    if constraint.kind == "grammar":
        return constraint.text
    if constraint.kind == "json_object":
        return JSON_GBNF
    try:
        schema = json.loads(constraint.text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    _check_enforceable(schema, "#")
    try:
        grammar = str(json_schema_to_gbnf(constraint.text))
    except Exception as exc:  # the converter raises bare exceptions for schemas it does not support
        raise ValueError(f"unsupported JSON schema: {exc}") from None
    # The converter's string characters admit raw control characters (a newline inside a
    # string), which JSON forbids: llama.cpp's own converter excludes them, as here.
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def _check_enforceable(schema: object, path: str) -> None:
    """Raise ValueError naming the first keyword the grammar would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: a schema must be an object or a boolean")
    for key, value in schema.items():
        if key not in _ENFORCED | _ANNOTATIONS:
            raise ValueError(f"{path}: keyword {key!r} is not enforced by the local engine's grammar")
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                _check_enforceable(sub, f"{path}/{key}/{name}")
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_enforceable(sub, f"{path}/{key}/{i}")
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            _check_enforceable(value, f"{path}/{key}")
