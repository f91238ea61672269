"""Which request parameter a validation error is about: FastAPI's 422 as a 400 naming it.

Shared by the app's handler (OpenAI's shape) and the Anthropic routes (Anthropic's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from llmservice.rest.errors import APIError, invalid


def validation_error(exc: RequestValidationError) -> APIError:
    """The 400 for `exc`, naming the most specific offending parameter."""
    errors = exc.errors() or [{"loc": ("body",), "msg": "invalid request", "type": ""}]
    found = [(_path(exc.body, e.get("loc", ()), e.get("type") == "missing"), e) for e in errors]
    path, first = max(found, key=lambda f: (f[1].get("type") == "extra_forbidden", len(f[0])))
    if first.get("type") == "extra_forbidden":
        return invalid(_name(path), "is not a parameter this service supports")
    return invalid(_name(path), str(first.get("msg", "invalid")))


def refuse_unknown(req: BaseModel) -> None:
    """A 400 naming the first parameter `req` took in that its model does not declare (the
    request models allow extra keys so that this names them, rather than pydantic's error)."""
    unknown = sorted(req.model_extra or {})
    if unknown:
        raise invalid(unknown[0], "is not a parameter this service supports")


def _path(body: Any, loc: Sequence[Any], missing: bool) -> list[str | int]:
    """The part of `loc` that is a real path into the request body: pydantic puts the
    names of union members (e.g. 'str') into the locations of their errors."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    path: list[str | int] = []
    node = body
    for i, part in enumerate(parts):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
            path.append(part)
        elif missing and i == len(parts) - 1:
            path.append(part)  # the field that is missing
    return path


def _name(path: Sequence[str | int]) -> str:
    """messages[0].content[1].image_url, as OpenAI (and Anthropic) name a parameter."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name or "body"
