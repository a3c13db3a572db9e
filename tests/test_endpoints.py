from io import StringIO

from django.core.management import call_command
from django.test import override_settings


@override_settings(TOKENPAK_PORT=9123)
def test_it_prints_where_to_point_each_sdk():
    out = StringIO()
    call_command("endpoints", stdout=out)
    text = out.getvalue()
    assert "base_url=http://127.0.0.1:9123/v1" in text
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:9123" in text
    assert "Ledger:" in text


@override_settings(TOKENPAK_PORT=9123)
def test_it_prints_the_dashboard_and_a_link_that_signs_in(settings, tmp_path):
    settings.TOKENPAK_HOME = tmp_path
    out = StringIO()
    call_command("endpoints", stdout=out)
    token = (tmp_path / "api_token").read_text().strip()
    assert "Dashboard:      http://127.0.0.1:9123/dashboard/" in out.getvalue()
    assert f"Sign in:        http://127.0.0.1:9123/dashboard/login/?token={token}" in out.getvalue()
