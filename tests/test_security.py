"""The proxy sends only to the configured providers, whatever a client puts in the Host header,
the request target or the path; and what the sign-in pages hand out is guarded."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.fakeprovider import FakeProvider

KEY = "sk-proj-SECURITYTEST0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def elsewhere() -> FakeProvider:
    """Another server on this machine that no request may reach."""
    with FakeProvider() as other:
        yield other


def raw(server, request: bytes) -> bytes:
    """One request written by hand, for targets and headers an HTTP client would not send
    (httpx removes dot segments). With `Connection: close` the whole answer, else its head."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
            if b"connection: close" not in request.lower() and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def post(server, target: str, body: bytes, *headers: str) -> tuple[int, bytes]:
    """POST `target` exactly as written; (status, body)."""
    head = "".join(f"{h}\r\n" for h in headers)
    answer = raw(server, (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_it_ignores_the_host_header_when_choosing_where_to_send(server, fake, elsewhere, rows):
    other = elsewhere.url.removeprefix("http://")
    for headers in ({"host": other}, {"x-forwarded-host": other},
                    {"x-forwarded-host": other, "forwarded": f"host={other}"}):
        r = httpx.post(server.url + "/v1/chat/completions", json=CHAT,
                       headers={"authorization": f"Bearer {KEY}", **headers})
        assert r.status_code == 200
    rows(3)
    assert len(fake.log) == 3 and elsewhere.log == []
    # and the provider never sees the client's Host or forwarding headers
    for received in fake.log:
        assert received.headers["host"] == fake.url.removeprefix("http://")
        assert "x-forwarded-host" not in received.headers and "forwarded" not in received.headers


@pytest.mark.parametrize(("path", "refused"), [
    ("/v1/{other}/v1/chat/completions", False),
    ("/v1/http://{other}/v1/chat/completions", False),
    ("/v1//{other}/v1/chat/completions", False),
    ("/v1/..%2F..%2F{other}%2Fv1%2Fchat%2Fcompletions", True),  # encoded slashes: refused
    ("/openai/v1/@{other}/chat/completions", False),
    ("/anthropic/v1/%2F%2F{other}/v1/messages", True),
])
def test_it_keeps_path_tricks_on_the_providers_host(server, fake, elsewhere, rows, path,
                                                    refused):
    target = path.format(other=elsewhere.url.removeprefix("http://"))
    r = httpx.post(server.url + target, json=CHAT, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 if refused else r.status_code in (200, 404)
    assert fake.log == [] if refused else len(fake.log) == 1
    rows(1)  # the ledger has it before the next test starts
    assert elsewhere.log == []
    for received in fake.log:
        assert received.headers["host"] == fake.url.removeprefix("http://")


# What each of these would have reached once the forwarding client removed the dot segments.
LEAVING = [
    "/v1/../admin/",  # /admin/
    "/v1/%2e%2e/%2e%2e/secret",  # /secret
    "/openai/v1/../../root",  # /root
    "/v1/..%2f..%2fadmin",  # /admin
    "/v1/chat/./completions",
    "/v1/files/%2E%2E%5Cadmin",
    "/v1/files/a%2Fb",
    "/v1/files/a%5Cb",
    "/v1/files/a\\..\\b",
    "/v1/files/a%3Fb=c",  # a decoded ? would start a query upstream
    "/v1/files/a%2523",  # %25 decodes to %, which the provider would decode again
]


@pytest.mark.parametrize("target", LEAVING)
def test_it_refuses_paths_that_could_leave_their_route(server, fake, rows, target):
    status, body = post(server, target, json.dumps(CHAT).encode(), f"Authorization: Bearer {KEY}")
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert "TokenPak does not forward this path" in error["message"]
    assert fake.log == []  # nothing forwarded
    [event] = rows(1)
    assert (event.status, event.error_class, event.provider) == (
        "invalid_request", "http_400", "openai")


@pytest.mark.parametrize("target", ["/v1/messages/../../root", "/anthropic/v1/..%2f..%2froot"])
def test_it_refuses_them_in_anthropic_shape(server, fake, rows, target):
    status, body = post(server, target, b'{"model": "claude-haiku-4-5", "max_tokens": 5}',
                        "x-api-key: sk-ant-test-0", "anthropic-version: 2023-06-01")
    assert status == 400
    answer = json.loads(body)
    assert (answer["type"], answer["error"]["type"]) == ("error", "invalid_request_error")
    assert fake.log == []
    assert rows(1)[0].status == "invalid_request"


def test_it_refuses_a_dot_segment_in_a_model_id(server, fake, rows):
    answer = raw(server, b"GET /v1/models/.. HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert fake.log == []
    assert rows(1)[0].status == "invalid_request"


def test_it_takes_an_absolute_request_target_as_a_path_on_this_server(server, fake, elsewhere,
                                                                       rows):
    other = elsewhere.url.removeprefix("http://")
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    answer = raw(server, (
        f"POST http://{other}/v1/chat/completions HTTP/1.1\r\nHost: {other}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    assert answer.startswith(b"HTTP/1.1 ")
    if b"x-tokenpak-trace-id" in answer.lower():
        rows(1)
    assert elsewhere.log == []


def test_it_never_forwards_its_own_headers(server, fake, rows):
    httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers={
        "authorization": f"Bearer {KEY}", "x-tokenpak-agent": "coder",
        "x-tokenpak-session": "s1", "x-tokenpak-compress": "off",
        "x-tokenpak-token": "tp-not-for-the-provider"})
    rows(1)
    assert not [h for h in fake.log[-1].headers if h.startswith("x-tokenpak")]


def test_it_sets_session_cookies_http_only_and_csrf_on_forms(server, token):
    r = httpx.get(f"{server.url}/dashboard/login/", params={"token": token})
    cookie = r.headers["set-cookie"]
    assert "sessionid=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # A form post without the CSRF token is refused.
    r = httpx.post(f"{server.url}/dashboard/login/", data={"token": token})
    assert r.status_code == 403
