"""Compression through the front door: SDK → TokenPak → fake provider, and what the ledger says."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from telemetry import pricing, tokens
from telemetry.models import RecipeHit, Segment, Status

OPENAI_KEY = "sk-proj-TESTKEY0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-TESTKEY0123456789abcdef"
CLAUDE = "claude-sonnet-4-6"

# A tool result as tools print it: indented JSON, which `safe` minifies.
PRETTY = json.dumps({"files": [{"path": f"src/app/module_{i}.py", "lines": 100 + i,
                                "status": "modified"} for i in range(12)]}, indent=4)
MINIFIED = json.dumps(json.loads(PRETTY), separators=(",", ":"))
CURL = (
    "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n"
    "                                 Dload  Upload   Total   Spent    Left  Speed\n"
    "100   293  100   293    0     0  12993      0 --:--:-- --:--:-- --:--:-- 15421\n"
    "<html><body>It works</body></html>\n"
)


def oai(server, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY, max_retries=0,
                         default_headers=headers)


def ant(server, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=ANTHROPIC_KEY, max_retries=0,
                               default_headers=headers)


def tool_turns(*outputs: str) -> list[dict]:
    """A chat where each output answers the assistant's previous call, OpenAI-shaped."""
    messages: list[dict] = [{"role": "system", "content": "You run tools."},
                            {"role": "user", "content": "Look around."}]
    for n, output in enumerate(outputs):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{n}", "type": "function",
             "function": {"name": "run", "arguments": json.dumps({"cmd": f"step {n}"})}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": output})
    return messages


def sent(fake) -> dict:
    assert fake.log, "nothing reached the provider"
    return fake.log[-1].json


def test_it_sends_json_tool_output_minified_by_default(server, fake, rows):
    messages = tool_turns(PRETTY)
    oai(server).chat.completions.create(model="gpt-4o", messages=messages)

    upstream = sent(fake)["messages"]
    assert upstream[-1]["content"] == MINIFIED
    # Everything that is not tool or user text arrives as the client sent it.
    assert upstream[:-1] == messages[:-1]
    assert upstream[-1]["tool_call_id"] == "call_0"
    # Rewritten compact, as the SDKs write it: no bytes spent on JSON whitespace.
    assert fake.log[-1].body == json.dumps(sent(fake), ensure_ascii=False,
                                           separators=(",", ":")).encode()
    [event] = rows(1)
    assert event.status == Status.OK


def test_it_takes_the_profile_from_the_request_header(server, fake, rows):
    messages = tool_turns(CURL)
    oai(server, **{"X-TokenPak-Compress": "off"}).chat.completions.create(
        model="gpt-4o", messages=messages)
    assert sent(fake)["messages"] == messages
    assert "x-tokenpak-compress" not in fake.log[-1].headers

    oai(server, **{"X-TokenPak-Compress": "balanced"}).chat.completions.create(
        model="gpt-4o", messages=messages)
    assert sent(fake)["messages"][-1]["content"] == (
        "[curl progress meter removed]\n<html><body>It works</body></html>\n")
    assert len(rows(2)) == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_it_refuses_an_unknown_profile_in_the_providers_error_format(server, fake, rows,
                                                                      provider):
    bad = {"X-TokenPak-Compress": "maximum"}
    if provider == "openai":
        with pytest.raises(openai.BadRequestError) as e:
            oai(server, **bad).chat.completions.create(model="gpt-4o", messages=tool_turns(CURL))
        assert e.value.body["message"] == (
            "X-TokenPak-Compress must be one of off, safe, balanced, aggressive; "
            "got 'maximum'.")
    else:
        with pytest.raises(anthropic.BadRequestError) as e:
            ant(server, **bad).messages.create(model=CLAUDE, max_tokens=10,
                                               messages=[{"role": "user", "content": "hi"}])
        assert "X-TokenPak-Compress must be one of" in e.value.body["error"]["message"]
    assert fake.log == []
    [event] = rows(1)
    assert event.status == Status.INVALID_REQUEST


def test_it_takes_the_profile_from_the_configuration(start_server, fake):
    server = start_server(TOKENPAK_COMPRESSION_PROFILE="off")
    messages = tool_turns(PRETTY)
    oai(server).chat.completions.create(model="gpt-4o", messages=messages)
    assert sent(fake)["messages"] == messages

    oai(server, **{"X-TokenPak-Compress": "safe"}).chat.completions.create(
        model="gpt-4o", messages=messages)
    assert sent(fake)["messages"][-1]["content"] == MINIFIED


