"""Regenerate telemetry/data/pricing_catalog.json from LiteLLM's price list.

A maintainer step, never run by the proxy:

    python -m telemetry.build_catalog path/to/model_prices_and_context_window.json [--out PATH]

Take the JSON from a LiteLLM release (the wheel ships it as
litellm/model_prices_and_context_window_backup.json), put the release in SOURCE below, then
review the diff of the generated file before committing it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter
from pathlib import Path

from telemetry.pricing import CATALOG_PATH, PricingError, parse_litellm

SOURCE = "LiteLLM model_prices_and_context_window_backup.json (litellm 1.109.1, MIT License)"
# Models TokenPak users run most; a catalog without them would price them at the default.
REQUIRED = (
    "claude-sonnet-4-6",
    "claude-sonnet-5",
    "claude-opus-4-7",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "gpt-5",
    "gpt-5.1",
    "gpt-5.2",
    "gpt-5.4",
    "gpt-5.5",
    "gpt-4o",
    "gpt-4o-mini",
)


def build(litellm: dict, generated: str) -> dict:
    return {
        "source": SOURCE,
        "unit": "USD per 1M tokens",
        "generated": generated,
        "models": parse_litellm(litellm),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telemetry.build_catalog", description=__doc__)
    parser.add_argument("litellm_json", type=Path, help="LiteLLM model price list (JSON)")
    parser.add_argument("--out", type=Path, default=CATALOG_PATH, help=f"default: {CATALOG_PATH}")
    args = parser.parse_args(argv)
    try:
        litellm = json.loads(args.litellm_json.read_text(encoding="utf-8"))
        if not isinstance(litellm, dict):
            raise PricingError("top level is not a JSON object")
        catalog = build(litellm, datetime.datetime.now(datetime.UTC).date().isoformat())
    except (OSError, ValueError) as e:
        print(f"build_catalog: {args.litellm_json}: {e}", file=sys.stderr)
        return 1
    # parse_litellm sorts models and fixes field order, keeping the committed diffs reviewable.
    text = json.dumps(catalog, indent=2, ensure_ascii=False) + "\n"
    args.out.write_text(text, encoding="utf-8")
    models = catalog["models"]
    counts = Counter(entry["provider"] for entry in models.values())
    summary = ", ".join(f"{provider} {n}" for provider, n in sorted(counts.items()))
    print(f"build_catalog: {len(models)} models ({summary}) written to {args.out}")
    missing = [name for name in REQUIRED if name not in models]
    if missing:
        print(f"build_catalog: warning: not in the source: {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
