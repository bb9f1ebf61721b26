"""The token store: file permissions, atomic replacement, which token wins, and refresh rounds against a
real HTTP endpoint that answers like Meta's refresh_access_token."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from collector import exceptions, metrics, models, redaction, settings, tokens

NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
S = settings.ScheduleSettings(token_refresh_after_days=7)


def account(n: int, token: str, login: models.Login = "instagram") -> models.Account:
    return models.Account(str(17841400000000000 + n), login, models.Secret(token), f"test #{n}")


class RefreshServer:
    """GET /refresh_access_token: a new token per call; 'IGQ-bad' tokens get Meta's code 190 envelope."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.expires_in: object = 5_184_000
        self.app = web.Application()
        self.app.router.add_get("/refresh_access_token", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        assert request.query["grant_type"] == "ig_refresh_token"
        token = request.query["access_token"]
        self.calls.append(token)
        if token.startswith("IGQ-bad"):
            return web.json_response({"error": {"message": "Error validating access token", "code": 190,
                                                "type": "OAuthException"}}, status=400)
        return web.json_response({"access_token": f"IGQ-refreshed-{len(self.calls)}", "token_type": "bearer",
                                  "expires_in": self.expires_in})


@pytest.fixture
async def refresh_server() -> AsyncIterator[tuple[RefreshServer, str]]:
    server = RefreshServer()
    runner = web.AppRunner(server.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def refresh(store: tokens.TokenStore, accounts: list[models.Account], now: datetime, url: str,
                  m: metrics.Metrics | None = None) -> dict[str, models.Account]:
    return await tokens.refresh_round(store, accounts, now, schedule=S, call=caller(url),
                                      counters=m or metrics.Metrics())


def caller(base_url: str) -> tokens.RefreshCall:
    async def call(acct: models.Account) -> Mapping[str, object]:
        params = {"grant_type": "ig_refresh_token", "access_token": acct.access_token.reveal()}
        url = f"{base_url}/refresh_access_token"
        async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
            body = await r.json()
        if "error" in body:
            raise exceptions.TokenInvalid(body["error"]["message"], code=body["error"]["code"])
        assert isinstance(body, dict)
        return body
    return call


async def test_refresh_persists_and_survives_a_restart(tmp_path: Path,
                                                       refresh_server: tuple[RefreshServer, str]) -> None:
    server, url = refresh_server
    state = tmp_path / "state"
    store = tokens.TokenStore(state)
    store.load()
    acct = account(1, "IGQ-configured")
    m = metrics.Metrics()
    changed = await refresh(store, [acct], NOW, url, m)
    assert server.calls == ["IGQ-configured"]  # unknown age: refreshed at once
    assert changed[acct.ig_user_id].access_token.reveal() == "IGQ-refreshed-1"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert list(state.iterdir()) == [store.path]  # no temp file left behind
    assert m.token_expiry_days.labels(ig_user_id=acct.ig_user_id)._value.get() == pytest.approx(60.0)

    # A new process: the stored token is used for the same configured token.
    again = tokens.TokenStore(state)
    again.load()
    assert again.effective(acct).access_token.reveal() == "IGQ-refreshed-1"
    # Not due again until it is a week old; then the *refreshed* token is the one sent.
    assert not again.refresh_due(acct, NOW + timedelta(days=6), S)
    await refresh(again, [acct], NOW + timedelta(days=7), url, m)
    assert server.calls == ["IGQ-configured", "IGQ-refreshed-1"]
    assert again.effective(acct).access_token.reveal() == "IGQ-refreshed-2"


@pytest.mark.parametrize(("expires_in", "days"), [("5184000", 60.0), (" 86400 ", 1.0), (0, None),
                                                  ("soon", None), (1e300, None), (True, None)])
async def test_expires_in_as_a_numeric_string_is_read(
        tmp_path: Path, refresh_server: tuple[RefreshServer, str], expires_in: object,
        days: float | None) -> None:
    server, url = refresh_server
    server.expires_in = expires_in
    store = tokens.TokenStore(tmp_path / "state")
    store.load()
    acct = account(1, "IGQ-configured")
    changed = await refresh(store, [acct], NOW, url)
    assert changed[acct.ig_user_id].access_token.reveal() == "IGQ-refreshed-1"
    got = store.expiry_days(acct, NOW)
    assert got == (None if days is None else pytest.approx(days))


async def test_changed_configured_token_wins(tmp_path: Path,
                                             refresh_server: tuple[RefreshServer, str]) -> None:
    _, url = refresh_server
    store = tokens.TokenStore(tmp_path)
    await refresh(store, [account(1, "IGQ-old")], NOW, url)
    assert store.effective(account(1, "IGQ-old")).access_token.reveal() == "IGQ-refreshed-1"
    assert store.effective(account(1, "IGQ-new")).access_token.reveal() == "IGQ-new"
    assert store.expiry_days(account(1, "IGQ-new"), NOW) is None


async def test_failure_is_recorded_and_others_carry_on(tmp_path: Path,
                                                      refresh_server: tuple[RefreshServer, str]) -> None:
    server, url = refresh_server
    store = tokens.TokenStore(tmp_path)
    bad, good, page = account(1, "IGQ-bad"), account(2, "IGQ-good"), account(3, "EAA-page", "facebook")
    changed = await refresh(store, [bad, good, page], NOW, url)
    assert set(changed) == {good.ig_user_id}
    assert server.calls == ["IGQ-bad", "IGQ-good"]  # Facebook Login tokens are not refreshed
    record = store.record(bad.ig_user_id)
    assert record is not None and record.last_error is not None and "code=190" in record.last_error
    assert not store.refresh_due(bad, NOW + timedelta(hours=1), S)  # no tight retry loop
    assert store.refresh_due(bad, NOW + timedelta(hours=7), S)
    text = store.path.read_text()
    assert "IGQ-bad" not in text and "IGQ-good" not in text  # configured tokens are only fingerprinted


def test_damaged_store_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / tokens.FILE_NAME).write_text("{not json")
    with pytest.raises(exceptions.ConfigError, match="token store"):
        tokens.TokenStore(tmp_path).load()
    (tmp_path / tokens.FILE_NAME).write_text('{"version": 99, "accounts": {}}')
    with pytest.raises(exceptions.ConfigError, match="version"):
        tokens.TokenStore(tmp_path).load()


def test_forget_removed_accounts(tmp_path: Path) -> None:
    store = tokens.TokenStore(tmp_path)
    store.observe(account(1, "IGQ-a"), NOW)
    store.observe(account(2, "IGQ-b"), NOW)
    store.forget_except([account(2, "IGQ-b").ig_user_id])
    assert store.record(account(1, "IGQ-a").ig_user_id) is None
    assert store.record(account(2, "IGQ-b").ig_user_id) is not None


async def test_a_year_of_weekly_refreshes_keeps_only_the_latest_tokens_registered(
        tmp_path: Path, refresh_server: tuple[RefreshServer, str]) -> None:
    """Each refreshed token is registered for redaction as its account's: the daemon does not keep every
    token it was ever given (52 a year per account), only the one in use and the one before it."""
    redaction.forget_secrets()
    server, url = refresh_server
    store = tokens.TokenStore(tmp_path / "state")
    store.load()
    acct = account(1, "IGQ-configured")
    for week in range(52):
        changed = await refresh(store, [acct], NOW + timedelta(days=7 * week), url)
        acct = changed.get(acct.ig_user_id, acct)
    assert len(server.calls) == 52
    issued = [f"IGQ-refreshed-{n}" for n in range(1, 53)]
    assert [t for t in issued if redaction.is_registered(t)] == issued[-2:]
    assert redaction.redact(f"token {issued[-1]} and {issued[-2]}") == "token *** and ***"
    # A new process reads the store: the token in use is registered again, for its account.
    redaction.forget_secrets()
    again = tokens.TokenStore(tmp_path / "state")
    again.load()
    assert redaction.is_registered(issued[-1])
    redaction.forget_secrets()
