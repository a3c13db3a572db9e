"""Logging setup and the redaction boundary: no record leaves a handler with a key in it."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

# Provider keys (sk-..., sk-ant-..., sk-proj-...), bearer tokens and header-style assignments.
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

SENSITIVE_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "proxy-authorization"}
)


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if k.lower() in SENSITIVE_HEADERS else v) for k, v in headers.items()}


class RedactingFilter(logging.Filter):
    """Sits on every handler, so records propagated from any library pass through it too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = redact(message)
        record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
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
