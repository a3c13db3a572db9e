"""proxy/upstream.py: one pooled client per loop, and no cookie jar shared between callers."""

from __future__ import annotations

import openai

from proxy import upstream


def test_it_never_hands_one_callers_provider_cookie_to_the_next(server, fake, rows):
    # The fake sets a cookie on every answer, as the CDN in front of the providers does.
    for key in ("sk-alice-0000", "sk-bob-0000", "sk-alice-0000"):
        reply = openai.OpenAI(base_url=server.url + "/v1", api_key=key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    assert len(fake.log) == 3
    assert [r.headers.get("cookie") for r in fake.log] == [None, None, None]
    assert len(rows(3)) == 3


def test_it_reuses_its_upstream_connections_across_requests(server, fake, rows):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-pool-0000")
    for _ in range(3 * upstream.SHARDS):
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    # One connection per pool, each kept alive and used again on every turn of the pools.
    ports = [r.peer_port for r in fake.log]
    assert len(ports) == 3 * upstream.SHARDS and len(set(ports)) == upstream.SHARDS
    assert ports[: upstream.SHARDS] == ports[upstream.SHARDS : 2 * upstream.SHARDS]
    assert len(rows(3 * upstream.SHARDS)) == 3 * upstream.SHARDS
