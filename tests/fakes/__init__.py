"""Each provider's wire format, written once for tests and bench/: one module per provider.

`tests/fakeprovider.py` (the faithful HTTP server the tests run against) and
`bench/fastprovider.py` (the benchmark's bare upstream) both answer from these modules. A new
provider is one more module here and one more entry in WIRES.
"""

from __future__ import annotations

from tests.fakes import anthropic, openai
from tests.fakes.wire import Wire

WIRES: dict[str, Wire] = {"openai": openai.WIRE, "anthropic": anthropic.WIRE}

# Answers whatever no other provider claims: its own routes (/v1/models is both OpenAI's and,
# with the anthropic-version header, Anthropic's) and unknown paths, with 404s in its shape.
DEFAULT = openai.WIRE


def wire_for(path: str, headers: dict[str, str]) -> Wire:
    """The provider a request is for: the one that claims its path, else DEFAULT."""
    for wire in WIRES.values():
        if wire is not DEFAULT and wire.claims(path, headers):
            return wire
    return DEFAULT
