"""The provider contract (tests/contract.py), run once per provider."""

from __future__ import annotations

from tests import fakes
from tests.contract import PROVIDERS, ProviderContract
from tests.contract_clients import CLIENTS


class TestProviderContract(ProviderContract):
    """Every test of ProviderContract, for each provider in PROVIDERS."""


def test_it_has_a_client_and_a_wire_for_every_provider() -> None:
    assert set(CLIENTS) == set(PROVIDERS) == set(fakes.WIRES)
    assert all(CLIENTS[name].wire is fakes.WIRES[name] for name in PROVIDERS)
