"""CPU work on a request body: inline when it is small, on a worker thread when it is big."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

# The CPU work on a body this big (parsing, compressing, re-encoding it) runs on a worker thread:
# on the event loop, a 30 MB body held every other request up for seconds. Smaller ones stay on
# the loop, where a few milliseconds of work cost less than the hop to a thread and back.
INLINE_BODY_BYTES = 256 * 1024
# Not the loop's default executor, which the footer's pricing and Django share. Under the GIL
# more threads would not be faster; a few keep a big body from queueing behind a bigger one.
_worker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenpak-body")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


async def on_worker(big: bool, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args): inline for a small body, on the worker thread for a big one. A client that
    leaves meanwhile is cancelled here (its row says so); the work runs to its end (a thread is
    not interrupted)."""
    if not big:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_worker, partial(fn, *args))


def encode(payload: Any, big: bool) -> bytes:
    # Compact, as the SDKs send it: whitespace between JSON tokens is bytes on the wire.
    if not big:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    # json.dumps is one C call that holds the GIL throughout (0.1 to 0.5 s for 30 MB, the event
    # loop waiting); iterencode makes the same bytes piece by piece, letting it in between.
    return "".join(_ENCODER.iterencode(payload)).encode()
