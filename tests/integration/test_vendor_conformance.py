"""Every remote provider against its vendor's own recorded traffic (tests/vendors).

The fixtures are replies, streams and error bodies the vendors or their official SDKs
recorded; the replay server answers with them byte for byte, and refuses, in the vendor's
words, a request the vendor itself would refuse. The case tables are in each vendor's
package; this file runs them and checks that each vendor covers the whole suite.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from ..vendors.suite import Case, Vendor, check, run

KINDS = ["openai", "openai_compatible", "azure_openai", "anthropic", "aws_bedrock", "watsonx", "ollama"]


def _vendor(kind: str) -> Vendor | None:
    try:
        module = importlib.import_module(f"tests.vendors.{kind}")
    except ImportError:  # an optional extra that is not installed (botocore for Bedrock)
        return None
    return module.VENDOR  # type: ignore[no-any-return]


VENDORS = [v for v in (_vendor(k) for k in KINDS) if v is not None]
CASES = [pytest.param(v, c, id=f"{v.kind}-{c.id}") for v in VENDORS for c in v.cases]


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bedrock's credentials from the environment only: no profile files, no metadata service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-the-replay")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("vendor", "case"), CASES)
async def test_recorded_traffic(vendor: Vendor, case: Case) -> None:
    check(case, await run(vendor, case))


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.kind)
def test_each_vendor_covers_the_whole_suite(vendor: Vendor) -> None:
    assert vendor.missing() == []
    assert all(reason.strip() for reason in vendor.wire.unrecorded.values())


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.kind)
def test_every_fixture_names_its_source_and_is_used(vendor: Vendor) -> None:
    sharing = [v for v in VENDORS if v.directory == vendor.directory]  # openai_compatible: OpenAI's
    used = {name for v in sharing for case in v.cases for name in case.fixtures}
    files = {p.stem for p in (vendor.directory / "fixtures").glob("*.json")}
    assert files - used == set(), "fixtures no case uses"
    assert used - files == set(), "cases naming fixtures that are not there"
    readme = (vendor.directory / "README.md").read_text()
    assert "Source" in readme or "source" in readme


def test_every_remote_provider_has_a_vendor() -> None:
    from llmservice.providers import entries

    remote = {kind for kind, entry in entries().items() if not entry.local}
    # `grpc` has no vendor: its backend is another llmservice, real in test_grpc_backend.py
    assert remote - {"grpc"} <= set(KINDS)
    assert {v.kind for v in VENDORS} >= set(KINDS) - {"aws_bedrock"}  # botocore is the `bedrock` extra
