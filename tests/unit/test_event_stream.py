"""Event-stream frames keep their JSON on one line, for readers that split as str.splitlines."""

from __future__ import annotations

import json

from llmservice.rest.event_stream import line_safe
from llmservice.rest.openai.responses import _Events

TRICKY = 'a "quoted" ☃\u2028b\x85c\u2029d\n'


def test_line_safe_escapes_what_splitlines_splits_on_and_keeps_the_value() -> None:
    raw = json.dumps({"text": TRICKY}, ensure_ascii=False).encode()
    safe = line_safe(raw)
    assert len(safe.decode().splitlines()) == 1
    assert json.loads(safe) == {"text": TRICKY}
    assert "☃" in safe.decode()  # the rest stays as it was
    ascii_only = b'{"text":"plain"}'
    assert line_safe(ascii_only) is ascii_only


def test_a_responses_event_is_two_lines_whatever_its_text() -> None:
    frame = _Events().frame("response.output_text.delta", delta=TRICKY).decode()
    event, data, *rest = frame.splitlines()
    assert (event, rest) == ("event: response.output_text.delta", [""])
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "response.output_text.delta",
        "sequence_number": 0,
        "delta": TRICKY,
    }
