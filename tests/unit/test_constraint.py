"""JSON constraints as grammars: what llama.cpp will hold the output to."""

from __future__ import annotations

import json

from llmservice.kernel.types import Constraint
from llmservice.providers.llamacpp.constraint import grammar_for


def test_a_schemas_strings_admit_no_raw_control_characters() -> None:
    """JSON forbids a raw newline inside a string; the converter's own rule allowed one, and
    the bundled model wrote one, so the reply was not JSON."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    grammar = grammar_for(Constraint("json_schema", json.dumps(schema)))
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert char.startswith(r'char ::= [^"\\\x7F\x00-\x1F] |')
