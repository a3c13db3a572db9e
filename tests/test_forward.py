"""Bad input and unreachable providers: clear errors in the provider's own shape, one row each."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.contract import one_complete_refusal
from tests.contract_clients import CLIENTS
from tests.live import free_port

OPENAI_HEADERS = {"authorization": "Bearer sk-test-000000", "content-type": "application/json"}
ANTHROPIC_HEADERS = {
    "x-api-key": "sk-ant-test-000000",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


def test_it_answers_502_when_the_provider_is_unreachable(start_server, rows):
    closed = f"http://127.0.0.1:{free_port()}"
    server = start_server(TOKENPAK_OPENAI_BASE_URL=closed, TOKENPAK_ANTHROPIC_BASE_URL=closed)
    with pytest.raises(openai.InternalServerError) as info:
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-x-000000", max_retries=0
                      ).chat.completions.create(model="gpt-4o", messages=[])
    assert info.value.status_code == 502
    assert "could not reach openai upstream 127.0.0.1 (ConnectError)" in str(info.value)
    response = httpx.post(server.url + "/v1/messages", headers=ANTHROPIC_HEADERS,
                          json={"model": "claude-haiku-4-5", "max_tokens": 1, "messages": []})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error"
    events = rows(2)
    assert [(e.status, e.error_class) for e in events] == [
        ("upstream_unreachable", "ConnectError")] * 2


def test_it_answers_504_when_the_provider_does_not_answer_in_time(start_server, fake, rows):
    server = start_server(TOKENPAK_READ_TIMEOUT="0.5")
    response = httpx.post(
        server.url + "/v1/messages",
        headers={**ANTHROPIC_HEADERS, "x-fake-scenario": "hang"},
        json={"model": "claude-haiku-4-5", "max_tokens": 1, "messages": []},
    )
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert "timed out (ReadTimeout)" in response.json()["error"]["message"]
    [event] = rows(1)
    assert (event.status, event.error_class) == ("upstream_timeout", "ReadTimeout")


def test_it_times_out_a_stream_that_stalls_and_says_so_in_the_stream(start_server, fake, rows):
    server = start_server(TOKENPAK_READ_TIMEOUT="0.5")
    stream = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-x-000000", max_retries=0
                           ).chat.completions.create(
        model="gpt-4o-mini", messages=[], stream=True,
        extra_headers={"x-fake-scenario": "gate"},
    )
    with pytest.raises(openai.APIError, match="read timeout"):
        list(stream)
    fake.release.set()
    [event] = rows(1)
    assert (event.status, event.error_class) == ("upstream_timeout", "ReadTimeout")
    assert event.usage.estimated and event.usage.output_tokens == 1  # "Hello" was seen


def test_it_passes_a_malformed_provider_body_through_untouched(server, fake, rows):
    response = httpx.post(
        server.url + "/v1/chat/completions",
        headers={**OPENAI_HEADERS, "x-fake-scenario": "malformed"},
        json={"model": "gpt-4o", "messages": []},
    )
    assert (response.status_code, response.content) == (200, b"{not json")
    [event] = rows(1)
    assert event.status == "ok" and event.usage_source == "none" and event.cost.cost_usd == 0


def test_it_records_a_client_that_leaves_before_the_provider_answers(server, fake, rows):
    headers = {**OPENAI_HEADERS, "x-fake-scenario": "hang"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                   headers=headers, timeout=httpx.Timeout(10, read=1))
    [event] = rows(1)
    assert (event.status, event.upstream_status, event.requested_model) == (
        "client_closed", None, "gpt-4o")
    assert fake.client_gone.wait(5)  # TokenPak dropped its upstream request too


def test_it_forwards_a_header_value_beyond_ascii_as_the_bytes_it_came_as(server, fake, rows):
    value = "café ☕".encode()  # an app's title in UTF-8, as some clients send X-Title
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "gpt-4o", "messages": []},
                          headers={**OPENAI_HEADERS, "x-title": value})
    assert response.status_code == 200  # it was a 500, and no row: httpx encodes str as ASCII
    assert fake.log[0].headers["x-title"] == value.decode("latin-1")
    assert rows(1)[0].status == "ok"


def test_it_reads_a_chat_body_sent_as_a_form_by_a_hand_written_curl(server, fake, rows):
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": []}',
        headers={"authorization": "Bearer sk-test-000000",
                 "content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert rows(1)[0].requested_model == "gpt-4o-mini"


FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=tp"
PARTS = b'--tp\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n--tp--\r\n'


@pytest.mark.parametrize(
    "path, content_type, body",
    [
        ("/v1/chat/completions", "text/plain", b"hi, what is 2 + 2?"),
        ("/v1/chat/completions", FORM, b"model=gpt-4o&messages=hi"),
        ("/v1/chat/completions", MULTIPART, PARTS),
        ("/v1/embeddings", FORM, b"model=text-embedding-3-small&input=hi"),
        ("/v1/embeddings", MULTIPART, PARTS),
        ("/v1/responses", "application/octet-stream", b"\x00\x01\x02"),
        ("/v1/messages", "text/plain", b"hi, what is 2 + 2?"),
        ("/v1/messages", FORM, b"model=claude-haiku-4-5&max_tokens=5"),
        ("/v1/messages", MULTIPART, PARTS),
        ("/v1/messages/count_tokens", "application/xml", b"<model>claude-haiku-4-5</model>"),
    ],
)
def test_it_refuses_a_body_in_another_content_type_that_is_not_json(
        server, fake, rows, path, content_type, body):
    provider = "anthropic" if path.startswith("/v1/messages") else "openai"
    headers = {**(ANTHROPIC_HEADERS if provider == "anthropic" else OPENAI_HEADERS),
               "content-type": content_type}
    response = httpx.post(server.url + path, content=body, headers=headers)
    assert response.status_code == 400
    error = CLIENTS[provider].error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Request body is not valid JSON")
    assert error["message"].endswith(
        f"This endpoint takes a JSON body; it was sent as {content_type.split(';')[0]}.")
    assert fake.log == []  # the provider never saw it
    one_complete_refusal(rows, response)


def test_it_forwards_json_and_uploads_whatever_their_content_type_says(server, fake, rows):
    # A hand-written curl -d: JSON, declared as a form.
    embeddings = httpx.post(server.url + "/v1/embeddings",
                            content=b'{"model": "text-embedding-3-small", "input": "hi"}',
                            headers={**OPENAI_HEADERS, "content-type": FORM})
    assert embeddings.status_code == 200 and embeddings.json()["data"]
    # Uploads are multipart: forwarded as they are, for the provider to judge.
    upload = httpx.post(server.url + "/v1/files", content=PARTS,
                        headers={**OPENAI_HEADERS, "content-type": MULTIPART})
    assert upload.status_code == 404  # the fake has no files API: its own answer, passed on
    sent = {r.path: r for r in fake.log}
    assert sent["/v1/embeddings"].json == {"model": "text-embedding-3-small", "input": "hi"}
    assert sent["/v1/files"].body == PARTS
    assert sent["/v1/files"].headers["content-type"] == MULTIPART
    assert sorted(e.status for e in rows(2)) == ["error", "ok"]


SECRET = "sk-absurd-"  # the start of every oversized value below: it must never be shown


@pytest.mark.parametrize(
    "path, headers",
    [
        ("/v1/chat/completions", {"x-padding": SECRET + "p" * 100_000}),
        ("/v1/chat/completions", {"x-padding": SECRET + "p" * 1_000_000}),
        ("/v1/chat/completions", {f"x-h{i}": "v" for i in range(10_000)}),
        ("/v1/chat/completions", {"authorization": "Bearer " + SECRET + "k" * 1_000_000}),
        ("/v1/chat/completions", {"x-tokenpak-agent": SECRET + "a" * 100_000}),
        ("/v1/messages", {"x-api-key": SECRET + "k" * 1_000_000}),
        ("/v1/messages", {"x-padding": SECRET + "p" * 100_000}),
    ],
    ids=["100KB", "1MB", "10000-headers", "1MB-authorization", "100KB-agent", "1MB-x-api-key",
         "100KB-anthropic"],
)
def test_it_refuses_absurd_headers_with_431_in_the_provider_shape(server, fake, rows, path,
                                                                   headers):
    provider = "anthropic" if path.startswith("/v1/messages") else "openai"
    base = ANTHROPIC_HEADERS if provider == "anthropic" else OPENAI_HEADERS
    body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}
    response = httpx.post(server.url + path, json=body, headers={**base, **headers}, timeout=30)
    assert response.status_code == 431
    error = CLIENTS[provider].error_of(response)
    assert error["type"] == "invalid_request_error"
    assert "TokenPak takes at most" in error["message"]
    assert SECRET not in response.text and len(response.content) < 500
    assert fake.log == []
    event = one_complete_refusal(rows, response)
    assert event.agent_id == ""  # read after the check: nothing of the headers is kept
    # The server is still whole and serves the next request.
    again = httpx.post(server.url + path, json=body, headers=base)
    assert again.status_code == 200 and len(fake.log) == 1
    assert [e.status for e in rows(2)] == ["invalid_request", "ok"]
    assert SECRET not in server.output()


def test_it_forwards_large_headers_under_the_limit(server, fake, rows):
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": []},
                          headers={**OPENAI_HEADERS, "x-padding": "p" * 60_000})
    assert response.status_code == 200
    assert len(fake.log[0].headers["x-padding"]) == 60_000
    assert rows(1)[0].status == "ok"


# A provider (or whatever answers in its place) speaking for TokenPak, and header values no
# server can send on: before, the client got the provider's word as TokenPak's, or an empty
# reply (uvicorn refuses to send the value) while the ledger said ok.
PROVIDER_HEADERS = {
    "x-tokenpak-budget": "exceeded",
    "X-TokenPak-Trace-Id": "forged",
    "x-esc": "a\u001b]0;owned\u0007b",
    "x-del": "a\u007fb",
    "x-long": "v" * 10_000,  # over 8 KB (a longer head would not even reach TokenPak)
}


@pytest.mark.parametrize("stream", [False, True])
def test_it_keeps_the_provider_from_speaking_for_tokenpak(server, fake, rows, stream):
    body = {"model": "gpt-4o-mini", "messages": [], "stream": stream}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, headers={
        **OPENAI_HEADERS, "x-fake-reply-headers": json.dumps(PROVIDER_HEADERS)})
    assert response.status_code == 200
    assert ("[DONE]" in response.text) if stream else response.json()["choices"]
    [event] = rows(1)
    assert (event.status, event.upstream_status) == ("ok", 200)
    assert response.headers["x-tokenpak-trace-id"] == event.trace_id
    assert "x-tokenpak-budget" not in response.headers
    assert not {"x-esc", "x-del", "x-long"} & set(response.headers)
    assert response.headers["x-request-id"].startswith("req_fake_")  # the others pass


def test_it_passes_provider_header_bytes_through_as_they_came(server, fake, rows):
    # UTF-8 bytes, written by the fake as the latin-1 characters they are. Before, httpx
    # decoded them as UTF-8 and Django sent them on MIME-encoded (=?utf-8?b?4piD?=).
    snowman = "☃".encode().decode("latin-1")
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": []},
                          headers={**OPENAI_HEADERS, "x-fake-reply-headers": json.dumps(
                              {"x-note": snowman, "x-tab": "a\tb"})})
    assert response.status_code == 200
    assert dict(response.headers.raw)[b"x-note"] == "☃".encode()
    assert response.headers["x-tab"] == "a\tb"
    assert rows(1)[0].status == "ok"
