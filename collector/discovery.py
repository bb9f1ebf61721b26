"""Accounts discovered from `[[tokens]]`: one token, the accounts it reaches (reference graph-api.md §1.1).

    facebook:  GET graph.facebook.com/{v}/me/accounts?fields=instagram_business_account{id,username}
               every page (paging.next until absent); Pages without a linked Instagram account are
               skipped; each linked account is collected with that token through the Facebook host.
    instagram: GET graph.instagram.com/{v}/me?fields=user_id,username: the token's one account.

Every call goes through the project's `GraphClient` (retries, throttling, redaction). The same account
found by two tokens is collected once, with the first token (config order); an account listed in
`[[accounts]]` or the accounts file wins over a discovered one.

Unlinking (`reconcile`, with the database). An account some token found before and no token finds now is
marked `unlinked` (ig_account.status; its data stays) only when that is known: the token that last found
it answered this round and no longer lists it, or that token is gone from the config. When the token's
own discovery call failed (invalid token, transient error), its accounts are kept as last known and
collected with it (a bad token then shows on each account's status), and the token is reported. An
unlinked account found again goes back to `ok`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from collector import config, exceptions, graph, metrics, models, settings, tokens
from collector.storage import discovered

log = structlog.get_logger("collector.discovery")

FACEBOOK_FIELDS = "instagram_business_account{id,username}"
INSTAGRAM_FIELDS = "user_id,username"


@dataclass(frozen=True, slots=True)
class Found:
    account: models.Account  # carries the discovering token
    username: str | None
    page_id: str | None  # the Facebook Page it is linked through (Facebook Login)


@dataclass(slots=True)
class TokenOutcome:
    token: models.TokenSource
    found: list[Found] = field(default_factory=list)
    error: str | None = None  # the discovery call failed (token-free); None: it answered
    pages_without_account: int = 0
    skipped: list[str] = field(default_factory=list)  # token-free notes on answers that were not usable

    @property
    def ok(self) -> bool:
        return self.error is None

    def why_nothing(self) -> str | None:
        """Why this token found no account (None when it found some)."""
        if self.error is not None:
            return f"discovery failed: {self.error}"
        if self.found:
            return None
        if self.token.login == "instagram":
            return "the token's /me answer names no Instagram account"
        if self.pages_without_account:
            return (f"{self.pages_without_account} Page(s) reached, none with a linked Instagram "
                    "professional account")
        return "the token reaches no Facebook Page (check the Page roles and the pages_show_list permission)"


@dataclass(slots=True)
class Discovery:
    outcomes: list[TokenOutcome]
    accounts: list[Found]  # deduplicated, without the configured accounts, in token order
    also_found: dict[str, list[str]]  # ig_user_id -> labels of further tokens that reached it
    configured_wins: list[str]  # discovered ids that [[accounts]] / the accounts file list

    @property
    def failed(self) -> list[TokenOutcome]:
        return [o for o in self.outcomes if not o.ok]


async def discover_token(client: graph.GraphClient, token: models.TokenSource) -> TokenOutcome:
    """The accounts one token reaches; a failed call is the outcome's `error`, never raised."""
    outcome = TokenOutcome(token)
    try:
        if token.login == "facebook":
            async for page in client.token_pages("facebook", token.access_token, "me/accounts",
                                                 {"fields": FACEBOOK_FIELDS}, endpoint="discovery"):
                for item in page:
                    _facebook_page(outcome, item)
        else:
            body = await client.get_with_token("instagram", token.access_token, "me",
                                               {"fields": INSTAGRAM_FIELDS}, endpoint="discovery")
            _instagram_me(outcome, body)
    except exceptions.GraphError as exc:
        outcome.found.clear()  # a walk cut short is not an answer: nothing of it unlinks anything
        outcome.error = exc.describe()
    return outcome


def _facebook_page(outcome: TokenOutcome, item: Mapping[str, Any]) -> None:
    linked = item.get("instagram_business_account")
    page_id = str(item.get("id") or "")
    if not isinstance(linked, dict):
        outcome.pages_without_account += 1
        return
    _add(outcome, str(linked.get("id") or ""), linked.get("username"), page_id or None)


def _instagram_me(outcome: TokenOutcome, body: Mapping[str, Any]) -> None:
    _add(outcome, str(body.get("user_id") or ""), body.get("username"), None)


def _add(outcome: TokenOutcome, ig_user_id: str, username: object, page_id: str | None) -> None:
    problem = config.id_problem(ig_user_id) if ig_user_id else "no id in the answer"
    if problem is not None:
        outcome.skipped.append(f"{'Page ' + page_id if page_id else '/me'}: {problem}")
        return
    token = outcome.token
    via = f" via Page {page_id}" if page_id else ""
    account = models.Account(ig_user_id=ig_user_id, login=token.login, access_token=token.access_token,
                             source=f"{token.label}{via}")
    outcome.found.append(Found(account, username if isinstance(username, str) else None, page_id))


async def discover(client: graph.GraphClient, token_sources: Sequence[models.TokenSource],
                   configured: Iterable[models.Account]) -> Discovery:
    """Every token's accounts (tokens concurrently), merged: configured accounts win, then the first token
    in config order."""
    outcomes = list(await asyncio.gather(*(discover_token(client, t) for t in token_sources)))
    configured_ids = {a.ig_user_id for a in configured}
    chosen: dict[str, Found] = {}
    also: dict[str, list[str]] = {}
    wins: list[str] = []
    for outcome in outcomes:
        for found in outcome.found:
            ig_user_id = found.account.ig_user_id
            if ig_user_id in configured_ids:
                if ig_user_id not in wins:
                    wins.append(ig_user_id)
            elif ig_user_id in chosen:
                also.setdefault(ig_user_id, []).append(outcome.token.label)
            else:
                chosen[ig_user_id] = found
    return Discovery(outcomes, list(chosen.values()), also, wins)


