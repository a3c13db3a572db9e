"""Compression on real agent conversations: tokens, billed input cost, prefix stability, speed.

    .venv/bin/python bench/compression.py [--profile P] [--corpus DIR] [--rounds N] [--json]
                                          [--recipes DIR] [--check]

Replays every conversation in ../shared/corpus (next to the repository) in order, as the agent
sent it: request k is the history up to the k-th assistant turn, so every request re-sends the
previous one plus the new turns. Each request goes through proxy.compression.compress() as the
proxy runs it (memoised per prefix) for the profiles safe, balanced and aggressive (or the one
--profile names); the uncompressed requests (profile off) are the baseline of every figure.

Per file and in total it prints:

- tokens of the messages' text before → after compression, over all requests (o200k_base, the
  OpenAI model's own tokenizer), and the saving on the tokens that are new in each request;
- billed input cost before → after under Anthropic's prompt cache (claude-sonnet-4-6, counted
  with cl100k_base, TokenPak's approximation of Claude's tokenizer) and OpenAI's (gpt-5.1);
- prefix stability: the share of requests whose compressed messages start with the previous
  request's compressed messages, byte for byte (JSON of each message);
- requests that cost more compressed than uncompressed, under either provider (A/O).

It also checks that compress() leaves the caller's request as it was, and that compressing every
request from scratch gives byte for byte what the memo gave (counted against prefix stability).

Then per profile: throughput (message text of every request, as a proxy receives the whole
history each time, over the time spent in compress()) with the memo as the proxy runs, and cold
(memo cleared before every request: every message compressed from scratch), and the targets.

Billing model, per request, for the compressed requests and the baseline alike (only message
text is counted: no per-message framing, tools or output):

- Anthropic, automatic caching with the breakpoint on the last block, 5-minute TTL never
  lapsing: every request at least ANTHROPIC_MIN_CACHE tokens long writes a cache entry for its
  whole prompt; a later request reads the longest entry whose messages are an exact prefix of
  its own (Anthropic looks back at most 20 blocks from the breakpoint) at cache_read, and pays
  cache_write for the rest. A request under the minimum is not cached: all at the input price.
- OpenAI: the longest run of leading messages identical to an earlier request is cached if at
  least 1,024 tokens, in steps of 128 tokens, at cache_read; the rest at the input price. A
  request counts as costlier only if it is costlier with that prefix cached to the token: where
  a 128-token step falls moves either side's bill by up to 127 tokens at random, and the
  requests that only that made dearer are counted and shown on a line of their own.

Net billed saving = 1 − cost after / cost before. Targets (--check exits 1 when one is missed,
otherwise the exit status is 0): safe only reports; balanced ≥ 10 % and aggressive ≥ 20 % net
saving under both providers; 100 % prefix stability; no request costlier than uncompressed;
≥ 20 MB/s with the memo. Runs in a temporary TOKENPAK_HOME with telemetry off, so only the
shipped recipes apply (plus --recipes DIR, the way compression.recipes_dir adds a user's).

Over 500 lines because it is one report: the replay, its figures and their printing read
together, and a second module would only pass tables between them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORPUS = ROOT.parent / "shared" / "corpus"
PROFILES = ("safe", "balanced", "aggressive")
ANTHROPIC_MODEL = "claude-sonnet-4-6"
OPENAI_MODEL = "gpt-5.1"
ANTHROPIC_ENCODING = "cl100k_base"  # telemetry.tokens.encoding_for(ANTHROPIC_MODEL)
OPENAI_ENCODING = "o200k_base"  # telemetry.tokens.encoding_for(OPENAI_MODEL)
ANTHROPIC_MIN_CACHE = 1024  # shortest cacheable prompt for Claude Sonnet 4.x
ANTHROPIC_LOOKBACK = 20  # blocks before the breakpoint where Anthropic looks for a cache hit
OPENAI_MIN_CACHE = 1024
OPENAI_CACHE_STEP = 128
TARGET_SAVING = {"balanced": 10, "aggressive": 20}  # % net billed saving, both providers
TARGET_MB_S = 20.0
_MTOK = Decimal(1_000_000)

Count = Callable[[str, str], int]


# --- billing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """USD per million tokens: what a model bills for input (from telemetry.pricing.Price)."""

    model: str
    input: Decimal
    cache_read: Decimal
    cache_write: Decimal  # 5 minutes; OpenAI bills no cache writes


@dataclass(frozen=True)
class Bill:
    cost: Decimal  # USD
    cached: int  # tokens read from the cache
    tokens: int


# A request as the billing sees it: one (key, tokens) per message, key = the message's JSON.
Request = list[tuple[str, int]]


def anthropic_bills(requests: Sequence[Request], rates: Rates) -> list[Bill]:
    """Anthropic prompt caching over a conversation's requests, in order (module docstring)."""
    entries: list[tuple[list[str], int]] = []  # (message keys, tokens) of each cache entry
    bills = []
    for request in requests:
        keys = [k for k, _ in request]
        total = sum(n for _, n in request)
        if total < ANTHROPIC_MIN_CACHE:
            bills.append(Bill(total * rates.input / _MTOK, 0, total))
            continue
        read = 0
        for entry, tokens in entries:
            if (tokens > read and len(entry) <= len(keys)
                    and len(keys) - len(entry) <= ANTHROPIC_LOOKBACK
                    and keys[: len(entry)] == entry):
                read = tokens
        cost = (read * rates.cache_read + (total - read) * rates.cache_write) / _MTOK
        bills.append(Bill(cost, read, total))
        entries.append((keys, total))
    return bills


