"""`serve` freezes what is alive once it has started (server.gc_freeze), so that full garbage
collections, which would walk every module, setting and app object, no longer pause requests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from llmservice.app import freeze_what_started
from llmservice.service.settings import Settings


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # what this test froze goes back to the collector


def test_what_is_alive_once_started_is_out_of_the_collectors_sight(unfrozen: None) -> None:
    kept = [[i] for i in range(1000)]  # lists: objects the collector tracks
    freeze_what_started()
    assert gc.get_freeze_count() >= len(kept)
    collectable = {id(o) for o in gc.get_objects()}
    assert not any(id(k) in collectable for k in kept)


def test_it_is_on_by_default_and_can_be_turned_off() -> None:
    assert Settings().server.gc_freeze is True
    assert Settings.model_validate({"server": {"gc_freeze": False}}).server.gc_freeze is False
