"""bench/compression.py: the billing arithmetic on hand-computed cases, and the replay on a tiny
synthetic corpus (nothing to compress: no saving, all stable; a repeated tool output: cheaper)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from bench import compression as bench

RATES = bench.Rates("test", input=Decimal("3"), cache_read=Decimal("0.3"),
                    cache_write=Decimal("3.75"))
OPENAI = bench.Rates("test", input=Decimal("1.25"), cache_read=Decimal("0.125"),
                     cache_write=Decimal("1.25"))
M = Decimal(1_000_000)


def usd(*terms: tuple[int, str]) -> Decimal:
    return sum((n * Decimal(rate) for n, rate in terms), Decimal(0)) / M


def test_it_bills_anthropic_cache_reads_after_the_first_request_and_writes_the_rest() -> None:
    first = [("s", 600), ("u1", 600)]
    second = [*first, ("a1", 100), ("u2", 300)]
    changed = [("s", 600), ("u1 compressed differently", 600), ("a1", 100), ("u2", 300)]

    bills = bench.anthropic_bills([first, second, changed], RATES)

    assert bills[0] == bench.Bill(usd((1200, "3.75")), 0, 1200)
    assert bills[1] == bench.Bill(usd((1200, "0.3"), (400, "3.75")), 1200, 1600)
    # No earlier request is a prefix of it: no cache entry to read, everything is written again.
    assert bills[2] == bench.Bill(usd((1600, "3.75")), 0, 1600)


def test_it_bills_anthropic_prompts_under_the_minimum_at_the_input_price_and_caches_nothing(
) -> None:
    short = [("s", 500)]
    longer = [*short, ("a1", 100), ("u2", 600)]

    bills = bench.anthropic_bills([short, longer], RATES)

    assert bills[0] == bench.Bill(usd((500, "3")), 0, 500)
    assert bills[1] == bench.Bill(usd((1200, "3.75")), 0, 1200)


def test_it_bills_openai_cached_prefixes_from_1024_tokens_in_steps_of_128() -> None:
    bills = bench.openai_bills([[("s", 2000)], [("s", 2000), ("u", 1000)]], OPENAI)
    assert bills[0] == bench.Bill(usd((2000, "1.25")), 0, 2000)
    # 2,000 common tokens: 1,024 + 7 steps of 128 = 1,920 cached.
    assert bills[1] == bench.Bill(usd((1920, "0.125"), (1080, "1.25")), 1920, 3000)

    short = bench.openai_bills([[("s", 1000)], [("s", 1000), ("u", 500)]], OPENAI)
    assert short[1] == bench.Bill(usd((1500, "1.25")), 0, 1500)


def _corpus(tmp_path: Path, conversations: dict[str, list[dict]]) -> Path:
    for name, messages in conversations.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"source": "test", "license": "MIT", "messages": messages}))
    return tmp_path


def _plain(n: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a careful assistant. " * 60}]
    for i in range(n):
        messages += [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                     {"role": "assistant", "content": f"It is {2 * i}."}]
    return messages


LISTING = "\n".join(f"drwxr-xr-x 2 root root 4096 Nov 23 18:24 directory_{i:03d}"
                    for i in range(60))


def _repeated_tool_output() -> list[dict]:
    return [
        {"role": "system", "content": "You run shell commands for the user. " * 40},
        {"role": "user", "content": "List the files."},
        {"role": "assistant", "content": "ls -l"},
        {"role": "user", "content": LISTING},
        {"role": "assistant", "content": "ls -l again"},
        {"role": "user", "content": LISTING},
        {"role": "assistant", "content": "Done."},
    ]


def test_it_reports_no_saving_and_full_stability_when_nothing_compresses(tmp_path: Path) -> None:
    corpus = bench.load_corpus(_corpus(tmp_path, {"a": _plain(4), "b": _plain(3)}))

    result = bench.run_profile(corpus, "safe", (RATES, OPENAI), rounds=1)

    t = result.total
    assert t.requests == 7
    assert t.tokens_after == t.tokens_before > 0
    assert (t.anthropic_after, t.openai_after) == (t.anthropic_before, t.openai_before)
    assert t.saving("anthropic_before", "anthropic_after") == 0.0
    assert (t.checked, t.stable, t.costlier) == (5, 5, 0)
    assert result.cold_differs == 0
    assert not any(f.input_mutated for f in result.files)
    assert result.targets[1][1] is True  # prefix stability


def test_it_bills_a_repeated_tool_output_cheaper_with_prefixes_kept(tmp_path: Path) -> None:
    corpus = bench.load_corpus(_corpus(tmp_path, {"ls": _repeated_tool_output()}))

    result = bench.run_profile(corpus, "balanced", (RATES, OPENAI), rounds=1)

    t = result.total
    assert t.requests == 3
    assert t.tokens_after < t.tokens_before
    assert t.anthropic_after < t.anthropic_before
    assert t.stable == t.checked == 2
    assert result.cold_differs == 0
    assert result.files[0].recipes.get("repeat-output") == 1


@pytest.mark.django_db
def test_it_prints_json_and_fails_check_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path, {"plain": _plain(3)})
    args = ["--corpus", str(corpus), "--profile", "balanced", "--rounds", "1", "--json"]

    assert bench.main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["models"]["anthropic"]["model"] == bench.ANTHROPIC_MODEL
    (profile,) = doc["profiles"]
    assert profile["total"]["requests"] == 3
    assert profile["targets"][0]["met"] is False  # nothing to save: under 10 %

    assert bench.main([*args, "--check"]) == 1
