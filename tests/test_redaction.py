"""redact(): secrets by parameter name, by Meta's token shapes, and by registered value."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from collector import redaction

IG = "IGAAJx7Zq1b2c3d4e5f6g7h8i9j0kLmNoPqRsTuVwXyZ"
FB = "EAAGm0PX4ZCpsBAKZCZBzZAZCsomethinglongandrandom123"


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    redaction.forget_secrets()
    yield
    redaction.forget_secrets()


@pytest.mark.parametrize("text", [
    f"https://graph.instagram.com/v24.0/1/media?fields=id&access_token={IG}&after=QVFI",
    f"GET /v24.0/oauth/access_token?client_secret=abcdef0123456789&fb_exchange_token={FB}",
    f"debug_token?input_token={FB}&access_token=123|abc",
    f'{{"access_token": "{IG}", "token_type": "bearer"}}',
    "{'client_secret': 'abcdef0123456789'}",
    f"https%3A%2F%2Fgraph.instagram.com%2Fme%3Faccess_token%3D{IG}",
    f"Authorization: Bearer {IG}",
    f"token {FB} was rejected",
])
def test_known_shapes_masked(text: str) -> None:
    out = redaction.redact(text)
    assert IG not in out and FB not in out and "abcdef0123456789" not in out
    assert "***" in out


def test_other_parameters_kept() -> None:
    out = redaction.redact(f"https://h/v24.0/1/media?fields=id,caption&access_token={IG}&after=QVFI&limit=100")
    assert out == "https://h/v24.0/1/media?fields=id,caption&access_token=***&after=QVFI&limit=100"


def test_json_value_masked_keeps_structure() -> None:
    assert redaction.redact('{"access_token":"x-y.z","expires_in":5183944}') == \
        '{"access_token":"***","expires_in":5183944}'


def test_registered_secret_masked_anywhere() -> None:
    redaction.register_secret("tok-acct-000123")
    assert redaction.redact("failed for tok-acct-000123.") == "failed for ***."
    assert redaction.redact("x=tok-acct-000123&y=1") == "x=***&y=1"


def test_registered_secret_url_encoded_form() -> None:
    redaction.register_secret("se cret/with+odd=chars")
    assert redaction.redact("a=se%20cret%2Fwith%2Bodd%3Dchars") == "a=***"
    assert redaction.redact("raw se cret/with+odd=chars end") == "raw *** end"


def test_registered_secret_after_percent_escape() -> None:
    redaction.register_secret("plainsecret42")
    assert redaction.redact("q%3Dplainsecret42") == "q%3D***"


def test_short_values_not_registered() -> None:
    redaction.register_secret("abc")
    assert redaction.redact("abc abcdef") == "abc abcdef"


def test_ordinary_text_untouched() -> None:
    text = "(#100) The Media Insights API does not support the EAAB metric for IGAA type."
    assert redaction.redact(text) == text


def test_an_owners_latest_tokens_stay_registered_and_older_ones_go() -> None:
    """A daemon refreshes an account's token every week: only its latest two stay registered by value,
    so ten thousand accounts' old tokens do not pile up for years (memory), while the one in use and the
    one before it (a call may still carry it) are masked."""
    tokens = [f"tok-account-1-gen{n:03d}" for n in range(50)]
    for token in tokens:
        redaction.register_secret(token, owner="1")
    text = " ".join(tokens)
    out = redaction.redact(text).split()
    assert out[-2:] == ["***", "***"]
    assert out[:-2] == tokens[:-2]
    assert [t for t in tokens if redaction.is_registered(t)] == tokens[-2:]


def test_a_secret_registered_without_an_owner_stays() -> None:
    configured = "tok-configured-123456"
    redaction.register_secret(configured)  # the config's token
    for token in (configured, "tok-refreshed-000001", "tok-refreshed-000002", "tok-refreshed-000003"):
        redaction.register_secret(token, owner="1")
    assert redaction.redact(configured) == "***"
    assert redaction.redact("tok-refreshed-000001") == "tok-refreshed-000001"


def test_an_owned_secret_used_as_a_parameter_does_not_become_permanent() -> None:
    old = "tok-refreshed-old-01"
    redaction.register_secret(old, owner="1")
    redaction.register_secret(old)  # the refresh call carries it (`get_with_token`): still the owner's
    redaction.register_secret("tok-refreshed-new-02", owner="1")
    redaction.register_secret("tok-refreshed-new-03", owner="1")
    assert not redaction.is_registered(old)


def test_a_token_two_accounts_share_stays_while_either_holds_it() -> None:
    shared = "tok-user-token-shared"
    redaction.register_secret(shared, owner="1")
    redaction.register_secret(shared, owner="2")
    redaction.register_secret("tok-account1-new-01", owner="1")
    redaction.register_secret("tok-account1-new-02", owner="1")
    assert redaction.redact(shared) == "***"
    redaction.register_secret("tok-account2-new-01", owner="2")
    redaction.register_secret("tok-account2-new-02", owner="2")
    assert redaction.redact(shared) == shared


def test_odd_owned_secrets_are_released_too() -> None:
    odd = ["secret with space 1", "secret with space 2", "secret with space 3"]
    for value in odd:
        redaction.register_secret(value, owner="1")
    assert redaction.redact(odd[0]) == odd[0]
    assert redaction.redact(odd[1]) == "***" and redaction.redact(odd[2]) == "***"
