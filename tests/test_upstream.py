"""proxy/upstream.py: one pooled client per loop, and no cookie jar shared between callers."""

from __future__ import annotations

import openai


def test_it_never_hands_one_callers_provider_cookie_to_the_next(server, fake, rows):
    # The fake sets a cookie on every answer, as the CDN in front of the providers does.
    for key in ("sk-alice-0000", "sk-bob-0000", "sk-alice-0000"):
        reply = openai.OpenAI(base_url=server.url + "/v1", api_key=key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    assert len(fake.log) == 3
    assert [r.headers.get("cookie") for r in fake.log] == [None, None, None]
    assert len(rows(3)) == 3


def test_it_reuses_one_upstream_connection_across_requests(server, fake, rows):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-pool-0000")
    for _ in range(5):
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    assert len(fake.log) == 5 and len({r.peer_port for r in fake.log}) == 1
