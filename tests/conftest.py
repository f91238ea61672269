"""Test layers by folder: tests/unit -> `unit`, tests/integration -> `integration`,
tests/faults -> `faults`, tests/e2e -> `e2e`; they run in that order."""

from __future__ import annotations

import pytest

_LAYERS = {
    "unit": pytest.mark.unit,
    "integration": pytest.mark.integration,
    "faults": pytest.mark.faults,
    "e2e": pytest.mark.e2e,
}
_ORDER = {name: rank for rank, name in enumerate(_LAYERS)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for part in item.path.parts:
            if part in _LAYERS:
                item.add_marker(_LAYERS[part])
    # Fast layers first, the fault suite after integration, browser tests last (a stable
    # sort keeps each layer's own order); a test outside every layer folder runs with integration.
    items.sort(
        key=lambda item: next(
            (rank for name, rank in _ORDER.items() if item.get_closest_marker(name)), _ORDER["integration"]
        )
    )
