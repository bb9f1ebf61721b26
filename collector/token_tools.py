"""Token lifecycle tools (reference graph-api.md §7.3): exchanging a short-lived token for a long-lived one,
and checking tokens (validity, expiry, granted permissions) before any collection fails on them.

Exchange. Facebook Login: `GET graph.facebook.com/{v}/oauth/access_token?grant_type=fb_exchange_token`
with the app id and secret of `[app]`; Instagram Login: `GET graph.instagram.com/access_token?grant_type=
ig_exchange_token` with the app secret. Both answer `{"access_token", "token_type", "expires_in"}`.

Checks. With `[app]` configured, every Facebook token ([[tokens]] entries and the distinct Facebook tokens
of [[accounts]] and the accounts file) is asked about with `debug_token` (the app token `app_id|app_secret`):
`is_valid`, `expires_at` (0: never), `data_access_expires_at` and `scopes`. Reported: an invalid token, a
token without `instagram_manage_insights`, a token (or its data access) expiring within 7 days.
Instagram Login tokens cannot be checked this way: `debug_token` is a Facebook-host endpoint for Facebook
tokens, and Meta documents no endpoint that lists an Instagram token's permissions. What is checked for
them: validity, by discovery's `/me` call ([[tokens]]) or the first profile call; expiry, from the token
store's refresh answers (`ig_collector_token_expiry_days`). A missing `instagram_business_manage_insights`
shows as `permission_denied` on the account's first insights job.

Tokens are named by where they are configured (`[[tokens]] #2 (facebook, access_token_env=FB_TOKEN)`,
`config.toml [[accounts]] #3`, `accounts.csv line 12`), never by their value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from collector import exceptions, graph, metrics, models, parsing, redaction, settings

log = structlog.get_logger("collector.token_tools")

EXPIRY_WARNING = timedelta(days=7)
REQUIRED_SCOPE: dict[models.Login, str] = {
    "facebook": "instagram_manage_insights", "instagram": "instagram_business_manage_insights"}
PROBLEMS = ("invalid", "missing_scope", "expiring", "check_failed")


# -- exchange ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchanged:
    token: models.Secret
    expires_in_s: float | None


def exchange_settings_problem(app: settings.AppSettings, login: models.Login) -> str | None:
    """What the [app] settings lack to exchange a `login` token (None: nothing)."""
    if app.app_secret is None or (login == "facebook" and not app.app_id):
        needed = "app_id and app_secret" if login == "facebook" else "app_secret"
        article = "an" if login[0] in "aeiou" else "a"
        return f"[app] {needed} must be set to exchange {article} {login} token"
    return None


async def exchange(client: graph.GraphClient, app: settings.AppSettings, login: models.Login,
                   short_lived: models.Secret) -> Exchanged:
    """A long-lived token for `short_lived`. Raises ConfigError without the [app] settings it needs, and
    the GraphError Meta answers with."""
    problem = exchange_settings_problem(app, login)
    if problem is not None or app.app_secret is None:
        raise exceptions.ConfigError(problem or "[app] app_secret is not set")
    secret = app.app_secret
    redaction.register_secret(short_lived.reveal())
    if login == "facebook":
        body = await client.get_with_token(
            "facebook", None, "oauth/access_token",
            {"grant_type": "fb_exchange_token", "client_id": app.app_id or "",
             "client_secret": secret.reveal(), "fb_exchange_token": short_lived.reveal()})
    else:
        body = await client.get_with_token(
            "instagram", short_lived, "access_token",
            {"grant_type": "ig_exchange_token", "client_secret": secret.reveal()}, versioned=False)
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise exceptions.GraphApiError("the exchange answered without an access_token")
    redaction.register_secret(token)
    expires_in = body.get("expires_in")
    return Exchanged(models.Secret(token), parsing.positive_number(expires_in))


# -- checks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """A configured token to check."""

    label: str  # where it is configured
    metric_label: str  # '#N' for [[tokens]] #N, else 'account:<ig_user_id>' of its first account
    login: models.Login
    token: models.Secret


@dataclass(slots=True)
class TokenCheck:
    subject: Subject
    problems: list[tuple[str, str]] = field(default_factory=list)  # (one of PROBLEMS, token-free text)
    expires_at: datetime | None = None  # None: never, or not known
    scopes: tuple[str, ...] | None = None
    not_checked: str | None = None  # why it could not be checked

    def lines(self) -> list[str]:
        return [f"{self.subject.label}: {text}" for _, text in self.problems]


def subjects(cfg: settings.Config) -> list[Subject]:
    """[[tokens]] entries, then each distinct token of the configured accounts (by its first account)."""
    out = [Subject(t.label, f"#{t.position}", t.login, t.access_token) for t in cfg.tokens]
    seen = {t.access_token for t in cfg.tokens}
    counts: dict[models.Secret, int] = {}
    for account in cfg.accounts:
        counts[account.access_token] = counts.get(account.access_token, 0) + 1
    for account in cfg.accounts:
        if account.access_token in seen:
            continue
        seen.add(account.access_token)
        more = counts[account.access_token] - 1
        label = account.source + (f" (and {more} more account(s) with the same token)" if more else "")
        out.append(Subject(label, f"account:{account.ig_user_id}", account.login, account.access_token))
    return out


def needs_calls(cfg: settings.Config) -> bool:
    """Whether `check_all` would ask Meta anything (an [app] and at least one Facebook token)."""
    return bool(cfg.app.app_id and cfg.app.app_secret is not None
                and any(s.login == "facebook" for s in subjects(cfg)))


async def check_all(client: graph.GraphClient, cfg: settings.Config, now: datetime | None = None,
                    *, only_tokens: bool = False) -> list[TokenCheck]:
    """Check every token (see the module docstring); `only_tokens`: only the [[tokens]] entries."""
    now = now or datetime.now(UTC)
    chosen = [s for s in subjects(cfg) if not only_tokens or s.metric_label.startswith("#")]
    return list(await asyncio.gather(*(check(client, cfg.app, s, now) for s in chosen)))


async def check(client: graph.GraphClient, app: settings.AppSettings, subject: Subject,
                now: datetime) -> TokenCheck:
    result = TokenCheck(subject)
    if subject.login == "instagram":
        result.not_checked = ("Instagram Login token: no debug_token for it; validity is checked by its "
                              "first call, expiry by the token refresh")
        return result
    if not app.app_id or app.app_secret is None:
        result.not_checked = "[app] app_id and app_secret are needed for debug_token"
        return result
    app_token = models.Secret(f"{app.app_id}|{app.app_secret.reveal()}")
    try:
        body = await client.get_with_token("facebook", app_token, "debug_token",
                                           {"input_token": subject.token.reveal()})
    except exceptions.GraphError as exc:
        result.problems.append(("check_failed", f"debug_token failed: {exc.describe()}"))
        return result
    data = body.get("data")
    if not isinstance(data, dict):
        result.problems.append(("check_failed", "debug_token answered without data"))
        return result
    _judge(result, data, now)
    return result


def _judge(result: TokenCheck, data: dict[str, Any], now: datetime) -> None:
    if data.get("is_valid") is not True:
        error = data.get("error")
        why = error.get("message") if isinstance(error, dict) else None
        text = redaction.redact(str(why or "is_valid is false"))
        result.problems.append(("invalid", f"token invalid: {text}"))
        return
    scopes = data.get("scopes")
    if isinstance(scopes, list):
        result.scopes = tuple(str(s) for s in scopes)
        needed = REQUIRED_SCOPE[result.subject.login]
        if needed not in result.scopes:
            granted = ", ".join(result.scopes) or "none"
            result.problems.append(("missing_scope", f"missing permission {needed} (granted: {granted}); "
                                                     "insights calls will fail with it"))
    for key, what in (("expires_at", "token"), ("data_access_expires_at", "data access")):
        value = parsing.positive_number(data.get(key))
        if value is None:
            continue  # 0: never expires
        at = datetime.fromtimestamp(value, UTC)
        if key == "expires_at":
            result.expires_at = at
        if at - now <= EXPIRY_WARNING:
            days = (at - now).total_seconds() / 86400.0
            text = f"{what} expires in {days:.1f} days ({at:%Y-%m-%d %H:%M} UTC)"
            result.problems.append(("expiring", text))


def report(checks: Sequence[TokenCheck], counters: metrics.Metrics | None = None) -> None:
    """Log every problem (token-free) and set `ig_collector_token_problem`."""
    for result in checks:
        kinds = {kind for kind, _ in result.problems}
        for kind, text in result.problems:
            log.warning("token_problem", token=result.subject.label, problem=kind, detail=text)
        if counters is not None and result.not_checked is None:
            for kind in PROBLEMS:
                counters.token_problem.labels(token=result.subject.metric_label, problem=kind).set(
                    1 if kind in kinds else 0)
