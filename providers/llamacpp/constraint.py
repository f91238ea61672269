"""Output constraints as llama.cpp grammars (GBNF)."""

from __future__ import annotations

import json

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from llmservice.types import Constraint


def grammar_for(constraint: Constraint) -> str:
    """The GBNF that admits exactly what `constraint` allows; ValueError if it cannot be built."""
    if constraint.kind == "grammar":
        return constraint.text
    if constraint.kind == "json_object":
        return JSON_GBNF
    try:
        json.loads(constraint.text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    try:
        return str(json_schema_to_gbnf(constraint.text))
    except Exception as exc:  # the converter raises bare exceptions for schemas it does not support
        raise ValueError(f"unsupported JSON schema: {exc}") from None