def openai_bills(
    requests: Sequence[Request], rates: Rates, step: int = OPENAI_CACHE_STEP
) -> list[Bill]:
    """OpenAI prompt caching over a conversation's requests, in order (module docstring)."""
    bills = []
    for k, request in enumerate(requests):
        total = sum(n for _, n in request)
        common = 0
        for earlier in requests[:k]:
            tokens = 0
            for (a, n), (b, _) in zip(request, earlier, strict=False):
                if a != b:
                    break
                tokens += n
            common = max(common, tokens)
        cached = 0
        if common >= OPENAI_MIN_CACHE:
            cached = OPENAI_MIN_CACHE + (common - OPENAI_MIN_CACHE) // step * step
        cost = (cached * rates.cache_read + (total - cached) * rates.input) / _MTOK
        bills.append(Bill(cost, cached, total))
    return bills


# --- replay -----------------------------------------------------------------------------------


@dataclass
class Costlier:
    file: str
    request: int  # 1-based
    provider: str
    before: Bill
    after: Bill
    unstable: bool

    @property
    def extra(self) -> Decimal:
        return self.after.cost - self.before.cost

    def describe(self) -> str:
        why = ("prefix changed" if self.unstable else
               f"cache read {self.before.cached:,} → {self.after.cached:,} tokens")
        return (f"{self.file} request {self.request}, {self.provider}: "
                f"${self.before.cost:.6f} → ${self.after.cost:.6f} (+${self.extra:.6f}); "
                f"tokens {self.before.tokens:,} → {self.after.tokens:,}, {why}")


@dataclass
class Tally:
    requests: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    new_before: int = 0  # tokens of messages the previous request did not carry
    new_after: int = 0
    anthropic_before: Decimal = Decimal(0)
    anthropic_after: Decimal = Decimal(0)
    openai_before: Decimal = Decimal(0)
    openai_after: Decimal = Decimal(0)
    checked: int = 0  # requests with a previous request to extend
    stable: int = 0
    costlier_anthropic: int = 0
    costlier_openai: int = 0
    step_only: int = 0  # OpenAI requests dearer only because of where a 128-token step fell
    step_extra: Decimal = Decimal(0)
    bytes: int = 0  # message text of every request, UTF-8

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def costlier(self) -> int:
        return self.costlier_anthropic + self.costlier_openai

    def saving(self, before: str, after: str) -> float:
        b, a = getattr(self, before), getattr(self, after)
        return 100.0 * float(1 - Decimal(a) / Decimal(b)) if b else 0.0

    @property
    def stable_pct(self) -> float:
        return 100.0 * self.stable / self.checked if self.checked else 100.0


@dataclass
class FileResult:
    name: str
    tally: Tally
    unstable: list[str] = field(default_factory=list)  # first divergence per unstable request
    costlier: list[Costlier] = field(default_factory=list)
    recipes: Counter[str] = field(default_factory=Counter)  # hits, each message counted once
    input_mutated: bool = False