def test_it_records_tokens_saved_segments_and_recipes_fired(server, fake, rows):
    messages = tool_turns(PRETTY)
    usage = {"prompt_tokens": 500, "completion_tokens": 7}
    oai(server).chat.completions.create(model="gpt-4o", messages=messages,
                                        extra_headers={"x-fake-usage": json.dumps(usage)})
    [event] = rows(1)
    saved = tokens.count(PRETTY, "gpt-4o") - tokens.count(MINIFIED, "gpt-4o")
    assert saved > 50
    assert event.tokens_saved == saved
    assert event.usage.tokens_saved == saved
    assert event.usage.savings_pct == round(100.0 * saved / (500 + saved), 2)
    assert event.usage.saved_estimated is False  # tiktoken is OpenAI's own tokenizer
    # First request of a conversation: every saved token would have been fresh input.
    price = pricing.resolve("gpt-4o", "openai")
    expected = (saved * price.input / Decimal(1_000_000)).quantize(Decimal("1e-9"))
    assert event.cost.cost_saved_usd == expected
    assert event.saved_nano_usd == int(expected * Decimal("1e9"))

    segments = {s.segment_type: (s.tokens_raw, s.tokens_after)
                for s in Segment.objects.filter(trace_id=event.trace_id)}
    assert segments["json"] == (tokens.count(PRETTY, "gpt-4o"), tokens.count(MINIFIED, "gpt-4o"))
    assert segments["prose"][0] == segments["prose"][1] == tokens.count("Look around.", "gpt-4o")
    fired = dict(RecipeHit.objects.filter(trace_id=event.trace_id).values_list("recipe", "hits"))
    assert fired == {"json-minify": 1}


def test_it_prices_savings_in_cached_history_as_cache_reads(server, fake, rows):
    """A token saved in history the provider read from its cache was worth a tenth."""
    first = PRETTY
    second = PRETTY.replace("modified", "added")
    conversation = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": second},
    ]
    usage = {"input_tokens": 10, "cache_read_input_tokens": 4000, "output_tokens": 7}
    ant(server).messages.create(model=CLAUDE, max_tokens=10, messages=conversation,
                                extra_headers={"x-fake-usage": json.dumps(usage)})
    [event] = rows(1)

    def saving(text: str) -> int:
        return tokens.count(text, CLAUDE) - tokens.count(
            json.dumps(json.loads(text), separators=(",", ":")), CLAUDE)

    price = pricing.resolve(CLAUDE, "anthropic")
    expected = ((saving(first) * price.cache_read + saving(second) * price.input)
                / Decimal(1_000_000)).quantize(Decimal("1e-9"))
    assert event.tokens_saved == saving(first) + saving(second)
    assert event.cost.cost_saved_usd == expected
    assert event.usage.saved_estimated is True  # Claude counted with an approximate tokenizer


def test_it_sends_history_byte_identical_when_the_conversation_grows(server, fake, rows):
    client = oai(server, **{"X-TokenPak-Compress": "aggressive"})
    log = "\n".join(f"line {n}: ok" for n in range(200)) + "\nERROR: disk full\n"
    turns = tool_turns(log, CURL, PRETTY, CURL)
    bodies = []
    for k in (4, 6, 8, 10):
        client.chat.completions.create(model="gpt-4o", messages=turns[:k])
        bodies.append(sent(fake)["messages"])
    for before, after in itertools.pairwise(bodies):
        assert after[: len(before)] == before
    first_output = bodies[0][3]["content"]
    assert "[... " in first_output and " lines omitted ...]" in first_output
    assert "ERROR: disk full" in first_output
    assert sum(e.tokens_saved > 0 for e in rows(4)) == 4


def test_it_leaves_tool_use_images_and_cache_breakpoints_intact(server, fake, rows):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}
    system = [{"type": "text", "text": "Be brief.   \n\n\n\nReally.",
               "cache_control": {"type": "ephemeral"}}]
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "Read the config.   "}, image]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.json"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
             "content": PRETTY, "cache_control": {"type": "ephemeral"}}]},
    ]
    ant(server).messages.create(model=CLAUDE, max_tokens=10, system=system,
                                messages=conversation)
    body = sent(fake)
    assert body["system"] == system  # system prompts are never rewritten
    assert body["messages"][0]["content"] == [{"type": "text", "text": "Read the config."},
                                              image]
    assert body["messages"][1] == conversation[1]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
         "content": MINIFIED, "cache_control": {"type": "ephemeral"}}]
    assert len(rows(1)) == 1


def test_it_compresses_streamed_requests_and_counts_their_savings(server, fake, rows):
    messages = tool_turns(PRETTY)
    stream = oai(server).chat.completions.create(model="gpt-4o", messages=messages,
                                                 stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert sent(fake)["messages"][-1]["content"] == MINIFIED
    [event] = rows(1)
    assert event.stream and event.tokens_saved > 0


def test_it_forwards_a_request_it_cannot_compress_unchanged(server, fake, rows):
    odd = [{"role": "user", "content": {"unexpected": "shape"}},
           {"role": "tool", "content": 42}]
    raw = json.dumps({"model": "gpt-4o", "messages": odd}).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=raw,
                   headers={"authorization": f"Bearer {OPENAI_KEY}",
                            "content-type": "application/json"})
    assert r.status_code == 200
    assert fake.log[-1].body == raw  # not even re-serialised
    assert rows(1)[0].tokens_saved == 0


def test_it_shows_the_real_saving_in_the_stats_footer(start_server, fake):
    server = start_server(TOKENPAK_STATS_FOOTER="1")
    answer = oai(server).chat.completions.create(model="gpt-4o", messages=tool_turns(PRETTY))
    saved = tokens.count(PRETTY, "gpt-4o") - tokens.count(MINIFIED, "gpt-4o")
    footer = answer.choices[0].message.content.rsplit("\n", 1)[-1]
    assert footer.startswith(f"⚡ TokenPak: -{saved:,} tokens (")
