"""A native llama-server for side-by-side benchmarks, built from the llama.cpp sources
that the installed llama-cpp-python vendors (its sdist), in a cache outside the repo.

`python -m bench.llama_server` builds it (about 10 minutes on 2 cores the first time)
and prints the binary's path.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "llmservice" / "bench"


def binary() -> Path:
    """Path of llama-server, building it on first use."""
    version = importlib.metadata.version("llama_cpp_python")
    root = CACHE / f"llama-cpp-python-{version}"
    server = root / "build" / "bin" / "llama-server"
    if server.is_file():
        return server
    sources = _sources(version, root)
    build = root / "build"
    flags = [
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    _run(["cmake", "-S", str(sources), "-B", str(build), *flags])
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 1)])
    return server


def _sources(version: str, root: Path) -> Path:
    vendored = root / "src" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if vendored.is_dir():
        return vendored
    download = root / "sdist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            str(download),
            f"llama-cpp-python=={version}",
        ]
    )
    [archive] = download.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(root / "src", filter="data")
    shutil.rmtree(download)
    return vendored


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True)


if __name__ == "__main__":
    print(binary())
