"""The SQLite embedding cache: keys, persistence, counters, and a damaged file skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmservice.service.embed_cache import EmbeddingCache, cache_key


def test_the_key_tells_apart_provider_model_length_and_text() -> None:
    keys = {
        cache_key("openai", "m", None, "hi"),
        cache_key("ollama", "m", None, "hi"),
        cache_key("openai", "n", None, "hi"),
        cache_key("openai", "m", 4, "hi"),
        cache_key("openai", "m", None, "hi!"),
        cache_key("openai", "m", None, "hi"),
    }
    assert len(keys) == 5
    # parts cannot run into each other: ("ab", "c") is not ("a", "bc")
    assert cache_key("ab", "c", None, "x") != cache_key("a", "bc", None, "x")


async def test_vectors_survive_a_restart_and_hits_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "embeddings.sqlite3"
    key, other = cache_key("p", "m", None, "a"), cache_key("p", "m", None, "b")
    vector = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    async with EmbeddingCache(path) as cache:
        assert await cache.get([key]) == {}
        await cache.put({key: vector})
        assert (cache.hits, cache.misses) == (0, 1)
    async with EmbeddingCache(path) as cache:
        found = await cache.get([key, other])
        assert list(found) == [key]
        assert np.array_equal(found[key], vector)
        assert found[key].dtype == np.float32
        assert (cache.hits, cache.misses) == (1, 1)


async def test_many_keys_at_once(tmp_path: Path) -> None:
    keys = [cache_key("p", "m", None, str(i)) for i in range(1200)]  # more than one SELECT's worth
    async with EmbeddingCache(tmp_path / "e.sqlite3") as cache:
        await cache.put({k: np.full(2, i, dtype=np.float32) for i, k in enumerate(keys)})
        found = await cache.get(keys)
    assert len(found) == 1200
    assert found[keys[1100]][0] == 1100


async def test_a_damaged_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite3"
    path.write_bytes(b"this is not an sqlite database" * 100)
    key = cache_key("p", "m", None, "a")
    async with EmbeddingCache(path) as cache:
        await cache.put({key: np.ones(2, dtype=np.float32)})
        assert await cache.get([key]) == {}
        assert cache.misses == 1
