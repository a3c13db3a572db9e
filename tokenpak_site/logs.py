"""Logging setup and the log boundary: no record leaves a handler with a credential in it, or
with a character that would let a value forge a line or drive a terminal.

One rule decides what is a credential, for the log (masked, `***`) and for debug captures
(left out, telemetry/captures.py): a header or query parameter whose name says it holds one,
or a value shaped like one whatever it is called (`is_secret`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from tokenpak_site.text import shown, shown_lines

# A header or query parameter whose name holds one of these carries a credential (x-api-key,
# api-key, authorization, proxy-authorization, cookie, x-goog-api-key, x-auth-token,
# access_token, Gemini's ?key=, …)…
SECRET_NAME = re.compile(r"key|token|secret|auth|cookie|password|credential|signature", re.I)
# …and a value shaped like one is one whatever its header or parameter is called.
SECRET_VALUE = re.compile(r"^\s*(bearer|basic)\s|\b(sk|rk|pk)-[A-Za-z0-9_-]{8,}", re.I)

# In free text. Provider keys (sk-..., sk-ant-..., sk-proj-...), bearer tokens and header-style
# assignments of the usual names…
_PATTERNS = [
    (re.compile(r"sk-[A-Za-z0-9_\-]{6,}"), "sk-***"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"), r"\1***"),
    (
        re.compile(
            r"(?i)((?:x-api-key|api-key|x-goog-api-key|authorization|api_key|apikey)"
            r"[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s\"',;}]+"
        ),
        r"\1***",
    ),
]
# …every query parameter of a URL (a request line, a forwarded URL), and every quoted name-value
# pair of a repr (a headers dict or list), by `is_secret`.
_QUERY_PARAMETER = re.compile(r"(?<=[?&;])([^\s=&#?;\"'<>]+)=([^\s&#;\"'<>]*)")
_QUOTED_PAIR = re.compile(r"""(b?(['"]))([^'"\s]+)\2(\s*[:,]\s*)(b?(['"]))(.*?)\6""")
# Colours a library puts in its own format string (daphne's request lines on a terminal).
_SGR = re.compile("\x1b\\[[0-9;]*m")


def is_secret(name: str, value: str) -> bool:
    """True when a header or query parameter named `name` with this value holds a credential."""
    return bool(SECRET_NAME.search(name) or SECRET_VALUE.search(value))


def _mask_parameter(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value and value != "***" and is_secret(unquote_plus(name), unquote_plus(value)):
        return f"{name}=***"
    return match.group()


def _mask_pair(match: re.Match[str]) -> str:
    quote, name, between, value_quote, value = (match.group(1), match.group(3), match.group(4),
                                                match.group(5), match.group(7))
    if value and value != "***" and is_secret(name, value):
        return f"{quote}{name}{quote[-1]}{between}{value_quote}***{value_quote[-1]}"
    return match.group()


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    if "=" in text:
        text = _QUERY_PARAMETER.sub(_mask_parameter, text)
    if "'" in text or '"' in text:
        text = _QUOTED_PAIR.sub(_mask_pair, text)
    return text


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if is_secret(k, v) else v) for k, v in headers.items()}


class RedactingFilter(logging.Filter):
    """Sits on every handler, so records propagated from any library pass through it too.

    A record leaves it redacted, as one line (control characters, bidi overrides and line
    separators of its values escaped: tokenpak_site/text.py `shown`), with its traceback
    escaped line by line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "\x1b" in record.msg and record.args:
            record.msg = _SGR.sub("", record.msg)  # the library's colours, not a value's
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = shown(redact(message)), None
        if record.exc_text:
            record.exc_text = shown_lines(redact(record.exc_text))
        if record.stack_info:
            record.stack_info = shown_lines(redact(record.stack_info))
        return True


def _touch_private(path: Path) -> None:
    # The log may hold model names and agent ids: keep it as private as the ledger.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)


def build(*, enabled: bool, destination: str, level: str, log_file: Path) -> dict[str, Any]:
    handler: dict[str, Any]
    if not enabled:
        handler = {"class": "logging.NullHandler"}
    elif destination == "stdout":
        handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    elif destination == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("127.0.0.1", 514)
        handler = {"class": "logging.handlers.SysLogHandler", "address": address}
    else:
        _touch_private(log_file)
        handler = {"class": "logging.FileHandler", "filename": str(log_file)}
    handler |= {"filters": ["redact"], "formatter": "plain", "level": level}
    quiet = "WARNING" if level != "DEBUG" else "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "tokenpak_site.logs.RedactingFilter"}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        },
        "handlers": {"main": handler},
        "root": {"handlers": ["main"], "level": level},
        "loggers": {
            "tokenpak": {"level": level},
            "django": {"level": level},
            # Library chatter (connection pools, reactor) only when asked for.
            "httpx": {"level": quiet},
            "httpcore": {"level": quiet},
            "daphne": {"level": quiet},
            "asyncio": {"level": "WARNING"},
        },
    }
