"""Test settings: a private TOKENPAK_HOME so a test run never touches ~/.tokenpak."""

import os
import tempfile

if "TOKENPAK_TEST_HOME" not in os.environ:
    os.environ["TOKENPAK_TEST_HOME"] = tempfile.mkdtemp(prefix="tokenpak-test-")
os.environ["TOKENPAK_HOME"] = os.environ["TOKENPAK_TEST_HOME"]
for name in ("TOKENPAK_DB", "TOKENPAK_STORE_PROMPTS", "TOKENPAK_DEBUG", "TOKENPAK_LOG_DESTINATION"):
    os.environ.pop(name, None)

from tokenpak_site.settings import *  # noqa: E402,F403
