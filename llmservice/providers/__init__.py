"""Provider backends: each folder here is one provider (or a family), behind `Provider`.

A provider's folder declares its kinds in `ENTRIES` (its `__init__`, which imports no SDK):
the settings section, the variables it documents, whether it bills per token, and a
factory. `entries()` gathers the built-in folders in the order below, then any
third-party provider registered under the entry point group `llmservice.providers`
(an entry point names a `ProviderEntry` or a sequence of them). The service's settings,
pricing, registry and docs read them; nothing else names a kind.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Iterable, Mapping

from llmservice.kernel.provider import ProviderEntry
from llmservice.kernel.settings import SettingsError

ENTRY_POINT_GROUP = "llmservice.providers"

# The built-in folders that come first, in this order (the local engine, then the OpenAI
# family); any other folder holding ENTRIES follows in name order.
_FIRST = ("llamacpp", "openai_family")


@functools.cache
def entries() -> Mapping[str, ProviderEntry]:
    """Every provider kind this installation knows, by kind."""
    found: dict[str, ProviderEntry] = {}
    for origin, entry in (*_built_in(), *_plugged_in()):
        if not isinstance(entry, ProviderEntry):
            raise SettingsError(f"{origin}: {entry!r} is not a ProviderEntry")
        if entry.kind in found:
            raise SettingsError(f"{origin}: provider kind {entry.kind!r} is declared twice")
        found[entry.kind] = entry
    return found


def _built_in() -> Iterable[tuple[str, ProviderEntry]]:
    names = sorted(
        (info.name for info in pkgutil.iter_modules(__path__) if info.ispkg),
        key=lambda name: (_FIRST.index(name) if name in _FIRST else len(_FIRST), name),
    )
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        for entry in getattr(module, "ENTRIES", ()):  # remote/ holds what remote backends share
            yield module.__name__, entry


def _plugged_in() -> Iterable[tuple[str, ProviderEntry]]:
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception as exc:
            raise SettingsError(f"entry point {point.name} ({point.value}): {exc}") from None
        for entry in loaded if isinstance(loaded, list | tuple) else (loaded,):
            yield f"entry point {point.name}", entry


__all__ = ["ENTRY_POINT_GROUP", "ProviderEntry", "entries"]
