"""Browser tests: Playwright driving Debian's chromium, headless, against the shim on a free port.

`make test` installs chromium (apt) and Playwright (pyproject's dev extra). A machine that
cannot run a browser skips this layer only, saying why; screenshots of the main states go
to test-artifacts/.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("browser tests skipped: no chromium on this machine (`make test` installs Debian's with apt)")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    playwright_api = pytest.importorskip(
        "playwright.async_api",
        reason="browser tests skipped: Playwright is not installed (pip install -e .[dev])",
    )
    executable = _chromium()
    async with playwright_api.async_playwright() as p:
        try:
            browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        except Exception as exc:  # a machine that cannot start a browser at all
            pytest.skip(f"browser tests skipped: chromium at {executable} did not start ({exc})")
        yield browser
        await browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
