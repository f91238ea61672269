"""announce.*: a service registering itself with a gateway says where it is, under a name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmservice.app import announced_target
from llmservice.kernel.settings import SettingsError
from llmservice.service.settings import Settings


def settings(**tree: object) -> Settings:
    return Settings.model_validate(tree)


def test_announcing_needs_the_name_to_register_under() -> None:
    with pytest.raises(ValidationError, match=r"announce\.name"):
        settings(announce={"to": "10.0.0.1:50051"})


def test_the_target_announced_is_the_setting_else_our_own_address() -> None:
    named = settings(announce={"to": "10.0.0.1:50051", "name": "gpu", "target": "10.0.0.9:7000"})
    assert announced_target(named, 50051) == "10.0.0.9:7000"
    own = settings(server={"host": "10.0.0.9"}, announce={"to": "10.0.0.1:50051", "name": "gpu"})
    assert announced_target(own, 50052) == "10.0.0.9:50052"
    v6 = settings(server={"host": "fd00::9"}, announce={"to": "10.0.0.1:50051", "name": "gpu"})
    assert announced_target(v6, 50052) == "[fd00::9]:50052"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_host_is_no_address_to_announce(host: str) -> None:
    wildcard = settings(server={"host": host}, announce={"to": "10.0.0.1:50051", "name": "gpu"})
    with pytest.raises(SettingsError, match=r"announce\.target"):
        announced_target(wildcard, 50051)
