"""The web UI's pure parts: basic-auth checks and config, the counter series, the SVG charts, the query-string
parsing. The pages themselves are tested against a running daemon in tests/test_web.py."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import config, exceptions, models, redaction
from collector.web import app, auth, charts, series

ACCOUNT = """
[[accounts]]
ig_user_id = "17841400000000001"
login = "instagram"
access_token = "tok-web-units-0001"
"""


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    redaction.forget_secrets()


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_credentials_match_only_the_exact_pair() -> None:
    password = models.Secret("s3cret:with:colons")
    assert auth.credentials_match(_basic("op:s3cret:with:colons"), "op", password)
    assert auth.credentials_match("basic " + _basic("op:s3cret:with:colons")[6:], "op", password)
    for header in (None, "", _basic("op:wrong"), _basic("Op:s3cret:with:colons"), _basic("op"),
                   _basic("op:s3cret:with:colons "), "Bearer abc", "Basic !!!", "Basic " + "w6k=",
                   _basic(":s3cret:with:colons")):
        assert not auth.credentials_match(header, "op", password), header


def test_basic_auth_config_from_env_and_pairing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PW", "pw-from-env-123")
    path = tmp_path / "config.toml"
    path.write_text(ACCOUNT + '[http]\nlisten = "127.0.0.1:9464"\nbasic_auth_user = "op"\n'
                    'basic_auth_password_env = "WEB_PW"\n')
    cfg = config.load(path)
    assert cfg.http.basic_auth_user == "op"
    assert cfg.http.basic_auth_password is not None
    assert cfg.http.basic_auth_password.reveal() == "pw-from-env-123"
    assert "pw-from-env-123" not in repr(cfg.http)
    assert redaction.redact("x pw-from-env-123 y") == "x *** y"

    (tmp_path / "pw").write_text("pw-from-file-456\n")
    path.write_text(ACCOUNT + '[http]\nbasic_auth_user = "op"\nbasic_auth_password_file = "pw"\n')
    password = config.load(path).http.basic_auth_password
    assert password is not None and password.reveal() == "pw-from-file-456"

    cases = [
        ('basic_auth_user = "op"\n', "[http] basic_auth_password", "basic auth needs both"),
        ('basic_auth_password = "pw-inline-789"\n', "[http] basic_auth_user", "basic auth needs both"),
        ('basic_auth_user = "a:b"\nbasic_auth_password = "pw-inline-789"\n', "[http] basic_auth_user",
         "without ':'"),
        ('basic_auth_user = "op"\nbasic_auth_password_env = "NOT_SET_ANYWHERE"\n',
         "[http] basic_auth_password_env", "NOT_SET_ANYWHERE is not set"),
        ('basic_auth_user = "op"\nbasic_auth_password = "x1234567"\nbasic_auth_password_env = "WEB_PW"\n',
         "[http] basic_auth_password", "give only one of"),
    ]
    for body, where, fragment in cases:
        path.write_text(ACCOUNT + "[http]\n" + body)
        with pytest.raises(exceptions.ConfigError) as info:
            config.load(path)
        message = str(info.value)
        assert f"{path}: {where}" in message and fragment in message, message
        assert "pw-inline-789" not in message and "x1234567" not in message


def test_counter_series_keeps_one_point_per_minute_and_is_bounded() -> None:
    now = [1_000_020.0]
    totals = [0.0, 0.0]
    s = series.CounterSeries(("calls", "throttles"), lambda: (totals[0], totals[1]), clock=lambda: now[0],
                             keep=3)
    for step in range(12):  # 12 samples, 30 s apart: 6 minutes
        now[0] += 30.0
        totals[0] += 60.0  # 2 calls/s
        totals[1] += step % 2
        s.sample()
    points = s.points()
    assert len(points) <= 4  # `keep` minutes (+ the current one), however long it runs
    for point in points[1:]:
        assert point.rate(0) == pytest.approx(2.0)
    assert [p.covered_s for p in points[1:-1]] == [60.0] * (len(points) - 2)
    assert points[-1].covered_s == 30.0  # the current minute: covered so far
    assert [p.start_s % 60 for p in points] == [0.0] * len(points)
    assert sum(p.increases[0] for p in points) <= totals[0]


def test_counter_series_first_minute_counts_from_the_start() -> None:
    now = [600.0]
    s = series.CounterSeries(("calls",), lambda: (30.0,), clock=lambda: now[0])
    now[0] = 610.0
    s.sample()
    [point] = s.points()
    assert point.increases == (30.0,) and point.rate(0) == pytest.approx(3.0)


def test_charts_escape_and_carry_exact_values() -> None:
    svg = str(charts.bars("<b>calls</b>", ["12:00", "12:01"], [charts.Series("a&b", [1.5, None])]))
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert "<title>12:00: 1.5</title>" in svg
    assert svg.count("<rect") == 1  # None is a gap, not a zero
    line = str(charts.line("Daily reach", ["d1", "d2", "d3"], [10.0, None, 1234.0]))
    assert re.findall(r"<title>(d\d: [\d,]+)</title>", line) == ["d1: 10", "d3: 1,234"]
    assert line.count("<polyline") == 2  # the gap splits the line
    assert "no data yet" in str(charts.line("x", [], []))
    stack = str(charts.stack("job", [("ok", 3, "ok"), ("late", 0, "late"), ("failing", 1, "failing")]))
    assert 'width="75.00"' in stack and 'width="25.00"' in stack and 'class="late"' not in stack
    assert charts.compact(1500) == "1.5k" and charts.compact(0.25) == "0.25" and charts.exact(3.0) == "3"


def test_accounts_query_string_is_validated_and_round_trips() -> None:
    assert app._filter({}) is not None
    chosen = app._filter({"q": "abc", "status": "token_invalid", "sort": "followers", "desc": "1",
                          "limit": "3", "offset": "6"})
    assert chosen is not None and (chosen.text, chosen.sort, chosen.descending, chosen.limit) == (
        "abc", "followers", True, 3)
    url = app._accounts_url(chosen, offset=9)
    assert url == "/accounts?q=abc&status=token_invalid&sort=followers&desc=1&limit=3&offset=9"
    assert app._accounts_url(app._filter({}) or chosen) == "/accounts"
    for bad in ({"sort": "username; DROP TABLE x"}, {"limit": "0"}, {"limit": "201"}, {"offset": "-1"},
                {"limit": "ten"}, {"status": "x" * 41}):
        assert app._filter(bad) is None, bad
