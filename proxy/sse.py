"""Server-sent events, split incrementally without re-encoding a byte.

The relay forwards whole events only: a client never sees half an event, so when a provider
cuts a stream mid-event TokenPak can still end it with a clean error event in the provider's
own format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# A blank line ends an event; providers use \n, some proxies \r\n (the spec allows \r too).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class EventSplitter:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every complete event (raw bytes, separator included) the chunk completes."""
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        # Resume the search just before the new bytes: a separator may straddle chunks.
        scan = max(0, len(self._buf) - 3)
        while True:
            m = _EVENT_END.search(buf, scan)
            if m is None:
                break
            yield buf[start : m.end()]
            start = scan = m.end()
        self._buf = buf[start:]

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has begun but not ended."""
        return self._buf


def parse_event(raw: bytes) -> tuple[str, bytes]:
    """(event name, data) of one raw event; multi-line data is joined with \\n as the spec says."""
    name = ""
    data: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(data)
