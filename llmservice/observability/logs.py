"""Log lines: plain text, JSON lines or key=value, each with its request's id, secrets redacted.

Every line passes through `redact` (the remote backends' own) with every secret the
settings hold, after it is formatted, so a key that reached a message, an argument or a
traceback is masked wherever it came from. Payloads (prompts, replies) go only to the
`llmservice.payloads` logger, which logs only when `logs.payloads` is set, redacted too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from llmservice.kernel.context import REQUEST_ID
from llmservice.kernel.redact import redact

Format = Literal["text", "json", "kv"]
PAYLOADS = logging.getLogger("llmservice.payloads")
_TEXT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = rid
        record.request_tag = f" [{rid}]" if rid else ""
        return True


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.render(record), self._secrets)

    def render(self, record: logging.LogRecord) -> str:
        return super().format(record)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        found: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        rid = getattr(record, "request_id", "")
        if rid:
            found["request_id"] = rid
        found["msg"] = record.getMessage()
        if record.exc_info:
            found["exc"] = self.formatException(record.exc_info)
        return found


class JsonFormatter(_Redacting):
    """One JSON object a line: ts, level, logger, request_id, msg, exc."""

    def render(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), ensure_ascii=False, default=str)


class KeyValueFormatter(_Redacting):
    """ts=... level=INFO logger=... request_id=... msg="..." (logfmt)."""

    def render(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt(str(v))}" for k, v in self.fields(record).items())


class TextFormatter(_Redacting):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(secrets, _TEXT)


def _logfmt(value: str) -> str:
    if value and not any(c in value for c in ' ="\n\\'):
        return value
    return json.dumps(value, ensure_ascii=False)


_FORMATTERS: dict[str, type[_Redacting]] = {"json": JsonFormatter, "kv": KeyValueFormatter}


def formatter(fmt: Format, secrets: Iterable[str]) -> logging.Formatter:
    cls = _FORMATTERS.get(fmt)
    return cls(secrets) if cls else TextFormatter(secrets)


def configure_logging(
    level: str | int, fmt: Format = "text", secrets: Iterable[str] = (), *, payloads: bool = False
) -> logging.Handler:
    """One stderr handler on the root logger (replacing any this function installed before)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_llmservice", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler._llmservice = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(fmt, secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every upstream request at INFO; the usage line (service.limits.usage) already
    # says what each call did, so those lines show only when debugging.
    logging.getLogger("httpx").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    enable_payloads(payloads)
    return handler


def enable_payloads(on: bool) -> None:
    """Payload lines are DEBUG records of their own logger: on, it logs them whatever the level."""
    PAYLOADS.setLevel(logging.DEBUG if on else logging.CRITICAL + 1)


enable_payloads(False)  # off until configured: a payload must never log by accident


def secrets_of(settings: BaseModel) -> list[str]:
    """Every secret in a settings tree: SecretStr values and passwords in URLs (redis_url)."""
    return sorted(set(_secrets(settings)))


def _secrets(node: object) -> Iterator[str]:
    if isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _secrets(getattr(node, name))
    elif isinstance(node, dict):
        for value in node.values():
            yield from _secrets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _secrets(value)
    elif isinstance(node, str) and "://" in node:
        try:
            password = urlsplit(node).password
        except ValueError:
            password = None
        if password:
            yield password