def text_of(message: Any) -> str:
    """The text a message carries (string content, or the text parts of a list)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict)
                       and isinstance(p.get("text"), str))
    return ""


def request_ends(messages: list[dict]) -> list[int]:
    """Request k is messages[:ends[k]]: the history up to the k-th assistant turn."""
    return [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i > 0]


def _key(message: Any) -> str:
    return json.dumps(message, sort_keys=True, ensure_ascii=False)


def _fresh(messages: list[dict]) -> dict[str, Any]:
    """A request body parsed afresh, as the proxy gets it: new strings, hashes not yet cached."""
    return json.loads(json.dumps({"model": OPENAI_MODEL, "messages": messages}))


def _counted(keys: list[str], texts: list[str], encoding: str, count: Count) -> Request:
    return [(key, count(text, encoding)) for key, text in zip(keys, texts, strict=True)]


def replay(
    name: str, messages: list[dict], profile: str, rates: tuple[Rates, Rates], count: Count,
    clock: list[float],
) -> FileResult:
    """Every request of one conversation through compress(); clock[0] gains the seconds spent
    in compress()."""
    from proxy import compression

    anthropic_rates, openai_rates = rates
    result = FileResult(name, Tally())
    t = result.tally
    raw_a: list[Request] = []
    raw_o: list[Request] = []
    sent_a: list[Request] = []
    sent_o: list[Request] = []
    previous: list[str] | None = None
    last: Any = None
    for k, end in enumerate(request_ends(messages)):
        payload = _fresh(messages[:end])
        body = json.dumps(payload)
        request = payload["messages"]
        started = time.perf_counter()
        outcome = compression.compress("openai", payload, profile)
        clock[0] += time.perf_counter() - started
        clock.append(time.perf_counter() - started)  # this request's time, for the percentiles
        if json.dumps(payload) != body:
            result.input_mutated = True
        last = outcome
        sent = outcome.payload["messages"]
        keys = [_key(m) for m in sent]
        raw_keys = [_key(m) for m in request]
        texts = [text_of(m) for m in sent]
        raw_texts = [text_of(m) for m in request]
        raw_a.append(_counted(raw_keys, raw_texts, ANTHROPIC_ENCODING, count))
        raw_o.append(_counted(raw_keys, raw_texts, OPENAI_ENCODING, count))
        sent_a.append(_counted(keys, texts, ANTHROPIC_ENCODING, count))
        sent_o.append(_counted(keys, texts, OPENAI_ENCODING, count))
        t.requests += 1
        t.bytes += sum(len(x.encode()) for x in raw_texts)
        t.tokens_before += sum(n for _, n in raw_o[-1])
        t.tokens_after += sum(n for _, n in sent_o[-1])
        carried = len(previous) if previous is not None else 0
        t.new_before += sum(n for _, n in raw_o[-1][carried:])
        t.new_after += sum(n for _, n in sent_o[-1][carried:])
        if previous is not None:
            t.checked += 1
            if keys[: len(previous)] == previous:
                t.stable += 1
            else:
                at = next(i for i, (a, b) in enumerate(zip(keys, previous, strict=False))
                          if a != b)
                result.unstable.append(f"request {k + 1}: message {at} differs from request "
                                       f"{k}'s")
        previous = keys
    if last is not None:
        result.recipes.update(last.recipes)
    for provider, bills, before, after in (
        ("anthropic", anthropic_bills, raw_a, sent_a),
        ("openai", openai_bills, raw_o, sent_o),
    ):
        rate = anthropic_rates if provider == "anthropic" else openai_rates
        b_bills, a_bills = bills(before, rate), bills(after, rate)
        setattr(t, f"{provider}_before", sum((b.cost for b in b_bills), Decimal(0)))
        setattr(t, f"{provider}_after", sum((b.cost for b in a_bills), Decimal(0)))
        # OpenAI caches in 128-token steps: a shorter history can end just below a step and
        # lose up to 127 cached tokens, or just above one and gain them, at random. That is
        # where the step falls, not what compression did (the baseline rounds the same way):
        # the $ columns include it, and a request counts as costlier only if it is costlier
        # with the prefix cached to the token.
        exact = ((openai_bills(before, rate, 1), openai_bills(after, rate, 1))
                 if provider == "openai" else (b_bills, a_bills))
        for k, (b, a) in enumerate(zip(b_bills, a_bills, strict=True)):
            if a.cost > b.cost and exact[1][k].cost <= exact[0][k].cost:
                t.step_only += 1
                t.step_extra += a.cost - b.cost
            if exact[1][k].cost > exact[0][k].cost:
                setattr(t, f"costlier_{provider}", getattr(t, f"costlier_{provider}") + 1)
                unstable = k > 0 and [x for x, _ in after[k][: len(after[k - 1])]] != [
                    x for x, _ in after[k - 1]]
                result.costlier.append(Costlier(name, k + 1, provider, b, a, unstable))
    return result


def load_corpus(directory: Path) -> list[tuple[str, list[dict]]]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise SystemExit(f"no conversations (*.json) in {directory}")
    corpus = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list):
            raise SystemExit(f"{path}: expected {{\"messages\": [...]}}")
        corpus.append((path.stem, messages))
    return corpus


@dataclass
class ProfileResult:
    profile: str
    files: list[FileResult]
    total: Tally
    mb_s: float  # with the memo, as the proxy runs (median of the rounds)
    cold_mb_s: float  # memo cleared before every request
    p50_ms: float  # one request's compress() with the memo: what the request path pays
    p99_ms: float
    cold_differs: int  # requests whose cold result is not what the memo gave
    targets: list[tuple[str, bool | None]]  # (what, met); None: reported only

    @property
    def missed(self) -> list[str]:
        return [what for what, met in self.targets if met is False]


def run_profile(
    corpus: list[tuple[str, list[dict]]], profile: str, rates: tuple[Rates, Rates],
    rounds: int = 5, count: Count | None = None,
) -> ProfileResult:
    from proxy import compression
    from proxy.compression import counting

    count = count or counting.count
    files: list[FileResult] = []
    memo_times: list[float] = []
    per_request: list[float] = []
    for r in range(max(1, rounds)):
        compression.use_recipes(None)  # an empty memo, as a proxy that just started
        clock = [0.0]
        results = [replay(name, messages, profile, rates, count, clock)
                   for name, messages in corpus]
        memo_times.append(clock[0])
        per_request.extend(clock[1:])
        if r == 0:
            files = results
    total = Tally()
    for f in files:
        total.add(f.tally)

    # Cold: every request compressed from scratch; it must give what the memo gave.
    warm = {name: [compression.compress("openai", _fresh(messages[:end]), profile)
                   .payload["messages"] for end in request_ends(messages)]
            for name, messages in corpus}
    cold_times: list[float] = []
    differs = 0
    for r in range(max(1, rounds)):
        seconds = 0.0
        for name, messages in corpus:
            for k, end in enumerate(request_ends(messages)):
                compression.use_recipes(None)
                payload = _fresh(messages[:end])
                started = time.perf_counter()
                outcome = compression.compress("openai", payload, profile)
                seconds += time.perf_counter() - started
                if r == 0 and _key(outcome.payload["messages"]) != _key(warm[name][k]):
                    differs += 1
        cold_times.append(seconds)
    compression.use_recipes(None)

    mb = total.bytes / 1e6
    mb_s = mb / statistics.median(memo_times) if statistics.median(memo_times) else float("inf")
    cold = statistics.median(cold_times)
    cold_mb_s = mb / cold if cold else float("inf")
    targets: list[tuple[str, bool | None]] = []
    goal = TARGET_SAVING.get(profile)
    a_net = total.saving("anthropic_before", "anthropic_after")
    o_net = total.saving("openai_before", "openai_after")
    if goal is None:
        targets.append((f"net saving {a_net:.1f} % / {o_net:.1f} % (report only)", None))
    else:
        targets.append((f"net saving ≥ {goal} % (Anthropic {a_net:.1f} %, OpenAI {o_net:.1f} %)",
                        a_net >= goal and o_net >= goal))
    targets.append((f"prefix stability 100 % ({total.stable_pct:.1f} %)",
                    total.stable == total.checked and not differs))
    targets.append((f"no request costlier (Anthropic {total.costlier_anthropic}, "
                    f"OpenAI {total.costlier_openai})", total.costlier == 0))
    targets.append((f"≥ {TARGET_MB_S:g} MB/s ({mb_s:.1f})", mb_s >= TARGET_MB_S))
    per_request.sort()
    p50 = per_request[len(per_request) // 2] * 1000 if per_request else 0.0
    p99 = per_request[min(len(per_request) - 1, int(len(per_request) * 0.99))] * 1000 \
        if per_request else 0.0
    return ProfileResult(profile, files, total, mb_s, cold_mb_s, p50, p99, differs, targets)


# --- output -----------------------------------------------------------------------------------


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _money(before: Decimal, after: Decimal) -> str:
    return f"{before:>8.4f} → {after:<8.4f}"


def render(result: ProfileResult) -> str:
    w = 40
    head = (f"{'file':<{w}} {'req':>4} {'tokens before → after':>21} {'saved':>6} {'new':>6}  "
            f"{'Anthropic $ before → after':>26} {'net':>6}  {'OpenAI $ before → after':>23} "
            f"{'net':>6} {'stable':>7} {'costlier A/O':>12}")
    lines = [f"== profile {result.profile}", head]

    def row(label: str, t: Tally) -> str:
        return (f"{_short(label, w):<{w}} {t.requests:>4} "
                f"{t.tokens_before:>9,} → {t.tokens_after:<9,} "
                f"{t.saving('tokens_before', 'tokens_after'):>5.1f}% "
                f"{t.saving('new_before', 'new_after'):>5.1f}%  "
                f"{_money(t.anthropic_before, t.anthropic_after):>26} "
                f"{t.saving('anthropic_before', 'anthropic_after'):>5.1f}%  "
                f"{_money(t.openai_before, t.openai_after):>23} "
                f"{t.saving('openai_before', 'openai_after'):>5.1f}% "
                f"{t.stable_pct:>6.1f}% {f'{t.costlier_anthropic}/{t.costlier_openai}':>12}")

    for f in result.files:
        lines.append(row(f.name, f.tally))
    lines.append(row("total", result.total))
    lines.append(f"throughput {result.total.bytes / 1e6:.2f} MB of message text: "
                 f"{result.mb_s:.1f} MB/s with the memo, {result.cold_mb_s:.1f} MB/s cold; "
                 f"per request {result.p50_ms:.2f} ms p50, {result.p99_ms:.2f} ms p99"
                 + (f"; {result.cold_differs} requests compressed differently cold"
                    if result.cold_differs else ""))
    hits: Counter[str] = Counter()
    for f in result.files:
        hits.update(f.recipes)
    if hits:
        lines.append("recipe hits: " + ", ".join(f"{n} {c}" for n, c in hits.most_common()))
    for f in result.files:
        for u in f.unstable[:3]:
            lines.append(f"unstable prefix: {f.name} {u}")
        if len(f.unstable) > 3:
            lines.append(f"unstable prefix: {f.name}: {len(f.unstable) - 3} more")
        if f.input_mutated:
            lines.append(f"compress() changed the caller's messages: {f.name}")
    if result.total.step_only:
        lines.append(f"OpenAI 128-token cache steps: {result.total.step_only} requests cost "
                     f"${result.total.step_extra:.6f} more in all than uncompressed only because "
                     f"their shorter history ended below a step (included in the $ columns; "
                     f"not counted as costlier)")
    for provider in ("anthropic", "openai"):
        costlier = [c for f in result.files for c in f.costlier if c.provider == provider]
        if costlier:
            worst = max(costlier, key=lambda c: c.extra / c.before.cost if c.before.cost else 0)
            lines.append(f"costlier under {provider}: {len(costlier)}; worst: {worst.describe()}")
    lines.append("targets: " + "; ".join(
        f"{what} {'-' if met is None else 'PASS' if met else 'MISS'}"
        for what, met in result.targets))
    return "\n".join(lines)


def as_json(results: list[ProfileResult], rates: tuple[Rates, Rates]) -> str:
    def tally(t: Tally) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(t).items()}
        d.update(tokens_saved_pct=t.saving("tokens_before", "tokens_after"),
                 new_saved_pct=t.saving("new_before", "new_after"),
                 anthropic_net_pct=t.saving("anthropic_before", "anthropic_after"),
                 openai_net_pct=t.saving("openai_before", "openai_after"),
                 stable_pct=t.stable_pct)
        return d

    doc = {
        "models": {
            "anthropic": {**{k: str(v) for k, v in asdict(rates[0]).items()},
                          "encoding": ANTHROPIC_ENCODING},
            "openai": {**{k: str(v) for k, v in asdict(rates[1]).items() if k != "cache_write"},
                       "encoding": OPENAI_ENCODING},
        },
        "profiles": [{
            "profile": r.profile,
            "files": [{"name": f.name, **tally(f.tally), "unstable": f.unstable,
                       "costlier": [c.describe() for c in f.costlier],
                       "recipes": dict(f.recipes), "input_mutated": f.input_mutated}
                      for f in r.files],
            "total": tally(r.total),
            "mb_s": r.mb_s, "cold_mb_s": r.cold_mb_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "cold_differs": r.cold_differs,
            "targets": [{"what": what, "met": met} for what, met in r.targets],
        } for r in results],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


# --- entry point ------------------------------------------------------------------------------


def prices() -> tuple[Rates, Rates]:
    from telemetry import pricing

    out = []
    for model, provider in ((ANTHROPIC_MODEL, "anthropic"), (OPENAI_MODEL, "openai")):
        p = pricing.resolve(model, provider)
        out.append(Rates(p.priced_as or model, p.input, p.cache_read, p.cache_write))
    return out[0], out[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("off", *PROFILES),
                        help="one profile (default: safe, balanced and aggressive)")
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help=f"folder of conversations, *.json (default {CORPUS})")
    parser.add_argument("--rounds", type=int, default=5,
                        help="replays timed per profile; the median counts (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--recipes", type=Path,
                        help="a recipes folder added to the shipped ones (compression.recipes_dir)")
    args = parser.parse_args(argv)
    if args.recipes is not None and __name__ != "__main__":
        parser.error("--recipes only applies when run as a script (settings load recipes once)")
    corpus = load_corpus(args.corpus)
    rates = prices()
    profiles = [args.profile] if args.profile else list(PROFILES)
    results = [run_profile(corpus, p, rates, args.rounds) for p in profiles]
    if args.json:
        print(as_json(results, rates))
    else:
        a, o = rates
        print(f"{len(corpus)} conversations in {args.corpus}, "
              f"{sum(len(request_ends(m)) for _, m in corpus)} requests; message text only")
        print(f"Anthropic {a.model}: ${a.input} in, ${a.cache_read} cache read, "
              f"${a.cache_write} cache write (5 min) per MTok; tokens by {ANTHROPIC_ENCODING} "
              f"(estimate)")
        print(f"OpenAI {o.model}: ${o.input} in, ${o.cache_read} cached per MTok; tokens by "
              f"{OPENAI_ENCODING}; token columns are {OPENAI_ENCODING}")
        print("saved: all tokens sent; new: tokens of messages the previous request did not "
              "carry; net: billed input cost")
        for r in results:
            print()
            print(render(r))
    missed = [f"{r.profile}: {what}" for r in results for what in r.missed]
    return 1 if args.check and missed else 0


def configure(recipes: str | None) -> None:
    """Django settings in a temporary home with telemetry off: shipped recipes only."""
    home = tempfile.mkdtemp(prefix="tp-bench-compression-")
    atexit.register(shutil.rmtree, home, True)
    os.environ.update(TOKENPAK_HOME=home, TOKENPAK_DB=os.devnull, TOKENPAK_LOG_ENABLED="false",
                      DJANGO_SETTINGS_MODULE="tokenpak_site.settings")
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("TOKENPAK_RECIPES_DIR", None)
    if recipes:
        os.environ["TOKENPAK_RECIPES_DIR"] = recipes
    import django

    django.setup()


if __name__ == "__main__":
    _pre = argparse.ArgumentParser(add_help=False)
    _pre.add_argument("--recipes")
    configure(_pre.parse_known_args()[0].recipes)
    sys.exit(main())
