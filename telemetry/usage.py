"""Token counts of one request, normalised across providers."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenUsage:
    """input_tokens is everything the provider read: uncached + cache reads + cache writes.

    OpenAI reports prompt_tokens that already include cached tokens; Anthropic reports
    input_tokens that exclude them. Normalising here keeps reports comparable.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # 5 min + 1 h writes
    cache_write_1h_tokens: int = 0  # the 1 h part of cache_write_tokens
    reasoning_tokens: int = 0  # part of output_tokens
    estimated: bool = False

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cache_read_tokens - self.cache_write_tokens)

    @property
    def cache_write_5m_tokens(self) -> int:
        return self.cache_write_tokens - self.cache_write_1h_tokens

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_openai(cls, usage: dict) -> TokenUsage:
        """Chat completions (prompt_/completion_tokens) and Responses/embeddings shapes."""
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            prompt = _int(usage.get("prompt_tokens"))
            output = _int(usage.get("completion_tokens"))
            in_details = usage.get("prompt_tokens_details") or {}
            out_details = usage.get("completion_tokens_details") or {}
        else:
            prompt = _int(usage.get("input_tokens"))
            output = _int(usage.get("output_tokens"))
            in_details = usage.get("input_tokens_details") or {}
            out_details = usage.get("output_tokens_details") or {}
        return cls(
            input_tokens=prompt,
            output_tokens=output,
            cache_read_tokens=_int(in_details.get("cached_tokens")),
            # gpt-5.6 and newer: prompt tokens written to the cache, billed at its write price
            # (1.25x input); like cached_tokens, a part of the prompt tokens.
            cache_write_tokens=_int(in_details.get("cache_write_tokens")),
            reasoning_tokens=_int(out_details.get("reasoning_tokens")),
        )

    @classmethod
    def from_anthropic(cls, usage: dict) -> TokenUsage:
        fresh = _int(usage.get("input_tokens"))
        read = _int(usage.get("cache_read_input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        split = usage.get("cache_creation") or {}
        write_1h = _int(split.get("ephemeral_1h_input_tokens"))
        if split and not write:
            write = _int(split.get("ephemeral_5m_input_tokens")) + write_1h
        return cls(
            input_tokens=fresh + read + write,
            output_tokens=_int(usage.get("output_tokens")),
            cache_read_tokens=read,
            cache_write_tokens=write,
            cache_write_1h_tokens=min(write_1h, write),
        )


def _int(value: object) -> int:
    # Providers send null for absent counts; never let a bad value break the ledger.
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float):  # 1e400 is valid JSON: inf, which no int holds
        return max(0, int(value)) if math.isfinite(value) else 0
    return 0
