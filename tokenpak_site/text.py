"""What a client- or provider-controlled string may become where it leaves TokenPak's hands.

Agent and session ids, model names, error types, paths and header values are chosen by whoever
sends a request or answers one. They are kept as they came wherever that is safe (the ledger,
JSON), and made safe at the few places where a character means something else:

- `storable`: text entering the database. PostgreSQL refuses NUL in text, and neither driver
  can encode a lone surrogate (which json.loads makes from "\\udc80"): both become U+FFFD.
- `shown`: text printed to a terminal or written to a log line. Control characters (ESC/OSC
  sequences clear screens and forge colours, CR and LF forge lines), bidirectional overrides and
  line separators are written as escapes (`\\x1b`, `\\n`, `\\u202e`), so a value is one visible
  token on one line.
- `spreadsheet_cell`: a text cell of a CSV or XLSX export. A cell starting with `=`, `+`, `-`,
  `@`, TAB or CR is a formula to Excel and LibreOffice: it gets a leading `'`, as OWASP
  recommends. JSON exports keep the exact value.
- `xlsx_cell`: a text cell of an XLSX export: spreadsheet_cell's rule, and the characters an
  XLSX file cannot hold (C0 controls but TAB and LF; CR, which XML reads as LF; U+FFFE, U+FFFF)
  written as the OOXML escape `_xHHHH_`, which Excel and LibreOffice read back as the character.

Each rule is applied once, where values enter or leave (the ledger writer, the log handlers, the
commands' output, the export writers), never by each caller. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# NUL, and lone surrogates (U+D800–U+DFFF never stand alone in valid text).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# C0 controls, DEL, C1 controls; the bidirectional marks, embeddings, overrides and isolates;
# the Unicode line and paragraph separators; and lone surrogates (not printable either).
_UNSHOWABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
    "\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# What HTTP forbids in a header value (RFC 9110): control characters but HTAB, and DEL. uvicorn
# refuses a request holding one, and raises on an answer holding one (the client gets nothing).
HEADER_FORBIDDEN = "[\x00-\x08\x0a-\x1f\x7f]"

# What an XLSX file cannot hold: XML 1.0 forbids most C0 controls (openpyxl refuses them) and
# reads a CR back as a LF (Excel writes it _x000D_ itself); and a literal `_xHHHH_`, which
# readers would decode: its underscore is escaped as `_x005F_` (ECMA-376 ST_Xstring).
_NOT_IN_XLSX = re.compile(
    "[\x00-\x08\x0b-\x1f\ufffe\uffff\ud800-\udfff]|_(?=x[0-9A-Fa-f]{4}_)"
)


def storable(value: str) -> str:
    """value, with what no database TokenPak writes to can hold replaced by U+FFFD."""
    if value.isascii() and "\x00" not in value:
        return value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: str) -> str:
    """value as one line a terminal or a log shows as it is: every control character escaped."""
    if value.isprintable():  # no Cc, Cf, Zl, Zp or Cs character: nothing to escape
        return value
    return _UNSHOWABLE.sub(_escape, value)


def shown_lines(value: str) -> str:
    """Like shown(), but keeps line feeds: for multi-line text TokenPak itself laid out (a
    table, a traceback) whose values may still hold anything."""
    if value.replace("\n", "").isprintable():
        return value
    return "\n".join(shown(line) for line in value.split("\n"))


def spreadsheet_cell(value: str) -> str:
    """value as a CSV or XLSX text cell that no spreadsheet takes for a formula."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _ooxml_escape(match: re.Match[str]) -> str:
    return f"_x{ord(match.group()):04X}_"


def xlsx_cell(value: str) -> str:
    """value as an XLSX text cell: no formula (spreadsheet_cell), and every character XLSX
    cannot hold as its OOXML escape (ESC → `_x001B_`). openpyxl reads `_x005F_` back as `_`
    itself and leaves the other escapes as text: openpyxl.utils.escape.unescape decodes them."""
    value = spreadsheet_cell(value)
    if value.isprintable() and "_x" not in value:  # nothing to escape: the usual case
        return value
    return _NOT_IN_XLSX.sub(_ooxml_escape, value)
