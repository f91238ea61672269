"""A JSON body parsed and checked in one pass, for routes that read it themselves.

FastAPI's own body handling decodes the JSON and then validates it in Python; pydantic's
`model_validate_json` does both at once. Errors come out as FastAPI's own, so the app's
handler answers them as it answers any other (a 400 naming the parameter).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model], raw: bytes) -> Model:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=_json_or_none(raw)) from None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        return None
