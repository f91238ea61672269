"""`make install GPU=...`: the GPU build goes through scripts/gpu_wheel, which takes the known
backends only (the build itself needs the backend's toolkit, which these machines lack)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_make_install_with_gpu_builds_through_the_wheel_script_for_that_card() -> None:
    planned = subprocess.run(
        ["make", "-n", "install", "GPU=cuda", "CUDA_ARCH=90"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "scripts/gpu_wheel .venv/bin/python cuda 90" in planned
    plain = subprocess.run(
        ["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "gpu_wheel" not in plain


def test_an_unknown_backend_is_refused_naming_the_known_ones() -> None:
    done = subprocess.run(
        ["bash", "scripts/gpu_wheel", sys.executable, "rocm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "GPU=rocm is not one of cuda, metal, vulkan, cpu" in done.stderr


def test_the_gpu_wheel_has_a_cache_of_its_own_and_bypasses_pips() -> None:
    script = (ROOT / "scripts" / "gpu_wheel").read_text()
    assert "--no-cache-dir" in script  # pip's cache holds the CPU wheel under the same name
    assert "-DGGML_CUDA=on" in script
    assert "CMAKE_CUDA_ARCHITECTURES=$arch" in script
