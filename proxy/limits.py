"""How long a request's URL and how large its headers may be: past these, 414 or 431.

uvicorn's httptools parser takes headers of any size and number (a 10 MB header reaches the
app whole) and URLs up to 64 KB (longer, it answers 400 itself and closes the connection).
Forwarded as they are, absurd headers are refused by the provider's front end or cut its
connection, and the client's own mistake would come back as a 502 that blames the provider,
after trying every fallback in turn. So they stop here, before anything is forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A request's headers counted as on the wire ("name: value\r\n"). Node refuses more than 16 KB
# in all, nginx and Apache a line over 8 KB; an SDK sends about 1 KB. What comes closest is a
# browser on the dashboard with the cookies of every local app on 127.0.0.1, whatever its port.
MAX_HEADER_BYTES = 64 * 1024
# Apache and Python's http.server refuse more than 100 headers; an SDK sends about 15.
MAX_HEADERS = 256
# Path and query string. Apache and nginx refuse request lines over 8 KB by default; the
# providers' endpoints take a few short parameters, so only a client that put a body into the
# query string comes near this.
MAX_URL_BYTES = 16 * 1024


def refusal(scope: Mapping[str, Any]) -> tuple[int, str] | None:
    """(status, message) when the request is too large to take. The message names sizes and at
    most a header's name, never a value: values are where API keys live."""
    query = scope.get("query_string") or b""
    url = len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)
    if url > MAX_URL_BYTES:
        return 414, f"Request URL is {url:,} bytes long; TokenPak takes at most {MAX_URL_BYTES:,}."
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    if len(headers) > MAX_HEADERS:
        return 431, (f"Request has {len(headers):,} header fields; TokenPak takes at most "
                     f"{MAX_HEADERS}.")
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > MAX_HEADER_BYTES:
        name, value = max(headers, key=lambda h: len(h[0]) + len(h[1]))
        return 431, (f"Request header fields are {size:,} bytes in all; TokenPak takes at most "
                     f"{MAX_HEADER_BYTES:,}. The largest is {_shown(name)} "
                     f"({len(name) + len(value):,} bytes).")
    return None


def _shown(name: bytes) -> str:
    # A name can be the absurd part too.
    text = name.decode("latin-1")
    return repr(text) if len(text) <= 64 else repr(text[:64]) + "…"
