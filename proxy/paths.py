"""Which request paths the proxy forwards: only those that mean the same to the provider.

A proxy route forwards the path it was given under its provider's base URL (`/v1/{rest}` goes
to `https://api.openai.com/v1/{rest}`). The ASGI server hands TokenPak the path decoded
(`%2e%2e` is `..`, `%2f` is `/`), and the HTTP client that forwards it removes dot segments
(RFC 3986): `/v1/../admin/` and `/v1/..%2f..%2fadmin` would reach the provider as `/admin/`,
outside the route that was chosen. Encoded slashes, backslashes (which some servers take for
slashes), `?` and `#` (which would start a query or a fragment) and `%` (which the provider would
decode once more) would change the path's meaning on the way too. No provider endpoint needs
any of them, so such a target is refused with 400 before anything is forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# In the decoded path: characters whose meaning would change once forwarded, and controls.
_UNFORWARDABLE = re.compile(r"[\\?#%\x00-\x1f\x7f]")
# On the wire: an encoded slash or backslash, which decodes into a separator.
_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c)", re.IGNORECASE)


def refusal(scope: Mapping[str, Any]) -> str | None:
    """Why this request's path cannot be forwarded as it is, or None when it can."""
    path: str = scope["path"]
    raw: bytes = scope.get("raw_path") or b""
    # The common case costs three scans: no dot, no escape, no backslash.
    if "." in path and any(segment in (".", "..") for segment in path.split("/")):
        return "it holds a dot segment (. or ..)"
    if b"%" in raw and _ENCODED_SEPARATOR.search(raw):
        return "it holds an encoded slash or backslash (%2F or %5C)"
    if _UNFORWARDABLE.search(path):
        return "it holds a backslash, ?, #, % or a control character once decoded"
    return None