def merge(configured: Iterable[models.Account],
          found: Iterable[models.Account]) -> tuple[models.Account, ...]:
    """The accounts to collect: the configured ones, then the discovered ones not configured."""
    accounts = list(configured)
    ids = {a.ig_user_id for a in accounts}
    accounts.extend(a for a in found if a.ig_user_id not in ids)
    return tuple(accounts)


@dataclass(slots=True)
class Round:
    """One discovery round applied to the database: what to collect and what changed."""

    discovery: Discovery
    accounts: list[models.Account]  # discovered accounts to collect (found now, or kept as last known)
    kept: list[str] = field(default_factory=list)  # last known accounts of tokens whose discovery failed
    unlinked: list[str] = field(default_factory=list)  # newly unreachable this round
    relinked: list[str] = field(default_factory=list)  # unlinked before, reachable again


async def reconcile(pool: asyncpg.Pool, result: Discovery, token_sources: Sequence[models.TokenSource],
                    configured: Iterable[models.Account], now: datetime) -> Round:
    """Apply a discovery to the database (see the module docstring) and return what to collect."""
    configured_ids = {a.ig_user_id for a in configured}
    by_fingerprint = {tokens.fingerprint(t.access_token): t for t in token_sources}
    answered = {tokens.fingerprint(o.token.access_token) for o in result.outcomes if o.ok}
    found_ids = {f.account.ig_user_id for f in result.accounts} | set(result.configured_wins)
    round_ = Round(result, [f.account for f in result.accounts])
    unreachable: list[str] = []
    known = await discovered.known(pool)
    if not known and not result.accounts:
        return round_  # no [[tokens]], never had any: nothing to record
    for row in known:
        if row.ig_user_id in found_ids or row.ig_user_id in configured_ids:
            continue
        token = by_fingerprint.get(row.token_fingerprint)
        if token is not None and row.token_fingerprint not in answered:
            if not row.unlinked:  # its token could not be asked: keep collecting it as last known
                round_.kept.append(row.ig_user_id)
                round_.accounts.append(_remembered(row, token, "last known: its discovery failed"))
            continue
        if not row.unlinked:
            round_.unlinked.append(row.ig_user_id)
        unreachable.append(row.ig_user_id)
    seen = [discovered.Seen(f.account.ig_user_id, f.account.login, f.username,
                            tokens.fingerprint(f.account.access_token)) for f in result.accounts]
    round_.relinked = await discovered.record(pool, seen=seen, unlinked=unreachable,
                                              reachable=sorted(found_ids | configured_ids), now=now)
    return round_


def remembered(known: Iterable[discovered.Known],
               token_sources: Sequence[models.TokenSource]) -> list[models.Account]:
    """The accounts discovery found before (from the database, without asking Meta), with the configured
    token that found them; one whose token is no longer configured carries an empty token (`status`)."""
    by_fingerprint = {tokens.fingerprint(t.access_token): t for t in token_sources}
    return [_remembered(row, by_fingerprint.get(row.token_fingerprint),
                        "unlinked" if row.unlinked else "as last discovered") for row in known]


def _remembered(row: discovered.Known, token: models.TokenSource | None, how: str) -> models.Account:
    if token is None:
        return models.Account(row.ig_user_id, row.login, models.Secret(""), f"[[tokens]] (gone; {how})")
    return models.Account(row.ig_user_id, row.login, token.access_token, f"{token.label} ({how})")


def report(round_: Round, counters: metrics.Metrics | None = None) -> None:
    """Log one round (token-free) and set the discovery gauges."""
    result = round_.discovery
    for outcome in result.outcomes:
        label = f"#{outcome.token.position}"
        if outcome.ok:
            log.info("discovery_token_ok", token=outcome.token.label, accounts=len(outcome.found),
                     pages_without_account=outcome.pages_without_account, skipped=outcome.skipped or None)
        else:
            log.warning("discovery_token_failed", token=outcome.token.label, error=outcome.error,
                        kept_last_known=True)
        if counters is not None:
            if outcome.ok:
                counters.discovered_accounts.labels(token=label).set(len(outcome.found))
            counters.token_problem.labels(token=label, problem="discovery_failed").set(0 if outcome.ok else 1)
    if round_.unlinked:
        log.warning("accounts_unlinked", accounts=round_.unlinked)
    if round_.relinked:
        log.info("accounts_relinked", accounts=round_.relinked)
    if not result.outcomes and not round_.unlinked and not round_.relinked:
        return  # no [[tokens]] and nothing changed: not worth a line per pass
    log.info("discovery_finished", tokens=len(result.outcomes), tokens_failed=len(result.failed),
             accounts=len(round_.accounts), kept_last_known=len(round_.kept), unlinked=len(round_.unlinked),
             relinked=len(round_.relinked), configured_wins=len(result.configured_wins))


async def run_round(client: graph.GraphClient, pool: asyncpg.Pool, cfg: settings.Config, *,
                    configured: Sequence[models.Account] | None = None, now: datetime,
                    counters: metrics.Metrics | None = None) -> Round:
    """Discover, reconcile with the database, report: what `once` and the daemon run."""
    configured = cfg.accounts if configured is None else configured
    result = await discover(client, cfg.tokens, configured)
    round_ = await reconcile(pool, result, cfg.tokens, configured, now)
    report(round_, counters)
    return round_
