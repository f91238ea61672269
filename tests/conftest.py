"""Test layers by folder: tests/unit -> `unit`, tests/integration -> `integration`, tests/e2e -> `e2e`."""

from __future__ import annotations

import pytest

_LAYERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for part in item.path.parts:
            if part in _LAYERS:
                item.add_marker(_LAYERS[part])
    # Fast layers first, browser tests last (a stable sort keeps each layer's own order).
    items.sort(
        key=lambda item: 0 if item.get_closest_marker("unit") else 2 if item.get_closest_marker("e2e") else 1
    )
