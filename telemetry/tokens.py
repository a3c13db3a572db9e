"""Local token counting with tiktoken encodings shipped in this folder.

Counting is the fallback (cut streams) and compression's tool, never the billing path when a
provider reports usage. The encodings load from telemetry/data/tiktoken with their published
SHA-256, so nothing is downloaded and nothing is cached in /tmp (tiktoken's default).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import tiktoken

DATA = Path(__file__).resolve().parent / "data" / "tiktoken"

# pat_str and special tokens as published in tiktoken_ext/openai_public.py (tiktoken 0.14).
_SPECS: dict[str, dict] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        "special_tokens": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
}

_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding] = {}


def encoding(name: str) -> tiktoken.Encoding:
    with _lock:
        enc = _loaded.get(name)
        if enc is None:
            spec = _SPECS[name]
            data = (DATA / f"{name}.tiktoken").read_bytes()
            if hashlib.sha256(data).hexdigest() != spec["sha256"]:
                raise RuntimeError(f"{name}.tiktoken is corrupt (SHA-256 mismatch)")
            ranks = {
                base64.b64decode(token): int(rank)
                for token, rank in (line.split() for line in data.splitlines() if line)
            }
            enc = tiktoken.Encoding(
                name=name,
                pat_str=spec["pat_str"],
                mergeable_ranks=ranks,
                special_tokens=spec["special_tokens"],
            )
            _loaded[name] = enc
        return enc


def encoding_for(model: str) -> str:
    """o200k for today's OpenAI models; cl100k for older ones and as Claude's approximation."""
    m = model.lower().split("/")[-1]
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt")):
        return "o200k_base"
    return "cl100k_base"


# tiktoken merges each pre-tokenized piece (a word, a run of one character) as a whole, and a
# long piece is slow and memory-hungry: 30 MB of one character took 30 s and 1.5 GB. So a text
# is counted in PIECE_CHARS pieces, cut at whitespace where there is some (where tiktoken's own
# pieces end, so the count stays exact), and past EXACT_CHARS estimated from evenly spaced
# samples: that is some 500,000 tokens, more than any model takes in one request.
PIECE_CHARS = 4096
EXACT_CHARS = 2 * 1024 * 1024


def count(text: str, model: str = "") -> int:
    return count_in(encoding_for(model), text)


def count_in(name: str, text: str) -> int:
    """Tokens of text in the encoding `name`, in bounded time and memory (see PIECE_CHARS)."""
    if not text:
        return 0
    enc = encoding(name)
    if len(text) <= PIECE_CHARS:
        return len(enc.encode(text, disallowed_special=()))
    if len(text) <= EXACT_CHARS:
        return sum(len(enc.encode(piece, disallowed_special=())) for piece in _pieces(text))
    samples = EXACT_CHARS // PIECE_CHARS
    step = len(text) // samples
    counted = chars = 0
    for k in range(samples):
        sample = text[k * step:k * step + PIECE_CHARS]
        counted += len(enc.encode(sample, disallowed_special=()))
        chars += len(sample)
    return round(counted * len(text) / chars)


def _pieces(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        stop = start + PIECE_CHARS
        if stop < len(text):
            # tiktoken starts a piece at the whitespace before a word: cut right there.
            cut = text.rfind(" ", start + 1, stop)
            if cut <= start:
                cut = text.rfind("\n", start + 1, stop)
            if cut > start:
                stop = cut
        yield text[start:stop]
        start = stop
