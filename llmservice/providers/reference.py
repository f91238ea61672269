"""The providers' reference, written from their entries: the README's table of providers,
docs/providers.md, and `llmservice providers` (which lists third-party ones as well)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmservice.kernel.provider import ProviderEntry, Wire
from llmservice.kernel.settings import env_name, nested_env_name

HEADER = """# Providers

Written from the providers' own entries (`llmservice/providers/*/__init__.py`) by
`llmservice providers --markdown`; a test keeps it current. `LLM_PROVIDER` picks the
default provider; every other remote provider whose required settings are present is
served too. Each setting can be given in `llm.toml` (its section is the provider's kind),
as the variable shown, or with `--set kind.key=value`.
"""


def variable(entry: ProviderEntry, key: str) -> str:
    """The variable that sets `key` of `entry`'s section: its documented one, else the generic one."""
    return env_name((entry.kind, key), {name: (entry.kind, k) for name, k in entry.env.items()})


def required(entry: ProviderEntry) -> list[str]:
    """The keys its section needs before the provider can run."""
    return entry.settings().missing()


def summary(entries: Iterable[ProviderEntry]) -> str:
    """One row per kind: what it talks to, and its variables (required ones in bold)."""
    rows = ["| provider | what it talks to | variables (required in bold) |", "|---|---|---|"]
    for entry in entries:
        needed = required(entry)
        keys = list(entry.env.values()) or needed
        names = [
            f"**`{variable(entry, key)}`**" if key in needed else f"`{variable(entry, key)}`" for key in keys
        ]
        if not entry.env:
            names.append(f"`{nested_env_name((entry.kind,))}__*`")
        what = entry.title + (f" (`pip install 'llmservice[{entry.extra}]'`)" if entry.extra else "")
        rows.append(f"| `{entry.kind}` | {what} | {', '.join(names)} |")
    return "\n".join(rows) + "\n"


def reference(entries: Iterable[ProviderEntry]) -> str:
    """docs/providers.md: the summary, then every setting of every kind."""
    entries = list(entries)
    parts = [HEADER, "\n", summary(entries)]
    for entry in entries:
        facts = ["in-process: served only as the default" if entry.local else "remote"]
        if entry.paid:
            facts.append("bills per token (price it under `[pricing]`)")
        if entry.extra:
            facts.append(f"needs the `{entry.extra}` extra")
        parts.append(f"\n## `{entry.kind}`: {entry.title}\n\n{'; '.join(facts)}.\n")
        parts.append(_settings_table(entry, entry.settings, ()))
        if entry.wire is not None:
            parts.append(_wire(entry.wire))
    return "".join(parts)


def _wire(wire: Wire) -> str:
    """A remote provider's wire facts: fields sent and refused, finish reasons, errors."""
    parts = ["\n### On the wire\n"]
    tables = [
        ("request field", "how the vendor gets it", wire.honoured),
        ("refused field", "why (INVALID_ARGUMENT)", wire.refused),
        ("vendor finish reason", "finish reason here", {k: f"`{v}`" for k, v in wire.finish.items()}),
        ("vendor error", "what the caller gets", wire.errors),
        ("not recorded offline", "why", wire.unrecorded),
    ]
    for head, what, rows in tables:
        if rows:
            lines = [f"| {head} | {what} |", "|---|---|"]
            lines += [f"| `{k}` | {_cell(v)} |" for k, v in rows.items()]
            parts.append("\n" + "\n".join(lines) + "\n")
    return "".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _settings_table(entry: ProviderEntry, model: type[BaseModel], prefix: tuple[str, ...]) -> str:
    needed = required(entry)
    rows = ["", "| key | variable | default | what it is |", "|---|---|---|---|"]
    nested: list[str] = []
    for key, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append(_settings_table(entry, annotation, (*prefix, key)))
            continue
        path = ".".join((*prefix, key))
        name = variable(entry, key) if not prefix else nested_env_name((entry.kind, *prefix, key))
        value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        default = "required" if key in needed and not prefix else _default(value)
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{path}` | `{name}` | {default} | {description} |")
    return "\n".join(rows) + "\n" + "".join(nested)


def _default(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if value is None or value == "" or value == {} or value == []:
        return "unset"
    if isinstance(value, Path) and value.is_relative_to(Path.home()):
        value = "~" / value.relative_to(Path.home())  # the same on every machine
    text = str(value).replace("|", "\\|")
    return f"`{text}`" if len(text) < 60 else "(long)"
