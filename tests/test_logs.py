"""The log boundary: where lines go, and that the file is private."""

import logging.config
import stat

from tokenpak_site import logs


def test_it_sends_logs_to_syslog_when_asked(tmp_path):
    config = logs.build(enabled=True, destination="syslog", level="INFO",
                        log_file=tmp_path / "x.log")
    handler = config["handlers"]["main"]
    assert handler["class"] == "logging.handlers.SysLogHandler"
    assert handler["filters"] == ["redact"]
    assert not (tmp_path / "x.log").exists()


def test_it_creates_the_log_file_private_and_redacts_into_it(tmp_path):
    path = tmp_path / "tokenpak.log"
    logging.config.dictConfig(logs.build(enabled=True, destination="file", level="INFO",
                                         log_file=path))
    try:
        logging.getLogger("tokenpak.test").info("key sk-proj-abcdefghijkl in a line")
        for h in logging.getLogger().handlers:
            h.flush()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "sk-***" in path.read_text()
        assert "abcdefghijkl" not in path.read_text()
    finally:
        from django.conf import settings

        logging.config.dictConfig(settings.LOGGING)


def test_it_installs_only_a_null_handler_when_logging_is_off(tmp_path):
    config = logs.build(enabled=False, destination="file", level="DEBUG",
                        log_file=tmp_path / "x.log")
    assert config["handlers"]["main"]["class"] == "logging.NullHandler"
    assert not (tmp_path / "x.log").exists()


def test_it_masks_credential_headers_by_name():
    masked = logs.redact_headers({"Authorization": "Bearer abc", "X-Api-Key": "k",
                                  "anthropic-version": "2023-06-01"})
    assert masked == {"Authorization": "***", "X-Api-Key": "***",
                      "anthropic-version": "2023-06-01"}


# A model name as a client may send it: an ESC sequence that clears the screen, an OSC one that
# retitles the terminal, a line break followed by a forged record, a right-to-left override.
HOSTILE = ("gpt-4o-mini\x1b[2J\x1b]0;owned\x07\r\n"
           "2026-01-01 00:00:00,000 INFO tokenpak.requests forged\u202e")


def test_it_writes_hostile_names_into_the_log_escaped_one_line_each(start_server, fake, rows,
                                                                     tmp_path):
    import httpx

    home = tmp_path / "home"
    server = start_server(home=home)
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": HOSTILE, "messages": []},
                          headers={"authorization": "Bearer sk-test-000000"})
    assert response.status_code == 200
    [event] = rows(1)
    server.stop()
    text = (home / "tokenpak.log").read_text()
    [line] = [line for line in text.split("\n") if event.trace_id in line]
    assert "model=gpt-4o-mini\\x1b[2J\\x1b]0;owned\\x07\\r\\n2026-01-01" in line
    assert "forged\\u202e" in line
    assert not any(c in text for c in "\x1b\x07\r\u202e")
    assert not any(line.startswith("2026-01-01") for line in text.split("\n"))


def test_it_escapes_messages_and_tracebacks_of_any_record():
    import sys

    try:
        raise ValueError("no model gpt\x1b[2J\x1b]0;owned\x07")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed for %s",
                                   ("agent\x1b]0;t\x07\nforged",), sys.exc_info())
    assert logs.RedactingFilter().filter(record)
    assert record.getMessage() == "failed for agent\\x1b]0;t\\x07\\nforged"
    lines = record.exc_text.split("\n")
    assert lines[0] == "Traceback (most recent call last):"  # still a traceback, line by line
    assert lines[-1] == "ValueError: no model gpt\\x1b[2J\\x1b]0;owned\\x07"
