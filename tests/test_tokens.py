"""telemetry.tokens: offline token counting from the encodings shipped in telemetry/data.

Expected token ids for cl100k_base are the ones tiktoken's own test suite asserts, so these
tests prove the shipped files and the copied pat_str reproduce OpenAI's tokenizer exactly; the
o200k_base ids are the published ones for "hello world" and counts worked out once and pinned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken

from telemetry import tokens

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty encoding cache for this test only, so the files are really read again."""
    monkeypatch.setattr(tokens, "_loaded", {})


def test_it_loads_both_encodings_from_the_shipped_files_offline(
    no_network: None, fresh_load: None
) -> None:
    cl100k = tokens.encoding("cl100k_base")
    o200k = tokens.encoding("o200k_base")

    # Vocabulary sizes (ranks + special tokens) as tiktoken reports for the real encodings.
    assert cl100k.n_vocab == 100277
    assert o200k.n_vocab == 200019
    assert cl100k.encode("hello world") == [15339, 1917]
    assert o200k.encode("hello world") == [24912, 2375]


def test_it_reproduces_tiktokens_own_cl100k_test_vectors(no_network: None) -> None:
    enc = tokens.encoding("cl100k_base")
    # From tiktoken's tests/test_encoding.py: these exercise the pre-tokenizer regex
    # (contractions, newline runs, emoji bytes), i.e. a mistyped pat_str would fail here.
    assert enc.encode("rer") == [38149]
    assert enc.encode("'rer") == [2351, 81]
    assert enc.encode("today\n \n") == [31213, 27907]
    assert enc.encode("today\n  \n") == [31213, 14211]
    assert enc.encode("👍") == [9468, 239, 235]
    assert enc.encode("hello <|endoftext|>", allowed_special="all") == [15339, 220, 100257]
    assert tokens.encoding("o200k_base").encode("<|endoftext|>", allowed_special="all") == [
        199999
    ]


@pytest.mark.parametrize(
    ("text", "cl100k", "o200k"),
    [
        ("hello world", 2, 2),
        ("The quick brown fox jumps over the lazy dog.", 10, 10),
        ("    def f(x):\n        return x * 2\n", 12, 12),
        # o200k was trained on far more non-English text: fewer tokens for the same words.
        ("こんにちは世界、元気ですか？", 10, 8),
        ("Привет, как дела? Это тест.", 13, 9),
        ("👍", 3, 1),
    ],
)
def test_it_counts_known_strings(no_network: None, text: str, cl100k: int, o200k: int) -> None:
    assert tokens.count(text, "gpt-4") == cl100k
    assert tokens.count(text, "gpt-4o") == o200k


def test_it_counts_special_token_text_as_plain_text() -> None:
    # A prompt that quotes "<|endoftext|>" must be counted, not rejected or read as a control
    # token: it reaches the provider as ordinary characters.
    assert tokens.count("<|endoftext|>", "gpt-4") == 7
    assert tokens.count("<|endoftext|>", "gpt-4o") == 7


def test_it_counts_nothing_as_zero() -> None:
    assert tokens.count("", "gpt-4o") == 0


@pytest.mark.parametrize(
    "model",
    ["gpt-4o", "gpt-4o-mini", "GPT-4o", "openai/gpt-4o", "gpt-4.1", "gpt-5", "gpt-5.1-codex",
     "o1", "o3", "o3-mini", "o4-mini", "chatgpt-4o-latest"],
)
def test_it_picks_o200k_for_current_openai_models(model: str) -> None:
    assert tokens.encoding_for(model) == "o200k_base"


@pytest.mark.parametrize(
    "model",
    ["gpt-4", "gpt-4-turbo", "gpt-4-0613", "gpt-3.5-turbo", "claude-sonnet-4-5",
     "anthropic/claude-opus-4-7", "", "some-local-model"],
)
def test_it_picks_cl100k_for_older_models_and_claude(model: str) -> None:
    assert tokens.encoding_for(model) == "cl100k_base"


def test_it_refuses_a_corrupt_encoding_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_load: None
) -> None:
    data = tmp_path / "tiktoken"
    shutil.copytree(tokens.DATA, data)
    # One changed byte in a rank: the file still parses, so only the checksum can catch it.
    path = data / "cl100k_base.tiktoken"
    blob = bytearray(path.read_bytes())
    blob[-2] = ord("9") if blob[-2] != ord("9") else ord("8")
    path.write_bytes(bytes(blob))
    monkeypatch.setattr(tokens, "DATA", data)

    with pytest.raises(RuntimeError, match=r"cl100k_base\.tiktoken is corrupt"):
        tokens.count("hello world", "gpt-4")
    # Nothing half-built was cached: the next call fails the same way rather than counting.
    assert "cl100k_base" not in tokens._loaded
    with pytest.raises(RuntimeError, match="corrupt"):
        tokens.encoding("cl100k_base")
    # The intact copy beside it still loads.
    assert tokens.count("hello world", "gpt-4o") == 2


def test_it_refuses_a_truncated_encoding_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_load: None
) -> None:
    data = tmp_path / "tiktoken"
    data.mkdir()
    src = tokens.DATA / "o200k_base.tiktoken"
    (data / "o200k_base.tiktoken").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    monkeypatch.setattr(tokens, "DATA", data)

    with pytest.raises(RuntimeError, match=r"o200k_base\.tiktoken is corrupt"):
        tokens.encoding("o200k_base")


@pytest.mark.live
def test_it_writes_no_cache_into_the_temp_folder(tmp_path: Path) -> None:
    # tiktoken's own loader caches downloads in $TMPDIR/data-gym-cache; the shipped files must
    # make that path unused, and work with the network unplugged.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    code = (
        "import socket, tempfile\n"
        "def deny(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = deny\n"
        "socket.create_connection = deny\n"
        "socket.getaddrinfo = deny\n"
        "from telemetry import tokens\n"
        "print(tempfile.gettempdir())\n"
        "print(tokens.count('hello world', 'gpt-4o'), tokens.count('hello world', 'claude'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    gettempdir, counts = proc.stdout.splitlines()
    # Proves the child really used our folder as its temp dir, so a cache write would show.
    assert Path(gettempdir).resolve() == tmpdir.resolve()
    assert counts == "2 2"
    assert list(tmpdir.iterdir()) == []


def test_it_uses_tiktoken_encoding_objects() -> None:
    # Callers (compression) rely on the full tiktoken API, e.g. decode, not a lookalike.
    enc = tokens.encoding("cl100k_base")
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.decode(enc.encode("hello world")) == "hello world"
    assert tokens.encoding("cl100k_base") is enc  # loaded once, then reused
