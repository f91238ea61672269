"""A persistent embedding cache: SQLite, keyed by SHA-256 of provider, model, length and input.

The connection lives on one thread of its own (sqlite3 connections belong to the thread
that opened them), so the event loop never waits on the disk. A cache that fails (a full
disk, a damaged file) is logged and skipped: the provider answers instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import numpy as np

from llmservice.kernel.embedding import Vector

log = logging.getLogger(__name__)

FILE_NAME = "embeddings.sqlite3"
_SCHEMA = "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
A = TypeVar("A")
T = TypeVar("T")
_CHUNK = 500  # keys per SELECT: below SQLite's limit on bound parameters


def cache_key(provider: str, model: str, dimensions: int | None, text: str) -> bytes:
    """SHA-256 of what decides a vector; JSON keeps the parts from running into each other."""
    return hashlib.sha256(json.dumps([provider, model, dimensions, text]).encode()).digest()


class EmbeddingCache:
    """Vectors by key; `hits` and `misses` count inputs looked up since start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hits = 0
        self.misses = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embed-cache")
        self._db: sqlite3.Connection | None = None

    async def get(self, keys: Sequence[bytes]) -> dict[bytes, Vector]:
        """The vectors found for `keys`; counts a hit or a miss for each key."""
        try:
            found = await self._run(self._select, list(keys))
        except sqlite3.Error as exc:
            log.warning("embedding cache %s unreadable, skipped: %s", self.path, exc)
            found = {}
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    async def put(self, vectors: Mapping[bytes, Vector]) -> None:
        try:
            await self._run(self._insert, dict(vectors))
        except sqlite3.Error as exc:
            log.warning("embedding cache %s unwritable, skipped: %s", self.path, exc)

    async def _run(self, fn: Callable[[A], T], arg: A) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, arg)

    # The cache's own thread from here on.

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10)  # other workers may write the same file
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def _select(self, keys: list[bytes]) -> dict[bytes, Vector]:
        db, found = self._connection(), {}
        for at in range(0, len(keys), _CHUNK):
            chunk = keys[at : at + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, blob in db.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk):
                found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def _insert(self, vectors: dict[bytes, Vector]) -> None:
        db = self._connection()
        rows = [(k, np.asarray(v, dtype="<f4").tobytes()) for k, v in vectors.items()]
        with db:
            db.executemany("INSERT OR REPLACE INTO embeddings (key, vector) VALUES (?, ?)", rows)

    def _close(self, _: None) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._run(self._close, None)
        self._executor.shutdown()
