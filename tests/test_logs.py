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
