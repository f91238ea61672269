"""The generated code is current, and the contract passes buf lint."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make test` (npm ci)")


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BUF), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    result = buf("generate", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    fresh, committed = tmp_path / "llmservice" / "_pb", ROOT / "llmservice" / "_pb"
    stale = _differences(filecmp.dircmp(fresh, committed, ignore=["__pycache__"]))
    assert not stale, f"run `make proto`: {stale}"


def _differences(cmp: filecmp.dircmp[str]) -> list[str]:
    found = [*cmp.left_only, *cmp.right_only, *cmp.diff_files]
    for sub in cmp.subdirs.values():
        found += _differences(sub)
    return found
