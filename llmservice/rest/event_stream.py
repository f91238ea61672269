"""Server-sent events: JSON that stays on the one `data:` line it is written on."""

from __future__ import annotations

# JSON may carry U+0085, U+2028 and U+2029 unescaped, but a reader that splits an event
# stream into lines as str.splitlines does (httpx's aiter_lines does) would cut the event.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def line_safe(data: bytes) -> bytes:
    """UTF-8 JSON with the line breaks beyond \\r and \\n escaped, as JSON allows."""
    if data.isascii():
        return data
    for raw, escaped in _LINE_BREAKS:
        data = data.replace(raw, escaped)
    return data
